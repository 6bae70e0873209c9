"""Ending a container's processes from the host, through its cgroup: for a local engine only.

A process in the container can freeze (SIGSTOP) every process of its own uid, including any
helper `sandbox` would start in the container, and a `docker exec` frozen inside `runc init`
wedges the engine (dockerd holds the container's lock: inspect, kill and rm hang). Nothing in
the container can signal a process of the host's root, so on a local engine the host does the
work itself: it finds the container's processes in its cgroup and signals them directly.

Only the standard library; imported only when a timeout, a Ctrl-C or a wedged purge needs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterable

_CGROUP_ROOT = "/sys/fs/cgroup"
_EXEC_MARKER = b"SANDBOX_EXEC_ID="


def cgroup_dirs(container_id: str) -> list[str]:
    """The container's cgroup folders on this host (cgroup v1 hierarchies, or the v2 one),
    for Docker's cgroupfs and systemd drivers. Empty when the container does not run on this
    kernel (a remote engine, gVisor) or the id is not a full one."""
    if not re.fullmatch(r"[0-9a-f]{64}", container_id):
        return []
    leaves = (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope")
    found = []
    for leaf in leaves:
        for base in (_CGROUP_ROOT, *_v1_hierarchies()):
            path = os.path.join(base, leaf)
            if os.path.isfile(os.path.join(path, "cgroup.procs")):
                found.append(path)
    return found


def _v1_hierarchies() -> list[str]:
    try:
        return [entry.path for entry in os.scandir(_CGROUP_ROOT)
                if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def cgroup_pids(dirs: Iterable[str]) -> set[int]:
    """Every process (and thread group) listed in DIRS."""
    pids: set[int] = set()
    for folder in dirs:
        for name in ("cgroup.procs", "tasks"):
            try:
                with open(os.path.join(folder, name), "rb") as handle:
                    pids.update(int(line) for line in handle.read().split() if line.isdigit())
            except OSError:
                continue
    return pids


def kill_container(container_id: str, *, deadline: float = 10.0) -> bool | None:
    """SIGKILL every process of the container (its init too, so the container ends), until
    its cgroup is empty. None: no cgroup of it here (nothing we can do from this host);
    False: not permitted, or still not empty at DEADLINE seconds; True: emptied."""
    dirs = cgroup_dirs(container_id)
    if not dirs:
        return None
    for folder in dirs:  # cgroup v2 (Linux 5.14+): the kernel kills the whole tree at once
        kill_file = os.path.join(folder, "cgroup.kill")
        if os.path.exists(kill_file):
            try:
                with open(kill_file, "w") as handle:
                    handle.write("1")
            except OSError:
                pass
    end = time.monotonic() + deadline
    while True:
        pids = cgroup_pids(dirs)
        if not pids:
            return True
        for pid in pids:  # a stopped task dies on SIGKILL too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            except PermissionError:
                return False
        if time.monotonic() > end:
            return False
        time.sleep(0.02)


class _Proc:
    """What the selection needs of one process, read from the host's /proc."""

    __slots__ = ("ns_pid", "pid", "ppid", "sid", "started", "state")

    def __init__(self, pid: int, state: bytes, ppid: int, sid: int, started: int,
                 ns_pid: int) -> None:
        self.pid, self.state, self.ppid, self.sid = pid, state, ppid, sid
        self.started, self.ns_pid = started, ns_pid

    @property
    def alive(self) -> bool:
        """False for a zombie (dead, not yet reaped): nothing to signal any more."""
        return self.state not in (b"Z", b"X", b"x")


def _read_proc(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        with open(f"/proc/{pid}/status", "rb") as handle:
            status = handle.read()
        fields = stat[stat.rfind(b")") + 2:].split()  # after "(comm) ", which may hold spaces
        match = re.search(rb"^NSpid:[ \t]*(.*)$", status, re.MULTILINE)
        ns_pids = match.group(1).split() if match else []
        # fields[0] is the state (field 3 of stat): ppid is field 4, session 6, starttime 22.
        return _Proc(pid, fields[0], int(fields[1]), int(fields[3]), int(fields[19]),
                     int(ns_pids[-1]) if ns_pids else pid)
    except (OSError, ValueError, IndexError):
        return None


def _has_marker(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            env = handle.read(1 << 20)
    except OSError:
        return False
    return _EXEC_MARKER + marker.encode() in env.split(b"\0")


def _live(dirs: list[str]) -> dict[int, _Proc]:
    """The container's processes that are not zombies, by host pid."""
    procs = {}
    for pid in cgroup_pids(dirs):
        proc = _read_proc(pid)
        if proc is not None and proc.alive:
            procs[pid] = proc
    return procs


def _keeper(procs: dict[int, _Proc]) -> int | None:
    """The host pid of the container's main process (init's first child: the sandbox's
    sleep), which keeps the container alive and is never an exec's. It may begin after an
    exec that follows its start closely (init forks it a moment after `docker run` returns),
    so its start time alone would not spare it; nothing the code starts can be older."""
    inits = {pid for pid, proc in procs.items() if proc.ns_pid == 1}
    children = [proc for proc in procs.values() if proc.ppid in inits]
    return min(children, key=lambda proc: (proc.started, proc.ns_pid)).pid if children else None


def end_exec(container_id: str, marker: str, since_ticks: int, *,
             deadline: float = 10.0) -> bool | None:
    """The host-side twin of docker.KILL_SCRIPT: freeze (SIGSTOP) then SIGKILL every process
    of the container that carries MARKER, shares a session with or descends from one taken,
    or began at or after SINCE_TICKS (this kernel's clock ticks since boot: the container runs
    on it, so the client's clock is the container's). Never the container's init, nor its
    session, nor its main process (_keeper). Repeated until a pass finds nothing. None: not
    a container of this host; False: not permitted, or not done by DEADLINE seconds; True:
    done."""
    dirs = cgroup_dirs(container_id)
    if not dirs:
        return None
    end = time.monotonic() + deadline
    taken: set[int] = set()
    sessions: set[int] = set()
    while time.monotonic() < end:
        procs = _live(dirs)
        spared_sessions = {0, *(pid for pid, proc in procs.items() if proc.ns_pid == 1)}
        keeper = _keeper(procs)
        found = False
        for pid, proc in sorted(procs.items()):
            if pid in taken or proc.ns_pid == 1 or pid == keeper:
                continue
            if not (proc.ppid in taken or proc.sid in sessions or proc.started >= since_ticks
                    or _has_marker(pid, marker)):
                continue
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            except PermissionError:
                return False
            taken.add(pid)
            found = True
            if proc.sid not in spared_sessions:
                sessions.add(proc.sid)
        if found:
            continue  # a stopped task forks no more, but one mid-fork may have left a child
        # A quiet pass: everything chosen is stopped. Kill it, then look again from scratch.
        survivors = [pid for pid in taken if pid in procs]
        if not survivors:
            return True
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        taken.clear()
        _wait_gone(dirs, survivors, end)
    return False


def _wait_gone(dirs: list[str], pids: list[int], end: float) -> None:
    """Wait (until END) for PIDS to die, so that the next pass does not take them again."""
    while time.monotonic() < end and set(pids) & set(_live(dirs)):
        time.sleep(0.01)
