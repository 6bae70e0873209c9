"""An expired sandbox: said, not silently deleted; its files outlive its container for a day;
commands about one sandbox never sweep (or wait on) the others."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.conftest import BUSYBOX_IMAGE, DOCKER, Runner


def _expire(home: Path, name: str, seconds_ago: int) -> None:
    """Move NAME's expiry into the past in the state file (as time passing would)."""
    path = home / "state.json"
    state = json.loads(path.read_text())
    when = time.gmtime(time.time() - seconds_ago)
    state["sandboxes"][name]["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", when)
    path.write_text(json.dumps(state))


def _start(sandbox: Runner, name: str) -> None:
    sandbox("start", "--name", name, "--image", BUSYBOX_IMAGE, check=True)


def _docker_shim(tmp_path: Path, hang_on: str) -> dict[str, str]:
    """SANDBOX_DOCKER: the real docker, except that `docker HANG_ON ...` hangs (a wedged
    engine call), or fails at once when HANG_ON is prefixed with 'fail:'."""
    script = tmp_path / "docker-shim"
    fail = hang_on.startswith("fail:")
    verb = hang_on.removeprefix("fail:")
    action = 'echo "Error response from daemon: wedged" >&2; exit 1' if fail else "sleep 60"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "{verb}" ]; then {action}; fi\n'
                      f'exec docker "$@"\n')
    script.chmod(0o755)
    return {"SANDBOX_DOCKER": str(script)}


def test_expired_sandbox_is_shown_kept_readable_then_removed_with_a_line(
        docker_engine: None, sandbox: Runner, home: Path) -> None:
    name = "t-exp-" + os.urandom(4).hex()
    _start(sandbox, name)
    try:
        sandbox("exec", name, "sh", "-c", "echo result > out.txt; echo more > b.txt",
                check=True)
        _expire(home, name, 60)
        listed = json.loads(sandbox("ls", "--json", check=True).stdout)
        (row,) = [r for r in listed if r["name"] == name]
        assert row["status"] == "expired" and row["files_until"]
        # Within the day after expiry: the container goes, the files stay readable.
        assert sandbox("read", name, "out.txt", check=True).stdout == b"result\n"
        refused = sandbox("exec", name, "true")
        assert refused.returncode == 3 and b"expired" in refused.stderr
        assert b"sandbox read" in refused.stderr
        assert sandbox("write", name, "x", "y").returncode == 3
        gone = subprocess.run(["docker", "ps", "-aq", "--filter", f"name=^{name}$"],
                              capture_output=True, text=True, timeout=30).stdout
        assert gone.strip() == ""
        # Past it: the next ls removes the folder and says so, in one line.
        _expire(home, name, 25 * 3600)
        proc = sandbox("ls", check=True)
        assert proc.stderr.decode() == \
            f"sandbox: expired {name} removed (its folder, 2 files, 12 B)\n"
        assert not (home / "volumes" / name).exists()
        assert sandbox("read", name, "out.txt").returncode == 3
    finally:
        sandbox("purge", name)


def test_a_wedged_expired_sandbox_never_blocks_another(
        docker_engine: None, sandbox: Runner, home: Path, tmp_path: Path) -> None:
    healthy, stuck = "t-ok-" + os.urandom(4).hex(), "t-stuck-" + os.urandom(4).hex()
    _start(sandbox, healthy)
    _start(sandbox, stuck)
    try:
        sandbox("write", healthy, "f.txt", "hello", check=True)
        _expire(home, stuck, 60)
        hang = _docker_shim(tmp_path, "rm")  # removing the expired container would hang
        started = time.monotonic()
        assert sandbox("read", healthy, "f.txt", env=hang, timeout=20,
                       check=True).stdout == b"hello"
        assert sandbox("exec", healthy, "cat", "f.txt", env=hang, timeout=20,
                       check=True).stdout == b"hello"
        sandbox("write", healthy, "g.txt", "x", env=hang, timeout=20, check=True)
        assert time.monotonic() - started < 20
        # A sweep that fails is reported, and ls goes on.
        fail = _docker_shim(tmp_path, "fail:rm")
        proc = sandbox("ls", "--json", env=fail, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert {r["name"] for r in json.loads(proc.stdout)} >= {healthy, stuck}
        assert b"could not end the containers of expired " + stuck.encode() in proc.stderr
        assert sandbox("start", "--image", BUSYBOX_IMAGE, "--name", healthy + "x", env=fail,
                       timeout=60).returncode == 0
    finally:
        # The sandbox started through the shim recorded it as its engine's client: make the
        # shim pass everything through again, so that the purge removes its container.
        _docker_shim(tmp_path, "no-such-verb")
        sandbox("purge", healthy, stuck, healthy + "x", timeout=120)
    left = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"name={healthy}"],
                          capture_output=True, text=True, timeout=30).stdout
    assert not left.strip(), left  # nothing of the test's own left running
