"""Running a command in a sandbox: streamed passthrough or bounded capture, with a timeout that
ends the command inside the container too (killing the docker client alone would not).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from . import docker
from .errors import EXIT_TIMEOUT, InvalidInput, SandboxError, SandboxNotFound, Signalled
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
    stop_failed: bool = False

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
    """How the kill recognises an exec's processes: a random marker in their environment, and
    the moment just before the exec began, both as this kernel's clock ticks since boot (for
    the host-side kill, which runs on the container's kernel) and as a monotonic time (for the
    in-container kill, which gets only a duration: the container's clock is its own)."""

    marker: str
    since_ticks: int
    began: float = 0.0  # time.monotonic()


_TICKS = os.sysconf("SC_CLK_TCK")


def _new_tag() -> ExecTag:
    """A fresh tag. The marker is what secrets.token_hex(8) returns (os.urandom as hex),
    without importing secrets, which pulls in hmac, hashlib and OpenSSL (~3 ms an exec)."""
    ticks = int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS)
    return ExecTag(os.urandom(8).hex(), ticks, time.monotonic())


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


def kill_in_container(name: str, tag: ExecTag) -> bool:
    """End every process the exec tagged TAG started, and every process that began after it
    did; True when that is done. From the host first, through the container's cgroup, where
    this host runs the container and may signal it (nothing in the container can stop that);
    else by a helper exec inside, within a deadline; and if the container fights that helper
    (it stops its own uid's processes), by killing the container: nothing it started lives
    on. Every step is bounded, so a timeout returns within seconds whatever the command does."""
    if os.environ.get("SANDBOX_KILL_FROM_HOST", "1") != "0":
        from . import hostkill

        if hostkill.end_exec(name, tag.marker, tag.since_ticks):
            return True
    # Ticks since the exec began, plus one of slack for rounding: a cut-off a little early
    # spares nothing the exec started.
    ago = int((time.monotonic() - tag.began) * _TICKS) + 1
    argv = docker.kill_exec_argv(name, tag.marker, ago)
    try:
        if docker.run_docker(argv, check=False).returncode == 0:
            return True
    except SandboxError:
        pass
    return _kill_container(name)


def _kill_container(name: str) -> bool:
    """The last resort: SIGKILL the container's init, which ends every process in it (Docker
    then removes the container). False when even that fails (a wedged engine)."""
    try:
        argv = [docker.docker_binary(), "kill", "--signal", "KILL", name]
        return docker.run_docker(argv, check=False,
                                 timeout=docker.DEADLINE_KILL_EXEC).returncode == 0
    except SandboxError:
        return False


STOP_FAILED = ("could not stop the command inside the container (no sh in the image, or its "
               "process limit is reached): purging the sandbox ends it")
Stop = Callable[[], bool]  # ends the command inside the container; True when that worked


class Outcome(NamedTuple):
    """How an attached command ended."""

    code: int
    timed_out: bool = False
    stop_failed: bool = False  # we tried to end it inside the container and could not


def _finish(proc: subprocess.Popen[bytes], timeout: float | None, stop: Stop) -> Outcome:
    """Wait for PROC; on timeout or Ctrl-C call STOP (which ends the command inside the
    container: killing the docker client alone would not), then reap the client."""
    try:
        code = proc.wait(timeout=timeout)
        if code < 0:  # the client was killed (e.g. SIGPIPE under `| head`): not the command
            return Outcome(128 - code, stop_failed=not stop())
        if _reader_gone():  # the client gave up writing to a closed pipe: the command may live
            return Outcome(128 + signal.SIGPIPE, stop_failed=not stop())
        return Outcome(code)
    except subprocess.TimeoutExpired:
        stopped = stop()
        _reap(proc)
        return Outcome(EXIT_TIMEOUT, timed_out=True, stop_failed=not stopped)
    except (KeyboardInterrupt, Signalled) as exc:
        stopped = stop()
        _reap(proc)
        if not stopped and isinstance(exc, Signalled):
            exc.message += f"; {STOP_FAILED}"
        raise


def _reader_gone() -> bool:
    """True when our stdout or stderr is a pipe whose reader has gone (poll says POLLERR)."""
    import select

    poller = select.poll()
    for fd in (1, 2):
        poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
    return any(events & (select.POLLERR | select.POLLNVAL) for _, events in poller.poll(0))


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stream(argv: Sequence[str], *, stdin: bool, timeout: float | None, stop: Stop) -> Outcome:
    """Run an attached docker client with our stdin/stdout/stderr handed straight to it: byte
    for byte, as it comes, nothing buffered here. Returns (exit code, timed out); the code is
    124 on timeout."""
    proc = docker.popen_docker(argv, stdin=None if stdin else subprocess.DEVNULL)
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


def capture(argv: Sequence[str], *, stdin: bool, timeout: float | None, stop: Stop,
            max_capture: int = DEFAULT_MAX_CAPTURE) -> ExecResult:
    """Run an attached docker client keeping at most MAX_CAPTURE bytes of each stream."""
    began = time.monotonic()
    proc = docker.popen_docker(argv, stdin=None if stdin else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()
    out_cut, err_cut = [False], [False]
    readers = [threading.Thread(target=_drain, args=(proc.stdout, max_capture, out, out_cut),
                                daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr, max_capture, err, err_cut),
                                daemon=True)]
    for reader in readers:
        reader.start()
    outcome = _finish(proc, timeout, stop)
    for reader in readers:
        reader.join(timeout=KILL_GRACE_SECONDS)
    return ExecResult(outcome.code, bytes(out), bytes(err), outcome.timed_out, out_cut[0],
                      err_cut[0], int((time.monotonic() - began) * 1000), outcome.stop_failed)


Result = TypeVar("Result", Outcome, ExecResult)


def _exec(store: StateStore, name: str, command: Sequence[str], env: dict[str, str],
          workdir: str | None, timeout: float | None,
          run: Callable[..., Result], captured: bool) -> Result:
    """Check NAME is live, then `docker exec` COMMAND, streamed or captured; -e values go
    through a private env file that lives as long as the exec."""
    if not command or not command[0]:
        raise InvalidInput("no command given")
    from .sandbox import container_ref, require

    # By id, not name: a container of the same name from another home is never entered.
    target = container_ref(require(store, name))
    forward, tty = stdin_mode()
    if captured:  # no terminal: stdout and stderr must stay apart
        forward, tty = forward and not os.isatty(0), False
    tag = _new_tag()
    with docker.env_file(env) as env_path:
        argv = docker.exec_argv(target, command, marker=tag.marker, env_file=env_path,
                                workdir=workdir, stdin=forward, tty=tty)
        outcome = run(argv, stdin=forward, timeout=timeout,
                      stop=lambda: kill_in_container(target, tag))
    code = outcome.exit_code if isinstance(outcome, ExecResult) else outcome.code
    if code in _DOCKER_EXEC_FAILURES:
        _require_running(target, name)
    return outcome


# Codes with which `docker exec` reports its own failures (as well as a command's).
_DOCKER_EXEC_FAILURES = (1, 125, 126, 127)


def _require_running(target: str, name: str) -> None:
    """After a failed exec, tell a dead, paused or vanished container from a failed command."""
    proc = docker.run_docker(docker.state_argv(target), check=False)
    status = proc.stdout.strip()
    if proc.returncode != 0:
        raise SandboxNotFound(f"sandbox {name!r} has no container any more: "
                              f"`sandbox purge {name}` clears it")
    if status != "running":
        raise SandboxNotFound(f"sandbox {name!r} is {status}, not running")


def exec_streaming(store: StateStore, name: str, command: Sequence[str], *,
                   env: dict[str, str] | None = None, workdir: str | None = None,
                   timeout: float | None = None) -> Outcome:
    """`sandbox exec`: run COMMAND in NAME, streamed."""
    return _exec(store, name, command, env or {}, workdir, timeout, stream, captured=False)


def exec_captured(store: StateStore, name: str, command: Sequence[str], *,
                  env: dict[str, str] | None = None, workdir: str | None = None,
                  timeout: float | None = None) -> ExecResult:
    """`sandbox exec --json`: run COMMAND in NAME with bounded capture."""
    return _exec(store, name, command, env or {}, workdir, timeout, capture, captured=True)
