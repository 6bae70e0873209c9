"""The engine seam: what differs between Docker and Podman, and between a local engine and one
on another host. Nothing else in the package asks which engine it talks to.

An engine is detected from the environment once, when a sandbox starts (SANDBOX_DOCKER,
DOCKER_HOST, DOCKER_CONTEXT, the docker config's current context), and recorded in the
sandbox's state entry. Every later command about that sandbox uses the recorded engine
(`use`): a changed environment cannot silently point `exec` at another daemon, where a
namesake container could live. Detection runs no subprocess: the client is Podman when its
name, or the script it is, says so (podman, podman-docker's `docker`, a wrapper).

Capabilities, as the rest of the package asks for them:
- `local`: the engine runs on this host's kernel (default socket or unix://), so its
  containers' cgroups may be reachable from here (the host-side kill, hostkill.py);
- `host_kill(runtime)`: local, Docker's cgroup layout, and a runtime whose processes are the
  container's own (not gVisor's runsc, whose host threads are its kernel);
- whether the engine sees the client's files is not known without trying: start binds and
  falls back to an engine volume when the engine refuses the bind (`bind_refused`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

DOCKER, PODMAN = "docker", "podman"
# Runtimes whose processes on the host are not the container's (a user-space kernel).
_OWN_KERNEL_RUNTIMES = ("runsc", "runsc-net", "kata", "kata-runtime")


class Engine(NamedTuple):
    """One container engine as the client reaches it (a NamedTuple, not a dataclass: see
    state.SandboxRecord)."""

    kind: str  # DOCKER or PODMAN
    binary: str  # the client executable
    host: str = ""  # DOCKER_HOST (or the context's endpoint, or CONTAINER_HOST); "" = default
    context: str = ""  # the docker context in use, when not the default

    @property
    def podman(self) -> bool:
        return self.kind == PODMAN

    @property
    def cp_keeps_owners(self) -> bool:
        """Whether `cp NAME:PATH -` streams each file's real owner (Docker does; Podman gives
        every member uid 0): what tells a fetched hard link from a file swapped in for it."""
        return self.kind == DOCKER

    @property
    def local(self) -> bool:
        """True when the engine runs on this host (a unix socket or the default one)."""
        return not self.host or self.host.startswith("unix://")

    def host_kill(self, runtime: str | None) -> bool:
        """Whether the host-side cgroup kill (hostkill.py) may be used for a container of
        RUNTIME: same host, Docker's cgroup names, and the runtime's host processes are the
        container's (under gVisor they are its kernel: signalling them ends the sandbox)."""
        return (self.local and self.kind == DOCKER
                and (runtime or "").split("/")[-1] not in _OWN_KERNEL_RUNTIMES)

    @property
    def where(self) -> str:
        """For messages: `local`, or the address."""
        if self.local:
            return "local" + (f" ({self.host})" if self.host else "")
        return f"remote ({self.host})" + (f", context {self.context}" if self.context else "")

    # --- argv and output shapes -----------------------------------------------------------

    def cp_in_argv(self, ref: str, dest: str) -> list[str]:
        """`cp - REF:DEST`: a tar stream on stdin, unpacked keeping the tar's owners (Podman
        gives every file the container user's uid unless told --archive=false)."""
        extra = ["--archive=false"] if self.podman else []
        return [self.binary, "cp", *extra, "-", f"{ref}:{dest}"]

    def cp_out_argv(self, ref: str, path: str) -> list[str]:
        """`cp REF:PATH -`: a tar stream of PATH on stdout."""
        return [self.binary, "cp", f"{ref}:{path}", "-"]

    def rows_argv(self, filters: list[str], labels: Iterable[str]) -> list[str]:
        """`ps -a` of the containers FILTERS select, in a shape parse_rows reads. Docker: one
        object a line, each label read by key (`.Label "K"`: exact, no container lock).
        Podman has no `.Label`; its `--format json` is one array with Labels as a map."""
        if self.podman:
            return [self.binary, "ps", "-a", "--no-trunc", *filters, "--format", "json"]
        fields = ", ".join([
            '"id": {{json .ID}}', '"names": {{json .Names}}', '"state": {{json .State}}',
            '"image": {{json .Image}}', '"created": {{json .CreatedAt}}',
            '"ports": {{json .Ports}}',
            *(f'"{key}": {{{{json (.Label "{key}")}}}}' for key in labels)])
        return [self.binary, "ps", "-a", "--no-trunc", *filters, "--format", "{" + fields + "}"]

    def parse_rows(self, out: str, labels: Iterable[str]) -> list[dict[str, str]]:
        """Rows of rows_argv's output as flat string maps: id, names, state, image, created
        (`2026-11-26 15:13:40 +0000 UTC`), ports (`127.0.0.1:49153->8000/tcp, ...`) and each
        label by key. Whatever is not of the expected type reads empty."""
        keys = list(labels)
        if self.podman:
            return [self._podman_row(item, keys) for item in _json_list(out)]
        rows = []
        for line in out.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append({key: value for key, value in row.items() if isinstance(value, str)})
        return rows

    @staticmethod
    def _podman_row(item: dict[str, object], keys: list[str]) -> dict[str, str]:
        from datetime import datetime, timezone

        names = item.get("Names")
        labels = item.get("Labels") if isinstance(item.get("Labels"), dict) else {}
        assert isinstance(labels, dict)
        created = item.get("Created")
        when = ""
        if isinstance(created, int) and not isinstance(created, bool):
            when = datetime.fromtimestamp(created, timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S +0000 UTC")
        ports = []
        listed = item.get("Ports")
        for port in listed if isinstance(listed, list) else []:
            if isinstance(port, dict) and port.get("host_port"):
                ports.append(f"{port.get('host_ip') or '0.0.0.0'}:{port['host_port']}->"
                             f"{port.get('container_port')}/{port.get('protocol', 'tcp')}")
        row = {"id": _text(item.get("Id")),
               "names": names[0] if isinstance(names, list) and len(names) == 1
               and isinstance(names[0], str) else "",
               "state": _text(item.get("State")), "image": _text(item.get("Image")),
               "created": when, "ports": ", ".join(ports)}
        row.update({key: _text(labels.get(key, "")) for key in keys})
        return row

    def exec_failures(self) -> tuple[int, ...]:
        """Codes with which `exec` reports its own failures (as well as a command's): then
        the container's state tells a dead or paused sandbox from a failed command. Podman
        answers 255 for an exec into a paused container."""
        return (1, 125, 126, 127, 255) if self.podman else (1, 125, 126, 127)

    def runtimes_argv(self) -> list[str] | None:
        """`info` printing the registered runtimes as a JSON map; None when the engine does
        not list them (Podman: one OCI runtime, chosen in containers.conf)."""
        return None if self.podman else [self.binary, "info", "--format", "{{json .Runtimes}}"]


    def runtimes(self) -> set[str]:
        """The runtimes the engine has registered (empty when it lists none, or the call
        fails: the run then says what is missing)."""
        argv = self.runtimes_argv()
        if argv is None:
            return set()
        from .docker import run_docker
        from .errors import SandboxError

        try:
            data = json.loads(run_docker(argv, check=False).stdout or "{}")
        except (SandboxError, ValueError):
            return set()
        return {str(key) for key in data} if isinstance(data, dict) else set()


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _json_list(out: str) -> list[dict[str, object]]:
    try:
        data = json.loads(out or "[]")
    except ValueError:
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


# Error lines of both engines, lower case, as classify_failure matches them.
NOT_FOUND = ("no such container", "is not running", "no container with name or id",
             "no such object", "container state improper")
IMAGE_MISSING = ("no such image", "unable to find image", "pull access denied",
                 "manifest unknown", "repository does not exist", "not found: manifest",
                 "image not known")
NAME_IN_USE = ("is already in use by",)
UNREACHABLE = ("unable to connect to podman socket", "cannot connect to podman")
_BIND_REFUSED = ("bind source path does not exist",)


def bind_refused(text: str) -> bool:
    """Whether TEXT (a failed run's stderr) says the engine cannot see the bind's source:
    Docker's `bind source path does not exist`, Podman's `statfs PATH: no such file`."""
    low = text.lower()
    return any(needle in low for needle in _BIND_REFUSED) or (
        "statfs" in low and "no such file or directory" in low)


def error_line(text: str) -> str:
    """The line of TEXT that says what failed: Podman prints warnings first (`time=...
    level=warning`) and its error on an `Error:` line; Docker's first line is it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith(("Error:", "Error response from daemon:", "docker: Error")):
            if line.endswith("error occurred:"):  # Podman's list of errors: the first one
                detail = next((ln[2:] for ln in lines[index + 1:] if ln.startswith("* ")), "")
                if len(detail) > 240:  # a path thousands of bytes long, say
                    detail = f"{detail[:120]}...{detail[-120:]}"
                return f"Error: {detail}" if detail else line
            return line
    return next((line for line in lines if "level=warning" not in line),
                lines[0] if lines else "")


# --- detection ------------------------------------------------------------------------------

_detected: Engine | None = None  # the environment's engine, detected once per process


class _Chosen(threading.local):
    """The engine this thread's docker calls go to when a sandbox's record chose one (`use`).
    Per thread, never in os.environ: the API and the MCP server run calls about sandboxes on
    different engines side by side, and the process's environment is the user's."""

    engine: Engine | None = None


_chosen = _Chosen()


def current() -> Engine:
    """The engine this thread's docker calls go to: a record's (`use`), else the
    environment's."""
    picked = _chosen.engine
    return picked if picked is not None else environment()


def environment() -> Engine:
    """The engine the environment points at (detected once, until an API call's `kept`),
    whatever a record chose for this thread."""
    global _detected
    found = _detected  # one read: another thread's kept() may reset it meanwhile
    if found is None:
        found = _detected = detect()
    return found


def same_daemon(one: Engine, other: Engine) -> bool:
    """ONE and OTHER reach the same engine, whatever client each runs (a wrapper script or
    another path to docker talks to the same daemon)."""
    return (one.kind, one.host, one.context) == (other.kind, other.host, other.context)


def chosen() -> Engine | None:
    """The engine a record chose for this thread's calls, or None (the environment's)."""
    return _chosen.engine


def client_env(env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The environment for a docker client (ENV, default ours) pointed at this thread's chosen
    engine: its DOCKER_HOST or context (Podman: CONTAINER_HOST), and SANDBOX_DOCKER for our
    own helpers; None (inherit ours) when no record chose one and ENV is None."""
    picked = _chosen.engine
    if picked is None:
        return None if env is None else dict(env)
    out = dict(os.environ if env is None else env)
    out["SANDBOX_DOCKER"] = picked.binary
    if picked.kind == PODMAN:  # podman goes remote whenever CONTAINER_HOST is set
        if picked.host:
            out["CONTAINER_HOST"] = picked.host
        else:
            out.pop("CONTAINER_HOST", None)
    elif picked.host and not picked.host.startswith("context "):
        out["DOCKER_HOST"] = picked.host
        out.pop("DOCKER_CONTEXT", None)
    else:
        out.pop("DOCKER_HOST", None)
        out["DOCKER_CONTEXT"] = picked.context or "default"
    return out


def detect(environ: dict[str, str] | None = None) -> Engine:
    """The engine ENVIRON (default: ours) points at; no subprocess."""
    from .docker import environment_binary

    env = os.environ if environ is None else environ
    binary = environment_binary()
    if _is_podman(binary):
        return Engine(PODMAN, binary, env.get("CONTAINER_HOST", ""))
    context = env.get("DOCKER_CONTEXT", "") or _config_context(env)
    host = env.get("DOCKER_HOST", "")
    if not host and context and context != "default":
        host = _context_host(env, context)
    return Engine(DOCKER, binary, host, "" if context == "default" else context)


def _is_podman(binary: str) -> bool:
    """The client is Podman: so named, or a short script that runs podman."""
    path = os.path.realpath(binary)
    if "podman" in os.path.basename(path):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"podman" in head


def _docker_config_dir(env: dict[str, str] | os._Environ[str]) -> str:
    return env.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")


def _config_context(env: dict[str, str] | os._Environ[str]) -> str:
    try:
        with open(os.path.join(_docker_config_dir(env), "config.json"), "rb") as handle:
            data = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return ""
    name = data.get("currentContext") if isinstance(data, dict) else None
    return name if isinstance(name, str) else ""


def _context_host(env: dict[str, str] | os._Environ[str], context: str) -> str:
    """The docker endpoint of CONTEXT, from its meta.json (the CLI's own store)."""
    import hashlib

    digest = hashlib.sha256(context.encode()).hexdigest()
    meta = os.path.join(_docker_config_dir(env), "contexts", "meta", digest, "meta.json")
    try:
        with open(meta, "rb") as handle:
            data = json.loads(handle.read(1 << 20))
        host = data["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"context {context}"  # unknown: counted as remote
    return host if isinstance(host, str) else f"context {context}"


# --- recording --------------------------------------------------------------------------------

def to_options(engine: Engine) -> dict[str, object]:
    """The state entry's fields for ENGINE (flat scalars, as options must be)."""
    return {"engine": engine.kind, "engine_binary": engine.binary, "engine_host": engine.host,
            "engine_context": engine.context}


def from_options(options: dict[str, object]) -> Engine | None:
    """The engine a state entry recorded; None for an entry of an older version."""
    kind, binary = options.get("engine"), options.get("engine_binary")
    if kind not in (DOCKER, PODMAN) or not isinstance(binary, str) or not binary:
        return None
    host, context = options.get("engine_host", ""), options.get("engine_context", "")
    return Engine(str(kind), binary, host if isinstance(host, str) else "",
                  context if isinstance(context, str) else "")


@contextmanager
def using(engine: Engine | None) -> Iterator[Engine]:
    """This thread's docker calls go to ENGINE (None: the environment's) for the block, then
    to the engine they went to before."""
    before = _chosen.engine
    _chosen.engine = engine
    try:
        yield current()
    finally:
        _chosen.engine = before


@contextmanager
def kept() -> Iterator[None]:
    """An API call's engine scope: the environment is read afresh (the caller may have
    changed DOCKER_HOST since the last call), and whatever engine `use` chooses inside the
    block is this thread's for the block only (a `start` after an `attach` to a sandbox on
    another engine still goes to the environment's)."""
    global _detected
    _detected = None
    with using(_chosen.engine):
        yield


def carry(work: Callable[_P, _T]) -> Callable[_P, _T]:
    """WORK, bound to this thread's engine now: for work done later or on another thread
    (an exec stream's timeout kill, its end report)."""
    engine = _chosen.engine

    def bound(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with using(engine):
            return work(*args, **kwargs)

    return bound


def use(options: dict[str, object]) -> Engine:
    """Point this thread's docker calls at the engine a state entry recorded (its client,
    DOCKER_HOST, context), whatever the environment says now; returns it. An entry without
    one keeps the current engine."""
    recorded = from_options(options)
    if recorded is None:
        return current()
    _chosen.engine = recorded
    return recorded
