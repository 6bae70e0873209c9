"""Background processes: `exec --detach`, `logs`, `kill`.

A detached command is an ordinary `docker exec` (as the sandbox user, tagged with its own exec
marker), attached to a small relay of ours on the host rather than to a terminal. The relay
(this module run as `python -m sandbox_cli.background RELAY_DIR READY_FD`) starts in its own
session, writes the command's stdout and stderr to files beside the workspace, in
$SANDBOX_HOME/logs/NAME/ID/, and the exit code when the command ends.

Why there: the code can write anywhere it can write, so a log inside the sandbox (in /app or
/tmp) would be the code's to forge, fill or swap for a link. The home is out of its reach; what
the code controls is only the bytes it prints, and those the relay bounds: each stream is kept
in two files of at most LOG_CAP/2 bytes (when the current one is full it replaces the previous
one), so at most LOG_CAP bytes a stream are ever stored, the latest ones. The relay also reads
at most LOG_RATE bytes a second: a command that prints faster is slowed down by the pipe's
back-pressure (its writes block) instead of costing the host's CPU, outside the container's
limits, to relay output nobody keeps. A hostile command can still write whatever it likes into
its own logs (forged lines, escape sequences: `logs` passes the bytes through, as `exec`
does), and fill them with junk that pushes older output out.

`kill` ends the command and everything it started, as a timeout ends an exec (hostkill.py
from the host, or docker.KILL_SCRIPT inside), but by the marker alone: its processes, their
sessions and their descendants, not what else began after it did. A process that scrubs the
marker from its environment and leaves its session escapes that (purge still ends it, with the
container). Conversely, a foreground `exec --timeout` ends everything that began after that
exec did: a detached command started before it is spared, but not the children it forks while
the timed-out exec runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import docker, engine, validate
from .errors import DockerError, InvalidInput, SandboxNotFound
from .state import StateStore, now_iso

LOG_CAP = 1 << 20  # bytes kept per stream (two files of half that)
LOG_RATE = 1 << 20  # bytes a second the relay reads from one command (both streams)
_BURST = 256 << 10  # what may be read at once before the rate applies
_NEVER = 1 << 62  # a start time no process reaches: hostkill selects by marker alone
_STREAMS = ("stdout", "stderr")
_READY_SECONDS = 10.0
_KILL_SECONDS = 10.0


def logs_root(store: StateStore, name: str) -> str:
    """$SANDBOX_HOME/logs/NAME (NAME validated)."""
    return os.path.join(store.home, "logs", validate.name(name))


def _proc_dir(store: StateStore, name: str, ident: str) -> str:
    if not (len(ident) == 8 and all(c in "0123456789abcdef" for c in ident)):
        raise InvalidInput(f"invalid process id {ident!r}: expected 8 hex digits "
                           "(see `sandbox ls --json`)")
    return os.path.join(logs_root(store, name), ident)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(folder: str, name: str, value: dict[str, Any]) -> None:
    """Atomically (rename) write VALUE as FOLDER/NAME."""
    tmp = os.path.join(folder, f".{name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle)
    os.replace(tmp, os.path.join(folder, name))


# --- starting ------------------------------------------------------------------------------

def launch(store: StateStore, name: str, command: Sequence[str], *,
           env: dict[str, str] | None = None, workdir: str | None = None) -> str:
    """Start COMMAND in NAME in the background, behind a relay; returns its id."""
    if not command or not command[0]:
        raise InvalidInput("no command given")
    from .pausing import refuse_if_paused
    from .sandbox import container_ref, require

    record = require(store, name)
    refuse_if_paused(record)
    ident = os.urandom(4).hex()
    root = logs_root(store, name)
    os.makedirs(root, mode=0o700, exist_ok=True)
    folder = _proc_dir(store, name, ident)
    os.mkdir(folder, 0o700)
    user = record.user if record.user.replace(":", "").isdigit() else None
    _write_json(folder, "meta.json", {
        "id": ident, "command": list(command), "marker": os.urandom(8).hex(),
        "container": container_ref(record), "container_id": record.container_id,
        "user": user, "workdir": workdir, "started_at": now_iso()})
    env_fd = _env_memfd(env or {})
    ready_r, ready_w = os.pipe()
    fds = [ready_w] + ([env_fd] if env_fd is not None else [])
    argv = [sys.executable, "-m", "sandbox_cli.background", folder, str(ready_w),
            str(env_fd if env_fd is not None else -1)]
    try:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, pass_fds=fds, start_new_session=True,
                         cwd="/",  # holds no folder of yours busy
                         env=engine.client_env())  # its docker goes to the sandbox's engine
    finally:
        for fd in fds:
            os.close(fd)
    try:
        ready = _wait_ready(ready_r)
    finally:
        os.close(ready_r)
    if not ready:
        raise DockerError(f"the relay of {name}/{ident} did not start (see "
                          f"`sandbox logs {name} {ident}`)")
    return ident


def _env_memfd(env: dict[str, str]) -> int | None:
    """The -e values in an anonymous memory file (docker reads it as --env-file
    /dev/fd/N): never on disk by name, never on a command line."""
    if not env:
        return None
    fd = os.memfd_create("sandbox-env", 0)  # no MFD_CLOEXEC: the relay inherits it
    os.write(fd, "".join(f"{key}={value}\n" for key, value in env.items()).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _wait_ready(fd: int) -> bool:
    import select

    ready, _, _ = select.select([fd], [], [], _READY_SECONDS)
    return bool(ready) and os.read(fd, 1) == b"1"


# --- the relay -----------------------------------------------------------------------------

class _RingLog:
    """One stream's log: FOLDER/STREAM.log, and STREAM.1.log before it; each at most
    LOG_CAP/2 bytes, so the latest LOG_CAP bytes at most are kept."""

    def __init__(self, folder: str, stream: str) -> None:
        self.current = os.path.join(folder, f"{stream}.log")
        self.previous = os.path.join(folder, f"{stream}.1.log")
        self.fd: int | None = self._open()
        self.size = 0

    def _open(self) -> int | None:
        try:
            return os.open(self.current, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600)
        except OSError:  # the folder was purged: nothing is kept any more
            return None

    def write(self, data: bytes) -> None:
        half = LOG_CAP // 2
        while data and self.fd is not None:
            part, data = data[:half - self.size], data[half - self.size:]
            try:
                os.write(self.fd, part)
            except OSError:
                self.close()
                return
            self.size += len(part)
            if self.size >= half:
                self.close()
                try:
                    os.replace(self.current, self.previous)
                except OSError:
                    return
                self.fd, self.size = self._open(), 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def relay(folder: str, ready_fd: int, env_fd: int) -> int:
    """The relay's body: run the detached exec, keep its output bounded, record its end."""
    meta = _read_json(os.path.join(folder, "meta.json")) or {}
    argv = docker.exec_argv(str(meta["container"]), [str(c) for c in meta["command"]],
                            marker=str(meta["marker"]), user=meta.get("user") or None,
                            env_file=f"/dev/fd/{env_fd}" if env_fd >= 0 else None,
                            workdir=meta.get("workdir") or None)
    logs = {stream: _RingLog(folder, stream) for stream in _STREAMS}
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                pass_fds=(env_fd,) if env_fd >= 0 else ())
    except OSError as exc:
        logs["stderr"].write(f"sandbox: error: could not run docker: {exc}\n".encode())
        _write_json(folder, "exit.json", {"exit_code": 127, "ended_at": now_iso()})
        os.write(ready_fd, b"1")
        return 1
    if env_fd >= 0:
        os.close(env_fd)
    _write_json(folder, "relay.json", {"pid": os.getpid(), "started": _start_ticks(os.getpid())})
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    assert proc.stdout is not None and proc.stderr is not None
    _pump({proc.stdout.fileno(): logs["stdout"], proc.stderr.fileno(): logs["stderr"]})
    code = proc.wait()
    for log in logs.values():
        log.close()
    with contextlib.suppress(OSError):  # purged meanwhile
        _write_json(folder, "exit.json", {"exit_code": code if code >= 0 else 128 - code,
                                          "ended_at": now_iso()})
    return 0


def _pump(sources: dict[int, _RingLog]) -> None:
    """Copy each source to its log until both end, at most LOG_RATE bytes a second."""
    import selectors

    selector = selectors.DefaultSelector()
    for fd in sources:
        selector.register(fd, selectors.EVENT_READ)
    began, taken = time.monotonic(), 0
    open_fds = set(sources)
    while open_fds:
        for key, _ in selector.select():
            fd = int(key.fd)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                selector.unregister(fd)
                open_fds.discard(fd)
                continue
            sources[fd].write(chunk)
            taken += len(chunk)
        ahead = (taken - _BURST) / LOG_RATE - (time.monotonic() - began)
        if ahead > 0:  # back-pressure: the command's writes wait, not our CPU
            time.sleep(min(ahead, 1.0))


def _start_ticks(pid: int) -> int:
    """A process's start time (clock ticks since boot), 0 when it is gone: with the pid,
    it tells our relay from a process that reused its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
        return int(data[data.rfind(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


# --- status --------------------------------------------------------------------------------

def _status(folder: str) -> dict[str, Any] | None:
    meta = _read_json(os.path.join(folder, "meta.json"))
    if meta is None:
        return None
    ended = _read_json(os.path.join(folder, "exit.json"))
    relay_info = _read_json(os.path.join(folder, "relay.json")) or {}
    pid = relay_info.get("pid")
    alive = (ended is None and isinstance(pid, int) and pid > 0
             and _start_ticks(pid) == relay_info.get("started"))
    code = ended.get("exit_code") if ended else None
    return {"id": str(meta.get("id", "")), "command": meta.get("command", []),
            "started_at": meta.get("started_at", ""), "running": alive,
            "exit_code": code if isinstance(code, int) else None}


def processes(store: StateStore, name: str) -> list[dict[str, Any]]:
    """Every detached process of NAME we have logs of, oldest first."""
    try:
        root = logs_root(store, name)
        entries = sorted(os.listdir(root))
    except (OSError, InvalidInput):
        return []
    found = [status for entry in entries
             if (status := _status(os.path.join(root, entry))) is not None]
    return sorted(found, key=lambda s: (s["started_at"], s["id"]))


def listed(store: StateStore, name: str) -> list[dict[str, Any]]:
    """The running detached processes of NAME, for `ls --json`."""
    return [{k: v for k, v in p.items() if k != "exit_code"}
            for p in processes(store, name) if p["running"]]


def remove_logs(store: StateStore, name: str) -> None:
    """Delete NAME's logs (purge): a relay still writing loses its folder, and stops."""
    root = logs_root(store, name)
    for _ in range(3):  # a relay may rotate a file in it meanwhile
        shutil.rmtree(root, ignore_errors=True)
        if not os.path.lexists(root):
            return


# --- logs ----------------------------------------------------------------------------------

def _pick(store: StateStore, name: str, ident: str | None) -> tuple[str, dict[str, Any]]:
    from .sandbox import require

    require(store, name, expired_ok=True)  # logs outlive the container, as files do
    if ident is None:
        found = processes(store, name)
        if not found:
            raise SandboxNotFound(f"{name} has no detached process (`sandbox exec --detach`)")
        ident = found[-1]["id"]
    folder = _proc_dir(store, name, ident)
    status = _status(folder)
    if status is None:
        raise SandboxNotFound(f"no detached process {ident!r} in {name} "
                              "(see `sandbox ls --json`)")
    return folder, status


def _stored(folder: str, stream: str) -> bytes:
    data = b""
    for part in (f"{stream}.1.log", f"{stream}.log"):
        try:
            with open(os.path.join(folder, part), "rb") as handle:
                data += handle.read(LOG_CAP)
        except OSError:
            continue
    return data[-LOG_CAP:]


def _tail(data: bytes, lines: int | None) -> bytes:
    if lines is None:
        return data
    if lines <= 0:
        return b""
    cut = data[:-1] if data.endswith(b"\n") else data
    at = len(cut)
    for _ in range(lines):
        at = cut.rfind(b"\n", 0, at)
        if at < 0:
            return data
    return data[at + 1:]


def show_logs(store: StateStore, name: str, ident: str | None, *, tail: int | None = None,
              follow: bool = False) -> None:
    """Write a detached process's stored stdout to our stdout and stderr to our stderr
    (bytes as stored); FOLLOW keeps writing what comes until it ends."""
    folder, _ = _pick(store, name, ident)
    positions = {}
    for fd, stream in zip((1, 2), _STREAMS, strict=True):
        _write_all(fd, _tail(_stored(folder, stream), tail))
        positions[stream] = _position(folder, stream)
    if not follow:
        return
    while True:
        ended = _read_json(os.path.join(folder, "exit.json")) is not None \
            or not (_status(folder) or {}).get("running")
        for fd, stream in zip((1, 2), _STREAMS, strict=True):
            positions[stream] = _follow_once(folder, stream, positions[stream], fd)
        if ended:
            return
        time.sleep(0.2)


def _position(folder: str, stream: str) -> tuple[int, int]:
    """(inode, size) of STREAM's current file: where following starts."""
    try:
        st = os.stat(os.path.join(folder, f"{stream}.log"))
    except OSError:
        return 0, 0
    return st.st_ino, st.st_size


def _follow_once(folder: str, stream: str, at: tuple[int, int], out: int) -> tuple[int, int]:
    """Write what STREAM gained since AT; a rotation (a new current file) is read from the
    previous file's rest, then the new file from its start."""
    inode, offset = at
    current = os.path.join(folder, f"{stream}.log")
    try:
        st = os.stat(current)
    except OSError:
        return at
    if st.st_ino != inode:
        previous = os.path.join(folder, f"{stream}.1.log")
        try:
            if os.stat(previous).st_ino == inode:
                with open(previous, "rb") as handle:
                    handle.seek(offset)
                    _write_all(out, handle.read(LOG_CAP))
        except OSError:
            pass
        inode, offset = st.st_ino, 0
    with open(current, "rb") as handle:
        handle.seek(offset)
        data = handle.read(LOG_CAP)
    _write_all(out, data)
    return inode, offset + len(data)


def _write_all(fd: int, data: bytes) -> None:
    from .errors import OutputClosed

    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        raise OutputClosed() from None


# --- kill ----------------------------------------------------------------------------------

def kill(store: StateStore, name: str, ident: str) -> dict[str, Any]:
    """End detached process IDENT of NAME and everything it started (by its marker, see the
    module's docstring), and wait (bounded) for its relay to record the end."""
    from .pausing import refuse_if_paused
    from .sandbox import require

    record = require(store, name)
    refuse_if_paused(record)
    folder, status = _pick(store, name, ident)
    if not status["running"]:
        return status
    meta = _read_json(os.path.join(folder, "meta.json")) or {}
    end = time.monotonic() + _KILL_SECONDS
    while time.monotonic() < end:
        _end_marked(meta)
        settle = time.monotonic() + 2.0  # the relay records the end once docker exec returns
        while time.monotonic() < min(settle, end):
            status = _status(folder) or status
            if not status["running"]:
                return status
            time.sleep(0.05)
    raise DockerError(f"could not end {name}/{ident} within {_KILL_SECONDS:g}s: "
                      f"`sandbox purge {name}` ends it with the sandbox")


def _end_marked(meta: dict[str, Any]) -> None:
    """One pass of the kill: from the host through the cgroup where we can, else inside."""
    marker, cid = str(meta.get("marker", "")), str(meta.get("container_id", ""))
    if os.environ.get("SANDBOX_KILL_FROM_HOST", "1") != "0":
        from . import hostkill

        if hostkill.end_exec(cid, marker, _NEVER) is not None:
            return
    argv = docker.kill_exec_argv(str(meta.get("container", "")), marker, None,
                                 user=meta.get("user") or None)
    docker.run_docker(argv, check=False)


if __name__ == "__main__":  # the relay: python -m sandbox_cli.background DIR READY_FD ENV_FD
    sys.exit(relay(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
