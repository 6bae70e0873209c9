"""`run` has a lifetime: a client killed with SIGKILL strands nothing past --ttl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import BUSYBOX_IMAGE, CLI, PYTHON_IMAGE, Runner


def _ids(name: str) -> str:
    return subprocess.run(["docker", "ps", "-aq", "--filter", f"name=^{name}$"],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def test_a_sigkilled_run_is_gone_after_its_ttl(docker_engine: None, home: Path,
                                               sandbox: Runner) -> None:
    name = "t-run-" + os.urandom(4).hex()
    proc = subprocess.Popen([*CLI, "run", "--name", name, "--ttl", "4s", "--image",
                             BUSYBOX_IMAGE, "--", "sleep", "300"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not subprocess.run(["docker", "ps", "-q", "--filter", f"name=^{name}$"],
                                 capture_output=True, text=True, timeout=30).stdout.strip():
            assert time.monotonic() < deadline, "the run's container never started"
            time.sleep(0.2)
        (row,) = json.loads(sandbox("ls", "--json", check=True).stdout)
        assert row["name"] == name and row["expires_at"]  # not `-`
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 40
        while _ids(name) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ids(name) == "", "the container outlived its --ttl"
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        sandbox("purge", name)


def test_run_ttl_keeps_the_command_as_it_was(docker_engine: None, sandbox: Runner) -> None:
    """Behind the TTL sleeper: exit code, stdin, argv and the working folder are unchanged."""
    proc = sandbox("run", "--image", PYTHON_IMAGE, "--", "python3", "-c",
                   "import sys, os; print(sys.stdin.read().upper(), sys.argv[1:], os.getcwd());"
                   " sys.exit(7)", "a b", "--x", input=b"piped")
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == b"PIPED ['a b', '--x'] /app\n"
    ended = sandbox("run", "--ttl", "2s", "--image", BUSYBOX_IMAGE, "--", "sleep", "60",
                    timeout=60)
    assert ended.returncode == 137
    assert sandbox("run", "--ttl", "abc", "--image", BUSYBOX_IMAGE, "--", "true").returncode == 2
