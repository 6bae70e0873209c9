"""The container fights its timeout and wedges the engine (issue 9), and the exec timeout's
cut-off on the container's own clock (issue 10).

A process looping `kill(-1, SIGSTOP)` freezes every process of its uid, including any helper
started inside as that uid; a `docker exec` frozen in `runc init` wedges dockerd on the
container (inspect, kill and rm hang). Every test here is bounded, and the `reaper` fixture
kills what a test wedged on purpose, from the host through the container's cgroup."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox_cli import execute, hostkill
from tests.conftest import BUSYBOX_IMAGE, Runner

USER_LABEL = '{{index .Config.Labels "sandbox-cli.user"}}'


def sandbox_user(ref: str) -> str:
    """The uid:gid a sandbox's code runs as (each sandbox has its own), from its label."""
    return subprocess.run(["docker", "inspect", "-f", USER_LABEL, ref], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()


STORM_SH = "while :; do kill -STOP -1; done"  # busybox sh: its builtin kill, no fork a loop
STORM_PY = "import os\nwhile True:\n    os.kill(-1, 19)\n"
BOUND = 15.0  # "the timeout plus a few seconds", generous for a loaded 2-core machine


def container_id(name: str) -> str:
    """NAME's full container id, from `docker ps` (which a wedged container does not block)."""
    out = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter",
                          f"label=sandbox-cli.name={name}"], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    assert len(out) == 1, f"expected one container for {name}, got {out}"
    return out[0]


def processes(cid: str) -> list[tuple[int, str, str]]:
    """(host pid, state, command line) of every live process in the container's cgroup."""
    found = []
    for pid in sorted(hostkill.cgroup_pids(hostkill.cgroup_dirs(cid))):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append((pid, state, cmd.strip()))
    return found


def assert_only_main_left(cid: str, settle: float = 10.0) -> None:
    """Nothing but the container's init and its main sleep: everything the exec began is
    gone, and the sandbox itself lives on. A process SIGKILLed a moment ago may still be
    exiting (its memory released, so an empty command line, not yet a zombie): allow it
    SETTLE seconds to go; one that is still there then fails the test."""
    begun = ("sleep 99", "sleep 1000", "-c", "runc")  # what the tests' execs start
    deadline = time.monotonic() + settle
    while True:
        left = [cmd for _, _, cmd in processes(cid)]
        if len(left) == 2 and not any(w in cmd for w in begun for cmd in left):
            return
        assert time.monotonic() < deadline, left
        time.sleep(0.1)


def engine_answers(cid: str) -> bool:
    """True when `docker inspect` of the container answers within 10 s (not wedged)."""
    try:
        subprocess.run(["docker", "inspect", "--format", "{{.State.Status}}", cid],
                       capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return False
    return True


@pytest.fixture
def reaper() -> Iterator[Callable[[str], str]]:
    """Register sandboxes by name; at teardown their containers are killed through their
    cgroups (as root, from the host: a wedged engine cannot stop that) and removed."""
    ids: list[str] = []

    def register(name: str) -> str:
        cid = container_id(name)
        ids.append(cid)
        return cid

    yield register
    for cid in ids:
        hostkill.kill_container(cid, deadline=10)
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)


def timed(sandbox: Runner, *args: str, env: dict[str, str] | None = None,
          limit: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    proc = sandbox(*args, env=env, timeout=limit)
    return proc, time.monotonic() - began


# --- 1. exec --timeout under a stop storm --------------------------------------------------

def test_stop_storm_cannot_defeat_exec_timeout(box: str, sandbox: Runner,
                                               reaper: Callable[[str], str]) -> None:
    cid = reaper(box)
    script = f"sleep 1000 & setsid sleep 999 & env -i sleep 998 & {STORM_SH}"
    proc, took = timed(sandbox, "exec", "--timeout", "3", box, "sh", "-c", script)
    assert proc.returncode == 124, proc.stderr
    assert took < 3 + BOUND, f"exec --timeout 3 took {took:.1f} s under a stop storm"
    assert_only_main_left(cid)
    assert engine_answers(cid)
    assert sandbox("exec", box, "echo", "alive", timeout=60).stdout == b"alive\n"


def test_python_stop_storm_cannot_defeat_exec_timeout(pybox: str, sandbox: Runner,
                                                      reaper: Callable[[str], str]) -> None:
    cid = reaper(pybox)
    code = "import subprocess\nsubprocess.Popen(['setsid', 'sleep', '997'])\n" + STORM_PY
    proc, took = timed(sandbox, "exec", "--timeout", "3", pybox, "python3", "-c", code)
    assert proc.returncode == 124, proc.stderr
    assert took < 3 + BOUND, f"exec --timeout 3 took {took:.1f} s under a stop storm"
    assert_only_main_left(cid)


def test_stop_storm_without_the_host_kill_ends_the_container(
        box: str, sandbox: Runner, reaper: Callable[[str], str]) -> None:
    """Where the host cannot reach the container (remote engine, not root), the helper inside
    is frozen: past its deadline the container is killed; nothing the command began lives."""
    cid = reaper(box)
    proc, took = timed(sandbox, "exec", "--timeout", "2", box, "sh", "-c",
                       f"setsid sleep 999 & {STORM_SH}", env={"SANDBOX_KILL_FROM_HOST": "0"})
    assert proc.returncode == 124, proc.stderr
    assert took < 2 + 2 * BOUND + 5, f"took {took:.1f} s"
    # Either the container was killed, or (engine wedged by the frozen helper) exec said so.
    assert not processes(cid) or b"could not stop" in proc.stderr, processes(cid)


# --- issue 10: "after" on the container's own clock ----------------------------------------

def test_in_container_kill_ignores_the_client_clock(box: str, sandbox: Runner,
                                                    reaper: Callable[[str], str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-container kill gets a duration, never our boot clock: with a client clock far
    ahead (the old cut-off spared an orphan) or far behind (it killed the main process), the
    orphan the exec began dies and the sandbox lives."""
    cid = reaper(box)
    monkeypatch.setenv("SANDBOX_KILL_FROM_HOST", "0")
    user = sandbox("exec", box, "sh", "-c", 'echo "$(id -u):$(id -g)"',
                   check=True).stdout.decode().strip()
    for wrong_ticks in (10**12, 0):
        tag = execute.ExecTag(os.urandom(8).hex(), wrong_ticks, time.monotonic())
        sandbox("exec", box, "sh", "-c", "env -i setsid sleep 996 >/dev/null 2>&1 &",
                check=True, timeout=60)
        assert any("996" in cmd for _, _, cmd in processes(cid))
        assert execute.kill_in_container(cid, tag, user)
        assert_only_main_left(cid)


# --- 2. a wedged engine: purge still removes the container --------------------------------

def test_purge_removes_a_wedged_container(box: str, sandbox: Runner,
                                          reaper: Callable[[str], str]) -> None:
    cid = reaper(box)
    # As the sandbox user, as the code runs (the main process is root, out of its reach).
    user = sandbox_user(cid)
    subprocess.run(["docker", "exec", "-d", "--user", user, cid, "sh", "-c", STORM_SH],
                   check=True,
                   capture_output=True, timeout=60)
    frozen = subprocess.Popen(["docker", "exec", "--user", user, cid, "true"],
                              stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        while not any(cmd == "runc init" and state == "T" for _, state, cmd in processes(cid)):
            assert time.monotonic() < end, f"the exec was not frozen: {processes(cid)}"
            time.sleep(0.1)
        assert not engine_answers(cid), "the engine should be wedged on the container"
        proc, took = timed(sandbox, "purge", box)
        assert proc.returncode == 0, proc.stderr
        assert took < 60, f"purge took {took:.1f} s"
        listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"id={cid}"],
                                capture_output=True, text=True, timeout=30).stdout
        assert not listed.strip()
    finally:
        frozen.kill()
        frozen.wait(timeout=30)


# --- 3. run --timeout under a stop storm ---------------------------------------------------

def test_stop_storm_cannot_defeat_run_timeout(docker_engine: None, sandbox: Runner) -> None:
    name = "t-" + uuid.uuid4().hex[:10]
    try:
        proc, took = timed(sandbox, "run", "--name", name, "--image", BUSYBOX_IMAGE,
                           "--timeout", "3", "sh", "-c", f"setsid sleep 999 & {STORM_SH}")
        assert proc.returncode == 124, proc.stderr
        assert took < 3 + BOUND, f"run --timeout 3 took {took:.1f} s under a stop storm"
        left = subprocess.run(["docker", "ps", "-aq", "--filter",
                               f"label=sandbox-cli.name={name}"],
                              capture_output=True, text=True, timeout=30).stdout
        assert not left.strip()
    finally:
        ids = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter",
                              f"label=sandbox-cli.name={name}"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        for cid in ids:
            hostkill.kill_container(cid)
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)
