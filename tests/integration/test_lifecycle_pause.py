"""pause / resume: a paused sandbox burns no CPU, refuses exec (exit 3, the exact line), keeps
its files reachable, and still expires by the wall clock (sweep removes its container)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from sandbox_cli import hostkill
from tests.conftest import Runner, docker_inspect


def _cpu_ns(cid: str) -> int:
    """The container's CPU use so far (ns), from its cgroup: cpuacct (v1) or cpu.stat (v2)."""
    for folder in hostkill.cgroup_dirs(cid):
        usage = os.path.join(folder, "cpuacct.usage")
        if os.path.isfile(usage):
            return int(Path(usage).read_text())
        stat = os.path.join(folder, "cpu.stat")
        if os.path.isfile(stat) and "cpuacct" not in folder:
            for line in Path(stat).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
    raise AssertionError(f"no CPU accounting found for {cid}")


def _cpu_over_a_second(cid: str) -> float:
    before = _cpu_ns(cid)
    time.sleep(1.0)
    return (_cpu_ns(cid) - before) / 1e9


def test_paused_sandbox_uses_no_cpu_refuses_exec_and_keeps_its_files(
        start_box: Callable[..., str], sandbox: Runner) -> None:
    name = start_box()
    cid = docker_inspect(name, "{{.Id}}")
    sandbox("exec", "--detach", name, "sh", "-c", "while :; do :; done", check=True)
    assert _cpu_over_a_second(cid) > 0.1  # the loop burns CPU (bounded in ticks, not time)

    assert sandbox("pause", name, check=True).returncode == 0
    assert docker_inspect(name, "{{.State.Status}}") == "paused"
    assert _cpu_over_a_second(cid) < 0.02  # frozen: (almost) no CPU at all

    refused = sandbox("exec", name, "true", timeout=30)
    assert refused.returncode == 3
    assert refused.stderr.decode() == f"sandbox: error: paused: `sandbox resume {name}`\n"
    assert sandbox("exec", "--detach", name, "true").returncode == 3
    rows = json.loads(sandbox("ls", "--json", check=True).stdout)
    assert [r["status"] for r in rows if r["name"] == name] == ["paused"]
    # the files are on the host: write and read need no running container
    sandbox("write", name, "note.txt", "kept", check=True)
    assert sandbox("read", name, "note.txt", check=True).stdout == b"kept"
    assert b"already" in sandbox("pause", name, check=True).stderr

    sandbox("resume", name, check=True)
    assert sandbox("exec", name, "cat", "note.txt", check=True).stdout == b"kept"
    assert _cpu_over_a_second(cid) > 0.1  # the loop runs again
    assert b"was not paused" in sandbox("resume", name, check=True).stderr


def test_exec_on_a_container_paused_behind_our_back_says_the_same(
        start_box: Callable[..., str], sandbox: Runner) -> None:
    name = start_box()
    subprocess.run(["docker", "pause", name], check=True, timeout=30)
    try:
        refused = sandbox("exec", "--json", name, "true", timeout=30)
        assert refused.returncode == 3
        assert f"paused: `sandbox resume {name}`" in refused.stderr.decode()
    finally:
        subprocess.run(["docker", "unpause", name], timeout=30)


def test_a_paused_sandbox_still_expires_and_sweep_removes_its_container(
        docker_engine: None, sandbox: Runner, home: Path) -> None:
    name = "t-pz-" + os.urandom(4).hex()
    sandbox("start", "--name", name, "--ttl", "2s", "--image",
            "sandbox-test/busybox:latest", check=True)
    try:
        cid = docker_inspect(name, "{{.Id}}")
        sandbox("pause", name, check=True)
        time.sleep(8)  # past the TTL and its grace: the frozen sleep cannot end by itself
        assert docker_inspect(cid, "{{.State.Status}}") == "paused"  # Docker keeps it
        rows = json.loads(sandbox("ls", "--json", check=True).stdout)
        assert [r["status"] for r in rows if r["name"] == name] == ["expired"]
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"id={cid}"],
                              capture_output=True, text=True, timeout=30).stdout
        assert left.strip() == ""  # ls's sweep removed the paused container
        assert sandbox("resume", name).returncode == 3  # expired: nothing to resume
    finally:
        sandbox("purge", name)
