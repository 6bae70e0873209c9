"""Running a command in a sandbox: streamed passthrough or bounded capture, with a timeout that
ends the command inside the container too (killing the docker client alone would not).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, NamedTuple, TypeVar

from . import docker, engine
from .errors import EXIT_TIMEOUT, InvalidInput, SandboxError, SandboxNotFound, Signalled
from .state import StateStore

DEFAULT_MAX_CAPTURE = 16 * 1024 * 1024  # per stream, for --json
KILL_GRACE_SECONDS = 5.0


class ExecResult:
    """Outcome of a captured exec (--json). A plain class, not a dataclass: see
    state.SandboxRecord."""

    FIELDS = ("exit_code", "stdout", "stderr", "timed_out", "stdout_truncated",
              "stderr_truncated", "duration_ms", "stop_failed", "oom_killed", "memory",
              "not_started")
    __slots__ = FIELDS

    def __init__(self, exit_code: int, stdout: bytes, stderr: bytes, timed_out: bool,
                 stdout_truncated: bool, stderr_truncated: bool, duration_ms: int,
                 stop_failed: bool = False,
                 oom_killed: bool = False,  # the kernel killed a process for memory
                 memory: str = "",  # the sandbox's memory limit, for the message
                 not_started: str = "",  # why the command could not start (not found, ...)
                 ) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr
        self.timed_out, self.duration_ms, self.stop_failed = timed_out, duration_ms, stop_failed
        self.stdout_truncated, self.stderr_truncated = stdout_truncated, stderr_truncated
        self.oom_killed, self.memory, self.not_started = oom_killed, memory, not_started

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={getattr(self, key)!r}" for key in self.FIELDS)
        return f"ExecResult({fields})"

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
            "oomKilled": self.oom_killed,
        }


class ExecTag(NamedTuple):
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


def stdin_mode(tty: bool | None = None) -> tuple[bool, bool]:
    """(forward stdin, allocate a tty): forward whatever is piped in; a tty only when stdin,
    stdout and stderr are all terminals (so `2>err.log` still gets stderr alone), unless TTY
    says (-t / -T). A forced tty needs a terminal on stdin: docker refuses `-i -t` otherwise."""
    try:
        st = os.fstat(0)
    except OSError:
        forward = False
    else:
        # /dev/null: nothing to forward, and -i costs docker a stream
        forward = not (stat.S_ISCHR(st.st_mode) and not os.isatty(0)
                       and st.st_rdev == os.stat(os.devnull).st_rdev)
    if tty is None:
        return forward, forward and os.isatty(0) and os.isatty(1) and os.isatty(2)
    if tty and forward and not os.isatty(0):
        raise InvalidInput("--tty needs a terminal on stdin (stdin is redirected); "
                           "drop -t, or redirect stdin from /dev/null")
    return forward, tty


def kill_in_container(name: str, tag: ExecTag, user: str | None = None,
                      host_kill: bool = True) -> bool:
    """End every process the exec tagged TAG started, and every process that began after it
    did; True when that is done. From the host first, through the container's cgroup, where
    this host runs the container and may signal it (nothing in the container can stop that);
    else by a helper exec inside, within a deadline; and if the container fights that helper
    (it stops its own uid's processes), by killing the container: nothing it started lives
    on. Every step is bounded, so a timeout returns within seconds whatever the command does.
    HOST_KILL false (engine.Engine.host_kill: a remote engine, Podman, gVisor) skips the
    host: its clock and processes are not the container's."""
    if host_kill and os.environ.get("SANDBOX_KILL_FROM_HOST", "1") != "0":
        from . import hostkill

        if hostkill.end_exec(name, tag.marker, tag.since_ticks):
            return True
    # Ticks since the exec began, plus one of slack for rounding: a cut-off a little early
    # spares nothing the exec started.
    ago = int((time.monotonic() - tag.began) * _TICKS) + 1
    argv = docker.kill_exec_argv(name, tag.marker, ago, user=user)
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
    oom_killed: bool = False  # the kernel killed a process for memory while it ran
    memory: str = ""  # the sandbox's memory limit, for the message
    not_started: str = ""  # why the command could not start (not found, not executable)


def _finish(proc: subprocess.Popen[bytes], timeout: float | None, stop: Stop,
            watch_reader: bool = True) -> Outcome:
    """Wait for PROC; on timeout or Ctrl-C call STOP (which ends the command inside the
    container: killing the docker client alone would not), then reap the client.
    WATCH_READER: our own stdout/stderr carry the output (the CLI), so a reader that went
    away there means the client gave up; the API's pipes are not ours to poll."""
    try:
        code = docker.wait_for(proc, timeout)
        if code < 0:  # the client was killed (e.g. SIGPIPE under `| head`): not the command
            return Outcome(128 - code, stop_failed=not stop())
        if watch_reader and _reader_gone():  # the client gave up on a closed pipe: it may live
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
        docker.wait_for(proc, KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# What docker exec (on its stdout) and run's TTL shell (on its stderr) print when the command
# cannot start at all. A command's own output that begins so is held back until it ends, then
# passed on unless the exit code is 126/127.
OCI_MARKER = b"OCI runtime exec failed"
TTL_MARKER = b"sandbox-ttl: "  # run's shell (docker.TTL_SCRIPT, whose $0 this is)
Intercept = tuple[int, bytes]  # (our fd 1 or 2, marker): relay that stream, watching for MARKER
HOLD_MAX = 64 * 1024  # docker's and the TTL shell's lines are far shorter


def stream(argv: Sequence[str], *, stdin: bool, timeout: float | None, stop: Stop,
           intercept: Intercept | None = None, command: Sequence[str] = ()) -> Outcome:
    """Run an attached docker client with our stdin/stdout/stderr handed straight to it: byte
    for byte, as it comes, nothing buffered here. INTERCEPT relays one stream through a pipe
    instead (still as it comes), so that docker's or the TTL shell's "could not start COMMAND" line
    becomes ours on stderr. The code is 124 on timeout."""
    if intercept is None:
        proc = docker.popen_docker(argv, stdin=None if stdin else subprocess.DEVNULL)
        return _finish(proc, timeout, stop)
    fd, marker = intercept
    pipe = {"stdout" if fd == 1 else "stderr": subprocess.PIPE}
    proc = docker.popen_docker(argv, stdin=None if stdin else subprocess.DEVNULL,
                               **pipe)
    source = proc.stdout if fd == 1 else proc.stderr
    assert source is not None
    _widen(source.fileno())
    held = bytearray()
    relay = threading.Thread(target=_relay, args=(source, fd, marker, held), daemon=True)
    relay.start()
    outcome = _finish(proc, timeout, stop)
    relay.join(timeout=KILL_GRACE_SECONDS)
    source.close()  # a no-op when the relay closed it (a file object closes its fd once)
    failed = _not_started(outcome.code, bytes(held), marker, command)
    if failed is not None:
        return outcome._replace(code=failed[0], not_started=failed[1])
    if held:
        _write_all(fd, bytes(held))
    return outcome


RELAY_PIPE_BYTES = 1 << 20  # the default pipe-max-size, which any user may ask for


def _widen(fd: int) -> None:
    """Give the relay's pipe FD 1 MiB instead of 64 KiB: the docker client then blocks, and
    the relay wakes, 16 times less often (300 MB of output cost the relay about 170 ms of CPU
    with 64 KiB, 100 ms with 1 MiB). Refused (a user over its pipe quota), it stays as it is."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, RELAY_PIPE_BYTES)


def _relay(pipe: IO[bytes], target: int, marker: bytes, held: bytearray) -> None:
    """Copy PIPE to TARGET as it comes. Output that begins with MARKER is kept in HELD
    instead (the caller decides once the exit code is known). When TARGET's reader has gone,
    close PIPE: the docker client then meets the closed pipe itself, as it would unrelayed.
    (Closed through its file object, never by its bare fd: the caller's close of it must not
    close that number again, by then maybe another file's.)"""
    source = pipe.fileno()
    start = b""
    deciding = True
    while True:
        try:
            chunk = os.read(source, 1 << 16)
        except OSError:
            return
        if not chunk:
            if deciding and start and not start.startswith(marker):
                _write_all(target, start)
            elif deciding:
                held += start
            return
        if deciding:
            start += chunk
            if len(start) < len(marker) and marker.startswith(start):
                continue  # too short to tell yet
            deciding = False
            if start.startswith(marker):
                held += start
                continue
            chunk = start
        if held:
            held += chunk
            if len(held) <= HOLD_MAX:
                continue
            # Longer than any line of docker's: the command's own output, which may be
            # endless. Pass it on (memory stays bounded) and stop holding.
            chunk = bytes(held)
            held.clear()
        if not _write_all(target, chunk):
            pipe.close()
            return
        if not held:  # decided: the rest goes through the kernel, not through Python
            if not _splice_all(source, target):
                pipe.close()
            return


def _splice_all(source: int, target: int) -> bool:
    """Move SOURCE (a pipe) to TARGET until its end with splice(2), falling back to read and
    write where TARGET cannot take a splice (a terminal); False when TARGET's reader has gone."""
    splice = getattr(os, "splice", None)
    while splice is not None:
        try:
            moved = splice(source, target, 1 << 20)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EAGAIN):
                break  # not spliceable (or a non-blocking target): copy below
            return False  # EPIPE: the reader has gone
        if moved == 0:
            return True
    while True:
        try:
            chunk = os.read(source, 1 << 16)
        except OSError:
            return True
        if not chunk:
            return True
        if not _write_all(target, chunk):
            return False


def _write_all(fd: int, data: bytes) -> bool:
    """Write DATA to FD; False when its reader has gone."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        return False
    return True


def _not_started(code: int, text: bytes, marker: bytes,
                 command: Sequence[str]) -> tuple[int, str] | None:
    """(exit code, message) when TEXT is docker's or the TTL shell's report that COMMAND could
    not be started, following docker's convention: 127 not found, 126 not executable."""
    if code not in (126, 127) or not text.startswith(marker):
        return None
    reason = text.decode("utf-8", errors="replace").strip().lower()
    shown = repr(command[0]) if command else "the command"
    if ("not found" in reason or "no such file" in reason) and "permission denied" not in reason:
        return 127, f"command not found in the sandbox: {shown}"
    if "permission denied" in reason or "is a directory" in reason:
        return 126, f"command not executable in the sandbox: {shown} (permission denied)"
    line = text.decode("utf-8", errors="replace").strip().splitlines()[0]
    return 126, f"could not start {shown} in the sandbox: {line}"


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


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> threading.Thread | None:
    """Write DATA to PROC's stdin from a thread, then close it (EOF for the command). A
    command that stops reading early is not an error: the rest is dropped."""
    pipe = proc.stdin
    if pipe is None:
        return None

    def write() -> None:
        try:
            pipe.write(data)
        except (BrokenPipeError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def _stdin_arg(stdin: bool, data: bytes | None) -> int | None:
    """Popen's stdin: a pipe for DATA, ours when forwarding (the CLI), else /dev/null."""
    if data is not None:
        return subprocess.PIPE
    return None if stdin else subprocess.DEVNULL


def capture(argv: Sequence[str], *, stdin: bool, timeout: float | None, stop: Stop,
            max_capture: int = DEFAULT_MAX_CAPTURE, intercept: Intercept | None = None,
            command: Sequence[str] = (), data: bytes | None = None,
            watch_reader: bool = True) -> ExecResult:
    """Run an attached docker client keeping at most MAX_CAPTURE bytes of each stream.
    DATA (the API's stdin) is fed to the command, then EOF; without it STDIN says whether
    our own stdin is forwarded."""
    began = time.monotonic()
    proc = docker.popen_docker(argv, stdin=_stdin_arg(stdin, data),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if data is not None:
        _feed(proc, data)
    out, err = bytearray(), bytearray()
    out_cut, err_cut = [False], [False]
    readers = [threading.Thread(target=_drain, args=(proc.stdout, max_capture, out, out_cut),
                                daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr, max_capture, err, err_cut),
                                daemon=True)]
    for reader in readers:
        reader.start()
    outcome = _finish(proc, timeout, stop, watch_reader)
    for reader in readers:
        reader.join(timeout=KILL_GRACE_SECONDS)
    result = ExecResult(outcome.code, bytes(out), bytes(err), outcome.timed_out, out_cut[0],
                        err_cut[0], int((time.monotonic() - began) * 1000), outcome.stop_failed)
    if intercept is not None:
        watched = result.stdout if intercept[0] == 1 else result.stderr
        failed = _not_started(result.exit_code, watched, intercept[1], command)
        if failed is not None:  # docker's or the shell's line is ours now, on stderr only
            result.exit_code, result.not_started = failed
            result.stdout, result.stderr = b"", f"{PREFIX}{failed[1]}\n".encode()
    return result


PREFIX = "sandbox: error: "  # as ui.error writes it (ui is not imported on the hot path)


def oom_killed(target: str, since: float) -> bool:
    """True when Docker reported the kernel's OOM killer in container TARGET since SINCE (a
    wall-clock time). On cgroup v1, `.State.OOMKilled` stays false for an exec's process (it
    covers the main process only) and the cgroup's oom_kill count never goes back down, so
    the daemon's `oom` events of the run's window are what tells."""
    argv = docker.oom_events_argv(target, since - 0.05, time.time() + 0.05)
    try:
        proc = docker.run_docker(argv, check=False)
    except SandboxError:
        return False
    return proc.returncode == 0 and "oom" in proc.stdout.split()


Result = TypeVar("Result", Outcome, ExecResult)


class _Target(NamedTuple):
    """Where an exec goes: the container (by id), its user, its memory limit."""

    ref: str
    user: str | None
    memory: str
    host_kill: bool  # may the host end its processes (engine.Engine.host_kill)


def _target(store: StateStore, name: str, command: Sequence[str]) -> _Target:
    """Check COMMAND and that NAME is live; the container to enter, by id: a container of
    the same name from another home is never entered."""
    if not command or not command[0]:
        raise InvalidInput("no command given")
    # By id, not name: a container of the same name from another home is never entered.
    from .sandbox import container_ref, require

    record = require(store, name)  # also points our docker calls at the recorded engine
    if record.options.get("paused") is True:  # pausing.PAUSED_OPTION: no docker call needed
        raise SandboxNotFound(f"paused: `sandbox resume {name}`")
    runtime = record.options.get("runtime")
    host_kill = engine.current().host_kill(runtime if isinstance(runtime, str) else None)
    user = record.user if re.fullmatch(r"\d+:\d+", record.user) else None
    return _Target(container_ref(record), user, str(record.options.get("memory", "")), host_kill)


INHERIT = None  # stdin of _exec: the CLI's own (forwarded when piped), decided by stdin_mode


def _exec(store: StateStore, name: str, command: Sequence[str], env: dict[str, str],
          workdir: str | None, timeout: float | None,
          run: Callable[..., Result], captured: bool, tty: bool | None = None,
          data: bytes | None = INHERIT, own_stdin: bool = True) -> Result:
    """Check NAME is live, then `docker exec` COMMAND, streamed or captured; -e values go
    through a private env file that lives as long as the exec. OWN_STDIN (the CLI): our
    stdin is forwarded when piped and our stdout/stderr watched; otherwise (the API) DATA,
    when given, is the command's whole stdin."""
    target = _target(store, name, command)
    if own_stdin:
        forward, use_tty = stdin_mode(tty)
        if captured:  # no terminal: stdout and stderr must stay apart
            forward, use_tty = forward and not os.isatty(0), False
        extra: dict[str, object] = {}
    else:
        forward, use_tty = data is not None, False
        extra = {"data": data, "watch_reader": False}
    tag = _new_tag()
    began = time.time()
    with docker.env_file(env) as env_path:
        argv = docker.exec_argv(target.ref, command, marker=tag.marker, user=target.user,
                                env_file=env_path, workdir=workdir, stdin=forward, tty=use_tty)
        # With a tty, docker's line shares the terminal with the command's: nothing to move.
        intercept = None if use_tty else (1, OCI_MARKER)
        outcome = run(argv, stdin=forward, timeout=timeout,
                      stop=lambda: kill_in_container(target.ref, tag, target.user,
                                                     target.host_kill),
                      intercept=intercept, command=command, **extra)
    return finish_report(outcome, target.ref, began, target.memory,
                         check=lambda: _require_running(target.ref, name))


def finish_report(outcome: Result, target: str, began: float, memory: str,
                  check: Callable[[], None] | None = None) -> Result:
    """After an exec or run: tell a dead or unreachable sandbox from a failed command (CHECK),
    and learn whether a 137 was the OOM killer."""
    code = outcome.exit_code if isinstance(outcome, ExecResult) else outcome.code
    if (check is not None and code in engine.current().exec_failures()
            and not outcome.not_started):
        check()
    if code == 137 and not outcome.timed_out and oom_killed(target, began):
        if isinstance(outcome, ExecResult):
            outcome.oom_killed, outcome.memory = True, memory
            return outcome
        return outcome._replace(oom_killed=True, memory=memory)
    return outcome


def _require_running(target: str, name: str) -> None:
    """After a failed exec, tell a dead, paused or vanished container, or a daemon we cannot
    reach, from a failed command."""
    proc = docker.run_docker(docker.state_argv(target), check=False)
    status = proc.stdout.strip()
    if proc.returncode != 0:
        failure = docker.classify_failure(proc.args, proc.returncode, proc.stderr)
        if not isinstance(failure, SandboxNotFound):  # unreachable daemon, or another failure
            raise failure
        raise SandboxNotFound(f"sandbox {name!r} has no container any more: "
                              f"`sandbox purge {name}` clears it")
    if status == "paused":  # paused behind our back (`docker pause`): as pausing.paused_message
        raise SandboxNotFound(f"paused: `sandbox resume {name}`")
    if status != "running":
        raise SandboxNotFound(f"sandbox {name!r} is {status}, not running")


def exec_streaming(store: StateStore, name: str, command: Sequence[str], *,
                   env: dict[str, str] | None = None, workdir: str | None = None,
                   timeout: float | None = None, tty: bool | None = None) -> Outcome:
    """`sandbox exec`: run COMMAND in NAME, streamed. TTY: -t / -T, None to decide."""
    return _exec(store, name, command, env or {}, workdir, timeout, stream, captured=False,
                 tty=tty)


def exec_captured(store: StateStore, name: str, command: Sequence[str], *,
                  env: dict[str, str] | None = None, workdir: str | None = None,
                  timeout: float | None = None) -> ExecResult:
    """`sandbox exec --json`: run COMMAND in NAME with bounded capture."""
    return _exec(store, name, command, env or {}, workdir, timeout, capture, captured=True)


def exec_input(store: StateStore, name: str, command: Sequence[str], *,
               data: bytes | None = None, env: dict[str, str] | None = None,
               workdir: str | None = None, timeout: float | None = None,
               max_capture: int = DEFAULT_MAX_CAPTURE) -> ExecResult:
    """The API's exec: COMMAND in NAME with DATA (or nothing) as its stdin, never ours, and
    at most MAX_CAPTURE bytes kept of each stream."""
    def run(argv: Sequence[str], **kwargs: object) -> ExecResult:
        return capture(argv, max_capture=max_capture, **kwargs)  # type: ignore[arg-type]

    return _exec(store, name, command, env or {}, workdir, timeout, run, captured=True,
                 data=data, own_stdin=False)


def exec_chunks(store: StateStore, name: str, command: Sequence[str], *,
                data: bytes | None = None, env: dict[str, str] | None = None,
                workdir: str | None = None, timeout: float | None = None) -> ChunkStream:
    """The API's streaming exec: a ChunkStream of (stream, bytes) as the command writes."""
    target = _target(store, name, command)
    tag = _new_tag()
    began = time.time()
    files = contextlib.ExitStack()
    try:
        env_path = files.enter_context(docker.env_file(env or {}))
        argv = docker.exec_argv(target.ref, command, marker=tag.marker, user=target.user,
                                env_file=env_path, workdir=workdir, stdin=data is not None)

        def done(outcome: Outcome) -> Outcome:
            files.close()
            return finish_report(outcome, target.ref, began, target.memory,
                                 check=lambda: _require_running(target.ref, name))

        # The kill runs on the waiter thread and the report when the caller has read it all,
        # maybe after the API call returned: both go to this sandbox's engine.
        return ChunkStream(argv, data=data, timeout=timeout,
                           stop=engine.carry(lambda: kill_in_container(
                               target.ref, tag, target.user, target.host_kill)),
                           command=command, done=engine.carry(done))
    except BaseException:
        files.close()
        raise


CHUNK_QUEUE = 16  # chunks of at most 64 KiB waiting for the consumer: memory stays ~1 MiB


class ChunkStream:
    """An exec's output as it comes: iterate for ("stdout" | "stderr", bytes) chunks, then
    read .outcome. A consumer that stops reading holds the command up (the pipes fill), so
    memory stays bounded; the timeout still ends it. close() (or leaving `with`) before the
    end stops the command inside the container."""

    def __init__(self, argv: Sequence[str], *, data: bytes | None, timeout: float | None,
                 stop: Stop, command: Sequence[str],
                 done: Callable[[Outcome], Outcome]) -> None:
        import queue

        self._queue: queue.Queue[tuple[str, bytes | None]] = queue.Queue(CHUNK_QUEUE)
        self._stop, self._command, self._done = stop, command, done
        self._ended: set[str] = set()
        self._held = bytearray()  # stdout's start while it may be docker's "cannot start"
        self._deciding = True
        self.outcome: Outcome | None = None
        self._proc = docker.popen_docker(argv, stdin=_stdin_arg(False, data),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if data is not None:
            _feed(self._proc, data)
        self._threads = [threading.Thread(target=self._read, args=(label, pipe), daemon=True)
                         for label, pipe in (("stdout", self._proc.stdout),
                                             ("stderr", self._proc.stderr))]
        self._waited: list[Outcome] = []
        self._waiter = threading.Thread(target=self._wait, args=(timeout,), daemon=True)
        for thread in (*self._threads, self._waiter):
            thread.start()

    def _read(self, label: str, pipe: object) -> None:
        read = pipe.read1  # type: ignore[attr-defined]
        try:
            while True:
                chunk = read(1 << 16)
                if not chunk:
                    break
                self._queue.put((label, chunk))
        except (OSError, ValueError):
            pass
        self._queue.put((label, None))

    def _wait(self, timeout: float | None) -> None:
        self._waited.append(_finish(self._proc, timeout, self._stop, watch_reader=False))

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        while len(self._ended) < 2:
            label, chunk = self._queue.get()
            if chunk is None:
                self._ended.add(label)
                continue
            if label == "stdout" and self._deciding:
                self._held += chunk
                if len(self._held) <= HOLD_MAX and (
                        self._held.startswith(OCI_MARKER) or OCI_MARKER.startswith(self._held)):
                    continue  # may be docker's line: decided by the exit code
                self._deciding = False
                chunk, self._held = bytes(self._held), bytearray()
            yield label, chunk
        self._finish_up()
        if self._held:
            yield "stdout", bytes(self._held)
            self._held.clear()

    def _finish_up(self) -> None:
        if self.outcome is not None:
            return
        self._waiter.join()
        outcome = self._waited[0] if self._waited else Outcome(1)
        failed = _not_started(outcome.code, bytes(self._held), OCI_MARKER, self._command)
        if failed is not None:
            self._held.clear()
            outcome = outcome._replace(code=failed[0], not_started=failed[1])
        self.outcome = self._done(outcome)

    def close(self) -> Outcome:
        """Stop the command if it still runs, drain what is left, and return how it ended."""
        if self.outcome is None:
            if self._proc.poll() is None and self._waiter.is_alive():
                self._stop()
            while len(self._ended) < 2:  # unblock the readers
                label, chunk = self._queue.get()
                if chunk is None:
                    self._ended.add(label)
            self._finish_up()
        assert self.outcome is not None
        return self.outcome

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
