"""exec's stdout relay (execute.stream): it holds docker's "could not start" line, then hands
the stream to splice(2) through a 1 MiB pipe, so a flood wakes it rarely."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time

from tests.conftest import CLI, Runner


def _docker_child(parent: int) -> int | None:
    """The pid of PARENT's child process named docker, if there is one yet."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        if int(stat[stat.rindex(")") + 2:].split()[1]) == parent and comm == "docker":
            return int(entry)
    return None


def _pipe_size(pid: int, fd: int) -> int | None:
    """The capacity of the pipe on PID's FD (opened again through /proc), or None."""
    try:
        handle = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return fcntl.fcntl(handle, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(handle)


def test_the_relay_pipe_holds_a_mebibyte(box: str, sandbox: Runner) -> None:
    proc = subprocess.Popen([*CLI, "exec", box, "sleep", "5"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        size = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and size != 1 << 20:
            child = _docker_child(proc.pid)
            size = _pipe_size(child, 1) if child else None
            time.sleep(0.05)
        assert size == 1 << 20
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_relayed_output_arrives_whole_and_in_order(box: str, sandbox: Runner) -> None:
    script = "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i + 1)); done"
    proc = sandbox("exec", box, "sh", "-c", script, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"".join(f"line-{i}\n".encode() for i in range(20000))
