"""A command killed for memory is said to be, on stderr and in --json; a plain SIGKILL is not."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.conftest import PYTHON_IMAGE, Runner

HOG = ["python3", "-c", "x = bytearray(256 << 20)"]


def test_exec_says_out_of_memory_and_only_then(start_box: Callable[..., str],
                                               sandbox: Runner) -> None:
    name = start_box("--memory", "32m", image=PYTHON_IMAGE)
    proc = sandbox("exec", name, *HOG, timeout=60)
    assert proc.returncode == 137
    assert proc.stderr.decode().splitlines()[-1] == "sandbox: killed: out of memory (limit 32m)"
    result = json.loads(sandbox("exec", "--json", name, *HOG, timeout=60).stdout)
    assert result["exitCode"] == 137 and result["oomKilled"] is True
    # not sticky: a later SIGKILL in the same sandbox is not an OOM kill
    killed = sandbox("exec", name, "sh", "-c", "kill -9 $$", timeout=60)
    assert killed.returncode == 137 and b"out of memory" not in killed.stderr
    result = json.loads(sandbox("exec", "--json", name, "sh", "-c", "kill -9 $$").stdout)
    assert result["exitCode"] == 137 and result["oomKilled"] is False
    fine = json.loads(sandbox("exec", "--json", name, "true").stdout)
    assert fine["oomKilled"] is False


def test_run_says_out_of_memory(docker_engine: None, sandbox: Runner) -> None:
    proc = sandbox("run", "--memory", "32m", "--image", PYTHON_IMAGE, "--", *HOG, timeout=90)
    assert proc.returncode == 137
    assert b"sandbox: killed: out of memory (limit 32m)\n" in proc.stderr
    proc = sandbox("run", "--json", "--memory", "32m", "--image", PYTHON_IMAGE, "--", *HOG,
                   timeout=90)
    result = json.loads(proc.stdout)
    assert proc.returncode == 137 and result["oomKilled"] is True
