"""Running a command in a sandbox: streamed passthrough or bounded capture, with a timeout that
ends the command inside the container too (killing the docker client alone would not).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import docker
from .errors import EXIT_TIMEOUT, InvalidInput, SandboxError, Signalled
from .state import StateStore

DEFAULT_MAX_CAPTURE = 16 * 1024 * 1024  # per stream, for --json
KILL_GRACE_SECONDS = 5.0


@dataclass
class ExecResult:
    """Outcome of a captured exec (--json)."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int

    def to_json(self) -> dict[str, object]:
        """The documented --json shape (camelCase, as the seed's API)."""
        return {
            "exitCode": self.exit_code,
            "stdout": self.stdout.decode("utf-8", errors="replace"),
            "stderr": self.stderr.decode("utf-8", errors="replace"),
            "failed": self.exit_code != 0,
            "timedOut": self.timed_out,
            "stdoutTruncated": self.stdout_truncated,
            "stderrTruncated": self.stderr_truncated,
            "durationMs": self.duration_ms,
        }


@dataclass(frozen=True)
class ExecTag:
    """How the kill script recognises an exec's processes: a random marker in their
    environment, and the moment (clock ticks since boot) just before the exec began."""

    marker: str
    since_ticks: int


def _new_tag() -> ExecTag:
    """A fresh tag. The marker is what secrets.token_hex(8) returns (os.urandom as hex),
    without importing secrets, which pulls in hmac, hashlib and OpenSSL (~3 ms an exec)."""
    ticks = int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))
    return ExecTag(os.urandom(8).hex(), ticks)


def stdin_mode() -> tuple[bool, bool]:
    """(forward stdin, allocate a tty): forward whatever is piped in; a tty only when both
    ends are terminals, so `sandbox exec box python` is an interactive REPL."""
    try:
        st = os.fstat(0)
    except OSError:
        return False, False
    if os.isatty(0):
        return True, os.isatty(1)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat(os.devnull).st_rdev:
        return False, False  # /dev/null: nothing to forward, and -i costs docker a stream
    return True, False


def kill_in_container(name: str, tag: ExecTag) -> None:
    """End every process the exec tagged TAG started (best effort, never raises)."""
    with contextlib.suppress(SandboxError):
        docker.run_docker(docker.kill_exec_argv(name, tag.marker, tag.since_ticks), check=False)


Stop = Callable[[], None]


def _finish(proc: subprocess.Popen[bytes], timeout: float | None, stop: Stop) -> tuple[int, bool]:
    """Wait for PROC; on timeout or Ctrl-C call STOP (which ends the command inside the
    container: killing the docker client alone would not), then reap the client."""
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        stop()
        _reap(proc)
        return EXIT_TIMEOUT, True
    except (KeyboardInterrupt, Signalled):
        stop()
        _reap(proc)
        raise


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _command_env(env: dict[str, str]) -> dict[str, str] | None:
    return {**os.environ, **env} if env else None


def stream(argv: Sequence[str], *, stdin: bool, env: dict[str, str] | None,
           timeout: float | None, stop: Stop) -> tuple[int, bool]:
    """Run an attached docker client with our stdin/stdout/stderr handed straight to it: byte
    for byte, as it comes, nothing buffered here. Returns (exit code, timed out); the code is
    124 on timeout."""
    proc = docker.popen_docker(argv, stdin=None if stdin else subprocess.DEVNULL, env=env)
    return _finish(proc, timeout, stop)


def _drain(stream: object, keep: int, sink: bytearray, truncated: list[bool]) -> None:
    """Read STREAM to its end, keeping the first KEEP bytes (memory stays bounded)."""
    read = stream.read1 if hasattr(stream, "read1") else stream.read  # type: ignore[attr-defined]
    while True:
        chunk = read(1 << 16)
        if not chunk:
            return
        room = keep - len(sink)
        if room > 0:
            sink += chunk[:room]
        if len(chunk) > max(room, 0):
            truncated[0] = True


def capture(argv: Sequence[str], *, stdin: bool, env: dict[str, str] | None,
            timeout: float | None, stop: Stop,
            max_capture: int = DEFAULT_MAX_CAPTURE) -> ExecResult:
    """Run an attached docker client keeping at most MAX_CAPTURE bytes of each stream."""
    began = time.monotonic()
    proc = docker.popen_docker(argv, stdin=None if stdin else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = bytearray(), bytearray()
    out_cut, err_cut = [False], [False]
    readers = [threading.Thread(target=_drain, args=(proc.stdout, max_capture, out, out_cut),
                                daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr, max_capture, err, err_cut),
                                daemon=True)]
    for reader in readers:
        reader.start()
    code, timed_out = _finish(proc, timeout, stop)
    for reader in readers:
        reader.join(timeout=KILL_GRACE_SECONDS)
    return ExecResult(code, bytes(out), bytes(err), timed_out, out_cut[0], err_cut[0],
                      int((time.monotonic() - began) * 1000))


def _prepare_exec(store: StateStore, name: str, command: Sequence[str], env: dict[str, str],
                  workdir: str | None, captured: bool,
                  ) -> tuple[list[str], bool, dict[str, str] | None, Stop]:
    """Check NAME is live; return the docker exec argv, whether stdin is forwarded, docker's
    environment (carrying -e values) and how to stop the command."""
    if not command or not command[0]:
        raise InvalidInput("no command given")
    check_runnable(store, name)
    forward, tty = stdin_mode()
    if captured:  # no terminal: stdout and stderr must stay apart
        forward, tty = forward and not os.isatty(0), False
    tag = _new_tag()
    argv = docker.exec_argv(name, command, marker=tag.marker, env_keys=sorted(env),
                            workdir=workdir, stdin=forward, tty=tty)
    return argv, forward, _command_env(env), lambda: kill_in_container(name, tag)


def exec_streaming(store: StateStore, name: str, command: Sequence[str], *,
                   env: dict[str, str] | None = None, workdir: str | None = None,
                   timeout: float | None = None) -> tuple[int, bool]:
    """`sandbox exec`: run COMMAND in NAME, streamed; returns (exit code, timed out)."""
    argv, forward, full_env, stop = _prepare_exec(store, name, command, env or {}, workdir,
                                                  captured=False)
    return stream(argv, stdin=forward, env=full_env, timeout=timeout, stop=stop)


def exec_captured(store: StateStore, name: str, command: Sequence[str], *,
                  env: dict[str, str] | None = None, workdir: str | None = None,
                  timeout: float | None = None) -> ExecResult:
    """`sandbox exec --json`: run COMMAND in NAME with bounded capture."""
    argv, forward, full_env, stop = _prepare_exec(store, name, command, env or {}, workdir,
                                                  captured=True)
    return capture(argv, stdin=forward, env=full_env, timeout=timeout, stop=stop)


def check_runnable(store: StateStore, name: str) -> None:
    """Fail early, before docker, when NAME is not a live sandbox."""
    from .sandbox import require

    require(store, name)
