"""The Python API: the seed's `host.container()` object, a thin face over the core the CLI
uses (sandbox.py, execute.py, core.py). Same defaults, validation, state file, labels, locks
and refusals as `sandbox start/exec/write/read/copy-to/disconnect/purge/ls`.

    from sandbox_cli import Sandbox
    with Sandbox.start(image="python:alpine") as box:     # purged on leaving, unless keep
        print(box.exec(["python", "--version"]).stdout)

Nothing here prints or exits: failures raise sandbox_cli.SandboxError subclasses (each with
the CLI's `.exit_code`), and what the CLI would say on stderr (warnings, expiries swept,
pulls) goes to the `on_message` callback, or else to the `sandbox_cli` logger (warnings at
WARNING, the rest at INFO).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from . import core, engine, execute, sandbox, validate, volume
from .errors import InvalidInput
from .state import StateStore

logger = logging.getLogger("sandbox_cli")

Message = Callable[[str], None]
DEFAULT_MAX_OUTPUT = execute.DEFAULT_MAX_CAPTURE  # bytes kept of each stream, as exec --json
READ_MAX_DEFAULT = 1 << 30  # as `sandbox read --max-size 1g`


def _talker(on_message: Message | None) -> Message:
    """Where the CLI's stderr lines go: ON_MESSAGE, else the logger."""
    if on_message is not None:
        return on_message

    def log(line: str) -> None:
        if line.startswith("warning: "):
            logger.warning("%s", line[len("warning: "):])
        else:
            logger.info("%s", line)

    return log


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _own_engine(call: Callable[_P, _T]) -> Callable[_P, _T]:
    """CALL leaves the caller's thread on the engine it was on: the engine a sandbox's record
    chose (a remote host, Podman) serves that call only, and never reaches os.environ."""
    @functools.wraps(call)
    def kept(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with engine.kept():
            return call(*args, **kwargs)

    return kept


def _warner(talk: Message) -> Message:
    """core.resolve_start's warnings, in the `warning: ...` form the logger routes."""
    return lambda line: talk(f"warning: {line}")


@dataclass(frozen=True)
class ExecResult:
    """How a command ended, as `exec --json` says it: decoded text (UTF-8, bad bytes
    replaced) and the raw bytes, each stream capped at max_output bytes."""

    exit_code: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    oom_killed: bool = False
    duration_ms: int = 0
    stop_failed: bool = False  # the timeout could not end the command inside (purge does)
    not_started: str = ""  # why the command could not start (127 not found, 126 refused)

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def failed(self) -> bool:
        return self.exit_code != 0

    @classmethod
    def _from_core(cls, result: execute.ExecResult) -> ExecResult:
        return cls(result.exit_code, result.stdout, result.stderr, result.timed_out,
                   result.stdout_truncated, result.stderr_truncated, result.oom_killed,
                   result.duration_ms, result.stop_failed, result.not_started)


@dataclass(frozen=True)
class SandboxInfo:
    """One row of `sandbox ls --json`."""

    name: str
    container_id: str
    image: str
    status: str  # running, exited, expired, missing, ...
    volume: str
    network: bool
    ports: list[str]
    keep: bool
    created_at: str
    expires_at: str | None
    files_until: str | None = None
    storage: str | None = None  # bind (a host folder) or volume (an engine volume)
    allow_hosts: list[str] = field(default_factory=list)  # egress by allow-list, if any
    processes: list[dict[str, Any]] = field(default_factory=list)  # exec --detach, running
    engine: str | None = None  # set for a sandbox on another engine than the environment's

    def to_json(self) -> dict[str, Any]:
        """The `ls --json` object."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class CopyResult:
    """What copy_to did, as `copy-to --json`."""

    files: int
    bytes: int
    destination: str
    skipped_links: int


class ExecStream:
    """A running command's output as it comes: iterate for ("stdout" | "stderr", bytes)
    chunks; `.result` (output fields empty) once the iteration ends or after close().
    Memory stays bounded: a consumer that stops reading holds the command up. Leaving
    `with` (or close()) before the end stops the command inside the container."""

    def __init__(self, chunks: execute.ChunkStream) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return iter(self._chunks)

    @property
    def result(self) -> ExecResult:
        """How the command ended (waits for it); stdout_bytes and stderr_bytes are empty."""
        outcome = self._chunks.close()
        return ExecResult(outcome.code, b"", b"", outcome.timed_out, oom_killed=outcome.oom_killed,
                          stop_failed=outcome.stop_failed, not_started=outcome.not_started)

    def close(self) -> ExecResult:
        """Stop the command if it still runs; how it ended."""
        return self.result

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._chunks.close()


def _command(cmd: str | Sequence[str], args: Sequence[str] | None) -> list[str]:
    """The argv: a list as given, or the seed's exec("python", ["--version"]). No shell."""
    if isinstance(cmd, str):
        return [cmd, *(args or [])]
    if args:
        raise InvalidInput("give the command as one list, or as a name and a list of args")
    command = list(cmd)
    if not all(isinstance(part, str) for part in command):
        raise InvalidInput("the command must be a list of strings")
    return command


def _stdin_bytes(stdin: str | bytes | None) -> bytes | None:
    if stdin is None or isinstance(stdin, bytes):
        return stdin
    if isinstance(stdin, (bytearray, memoryview)):
        return bytes(stdin)
    if isinstance(stdin, str):
        return stdin.encode("utf-8")
    raise InvalidInput("stdin must be str, bytes or None")


class Sandbox:
    """One sandbox, as the CLI knows it (`sandbox ls` lists it, `sandbox exec` enters it).

    Get one with Sandbox.start() or Sandbox.attach(). As a context manager it is purged on
    leaving, unless started with keep=True or disable_purge() was called; attach() never
    purges on leaving. Separate sandboxes may be used from separate threads; calls on one
    sandbox from several threads behave as concurrent CLI calls do.
    """

    def __init__(self, name: str, *, home: str | None = None,
                 on_message: Message | None = None, purge_on_exit: bool = False) -> None:
        """Use start() or attach()."""
        self.name = validate.name(name)
        self._store = StateStore(home)
        self._talk = _talker(on_message)
        self.purge_on_exit = purge_on_exit

    # --- life ------------------------------------------------------------------------

    @classmethod
    @_own_engine
    def start(cls, *, image: str | None = None, name: str | None = None,
              network: bool | None = None, ports: Sequence[str] | None = None,
              env: Mapping[str, str] | None = None, ttl: str | None = None,
              keep: bool | None = None, memory: str | None = None,
              cpus: float | None = None, pids: int | None = None,
              read_only: bool | None = None, tmpfs_size: str | None = None,
              disk: str | None = None, runtime: str | None = None,
              cap_add: Sequence[str] | None = None,
              allow_hosts: Sequence[str] | None = None, egress_network: str | None = None,
              use_config: bool = True,
              home: str | None = None, on_message: Message | None = None) -> Sandbox:
        """`sandbox start`: None means "not given", so config files and SANDBOX_* variables
        decide as for the CLI (use_config=False: the built-in defaults). keep=True is the
        CLI's --keep (never expires, survives a bare purge) and the seed's disablePurge.
        allow_hosts: the CLI's --allow-host (egress by allow-list through a proxy, README
        "Egress"), with egress_network its --egress-network."""
        if isinstance(ports, str) or isinstance(cap_add, str):
            raise InvalidInput("ports and cap_add are lists of strings")
        talk = _talker(on_message)
        flags: dict[str, Any] = {
            "image": image, "network": network, "ports": list(ports) if ports else None,
            "env": core.env_mapping(env) if env else None, "keep": keep, "ttl": ttl,
            "memory": memory, "cpus": cpus, "pids": pids, "read_only": read_only,
            "tmpfs_size": tmpfs_size, "disk": disk, "runtime": runtime,
            "cap_add": list(cap_add) if cap_add else None,
            "allow_hosts": list(allow_hosts) if allow_hosts else None,
            "egress_network": egress_network,
        }
        options = core.resolve_start(flags, warn=_warner(talk), use_config=use_config)
        store = StateStore(home)
        record = sandbox.start(store, options, name, progress=talk, report=talk,
                               pull_output=False)
        return cls(record.name, home=home, on_message=on_message,
                   purge_on_exit=not record.keep)

    @classmethod
    @_own_engine
    def attach(cls, name: str, *, home: str | None = None,
               on_message: Message | None = None) -> Sandbox:
        """A sandbox started elsewhere (by the CLI too); SandboxNotFound if there is none.
        Leaving `with` does not purge it (call purge())."""
        box = cls(name, home=home, on_message=on_message)
        sandbox.require(box._store, box.name)
        return box

    def disable_purge(self) -> None:
        """The seed's disablePurge: leaving `with` keeps the sandbox (it still expires)."""
        self.purge_on_exit = False

    @_own_engine
    def purge(self) -> None:
        """`sandbox purge NAME`: container, folder and entry removed."""
        sandbox.purge(self._store, [self.name], report=self._talk)

    @_own_engine
    def info(self) -> SandboxInfo:
        """This sandbox's `ls --json` row; SandboxNotFound when it is gone."""
        for row in list_sandboxes(home=self._store.home, on_message=self._talk):
            if row.name == self.name:
                return row
        from .errors import SandboxNotFound

        raise SandboxNotFound(f"no sandbox named {self.name!r} (see `sandbox ls`)")

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.purge_on_exit:
            self.purge()

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"

    # --- commands --------------------------------------------------------------------

    @_own_engine
    def exec(self, cmd: str | Sequence[str], args: Sequence[str] | None = None, *,
             stdin: str | bytes | None = None, timeout: float | str | None = None,
             env: Mapping[str, str] | None = None, workdir: str | None = None,
             max_output: int = DEFAULT_MAX_OUTPUT) -> ExecResult:
        """`sandbox exec --json`: run CMD (no shell) with STDIN (or none) and wait. A
        timeout (seconds, or 30s / 5m) stops the command inside the container: exit 124,
        timed_out. A non-zero exit is a result, not an exception, and so is a command that
        cannot start (127 not found, 126 not executable, with not_started); a sandbox that is
        gone raises SandboxNotFound, a docker failure its SandboxError."""
        if max_output < 0:
            raise InvalidInput("max_output must be 0 or more bytes")
        result = execute.exec_input(
            self._store, self.name, _command(cmd, args), data=_stdin_bytes(stdin),
            env=core.env_mapping(env), workdir=validate.container_dir(workdir) if workdir else None,
            timeout=core.timeout_seconds(timeout), max_capture=max_output)
        return ExecResult._from_core(result)

    @_own_engine
    def exec_stream(self, cmd: str | Sequence[str], args: Sequence[str] | None = None, *,
                    stdin: str | bytes | None = None, timeout: float | str | None = None,
                    env: Mapping[str, str] | None = None,
                    workdir: str | None = None) -> ExecStream:
        """exec, streamed: an ExecStream of ("stdout" | "stderr", bytes) chunks as they come
        (use it in `with`), then `.result`."""
        chunks = execute.exec_chunks(
            self._store, self.name, _command(cmd, args), data=_stdin_bytes(stdin),
            env=core.env_mapping(env), workdir=validate.container_dir(workdir) if workdir else None,
            timeout=core.timeout_seconds(timeout))
        return ExecStream(chunks)

    # --- files -----------------------------------------------------------------------

    @_own_engine
    def write_bytes(self, path: str, data: bytes) -> int:
        """`sandbox write`: DATA to PATH (relative to /app), atomically; the bytes written."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput("write_bytes takes bytes (write_text takes str)")
        return sandbox.write_file(self._store, self.name, path, bytes(data))

    def write_text(self, path: str, text: str, encoding: str = "utf-8") -> int:
        """The seed's writeText."""
        if not isinstance(text, str):
            raise InvalidInput("write_text takes str (write_bytes takes bytes)")
        return self.write_bytes(path, text.encode(encoding))

    @_own_engine
    def read_bytes(self, path: str, max_size: int = READ_MAX_DEFAULT) -> bytes:
        """`sandbox read`: the file's bytes; refused (UnsafePath, exit code 4) when it is
        larger than MAX_SIZE, a link, a FIFO or anything but a regular file."""
        if max_size <= 0:
            raise InvalidInput("max_size must be a positive number of bytes")
        fd = os.memfd_create("sandbox-read", os.MFD_CLOEXEC)
        try:
            size = sandbox.read_file(self._store, self.name, path, fd, max_size)
            os.lseek(fd, 0, os.SEEK_SET)
            return volume.read_at_most(fd, size)
        finally:
            os.close(fd)

    def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict",
                  max_size: int = READ_MAX_DEFAULT) -> str:
        """The seed's readText."""
        return self.read_bytes(path, max_size).decode(encoding, errors)

    @_own_engine
    def copy_to(self, pattern: str | Sequence[str], dest: str = ".", *,
                exclude: Sequence[str] = (), source_root: str | None = None,
                use_gitignore: bool = True) -> CopyResult:
        """`sandbox copy-to`: host files matching PATTERN (gitignore-style, below SOURCE_ROOT,
        default the current directory; .gitignore honoured) into DEST below /app. Links on
        the host are skipped, never followed."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        if isinstance(exclude, str):
            exclude = [exclude]
        summary = sandbox.copy_to(self._store, self.name, patterns, dest, list(exclude),
                                  use_gitignore=use_gitignore, source_root=source_root)
        return CopyResult(summary.files, summary.bytes, summary.destination,
                          summary.skipped_links)

    @_own_engine
    def disconnect(self) -> list[str]:
        """`sandbox disconnect`: off every network; the networks it left."""
        return sandbox.disconnect(self._store, self.name)


@_own_engine
def list_sandboxes(*, home: str | None = None,
                   on_message: Message | None = None) -> list[SandboxInfo]:
    """`sandbox ls --json`, as objects (this home's sandboxes, expired ones included)."""
    rows = sandbox.list_sandboxes(StateStore(home), report=_talker(on_message))
    fields = SandboxInfo.__dataclass_fields__
    return [SandboxInfo(**{k: v for k, v in row.items() if k in fields}) for row in rows]
