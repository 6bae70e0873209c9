"""A daemon we cannot reach is exit 5 with the reason on every command, never advice that
would destroy a live sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, Runner

GONE = {"DOCKER_HOST": "unix:///nonexistent"}


def _record_engine_host(home: Path, box: str, host: str) -> None:
    """Commands about one sandbox use the engine its state entry recorded, whatever
    DOCKER_HOST says now (engine.py): make that recorded engine the unreachable one."""
    path = home / "state.json"
    data = json.loads(path.read_text())
    data["sandboxes"][box]["options"]["engine_host"] = host
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("args", [
    ("exec", "{box}", "true"),
    ("exec", "--json", "{box}", "true"),
    ("exec", "{box}", "sh", "-c", "exit 1"),
    ("run", "--image", BUSYBOX_IMAGE, "--", "true"),
    ("run", "--json", "--image", BUSYBOX_IMAGE, "--", "true"),
    ("start", "--image", BUSYBOX_IMAGE),
    ("ls",),
    ("ls", "--json"),
    ("purge", "{box}"),
    ("purge",),
    ("disconnect", "{box}"),
])
def test_unreachable_daemon_is_exit_5(box: str, sandbox: Runner, home: Path,
                                      args: tuple[str, ...]) -> None:
    recorded = args[0] in ("exec", "disconnect")
    if recorded:
        _record_engine_host(home, box, GONE["DOCKER_HOST"])
    proc = sandbox(*(a.format(box=box) for a in args), env=GONE, timeout=60)
    if recorded:
        _record_engine_host(home, box, "")
    err = proc.stderr.decode()
    assert proc.returncode == 5, err
    assert proc.stdout == b""
    ours = [line for line in err.splitlines() if line.startswith("sandbox:")]
    assert ours == ["sandbox: error: cannot reach the Docker daemon at unix:///nonexistent: is "
                    "it running, and is DOCKER_HOST right? (try `sandbox doctor`)"], err
    assert "purge" not in err
    # the sandbox is untouched and still works once the daemon is reachable again
    assert sandbox("exec", box, "true").returncode == 0


def test_doctor_reports_the_unreachable_daemon_as_a_failed_check(sandbox: Runner) -> None:
    proc = sandbox("doctor", env=GONE, timeout=60)
    out = proc.stdout.decode()
    assert proc.returncode == 1
    assert "[FAIL] docker daemon: cannot reach the Docker daemon at unix:///nonexistent" in out
    assert "sandbox doctor" not in out
    checks = json.loads(sandbox("doctor", "--json", env=GONE, timeout=60).stdout)["checks"]
    daemon = next(c for c in checks if c["name"] == "docker daemon")
    assert not daemon["ok"] and "unix:///nonexistent" in daemon["detail"]
    assert "sandbox doctor" not in daemon["detail"]


def test_doctor_marks_line_up(sandbox: Runner) -> None:
    lines = [ln for ln in sandbox("doctor", env=GONE).stdout.decode().splitlines()
             if ln.startswith("[")]
    assert {ln.index("]") for ln in lines} == {5}, lines
