"""`ls` and `purge` of a home whose sandboxes live on several engines: each sandbox is asked
for on the engine its state entry records (once per engine), whatever engine the
environment points at. One on another engine is listed with that engine, not as missing, and
a bare purge removes its container and volume there; one whose engine does not answer is
`unreachable` and is kept (with a warning), never dropped while its container lives on.

Needs the `remote` engine of scripts/setup-engines.sh (a second dockerd), as CI starts it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, Runner

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def remote_env() -> dict[str, str]:
    """The environment of the `remote` engine; the test fails when it is not up."""
    out = subprocess.run(["bash", "-c", f'eval "$({REPO}/scripts/setup-engines.sh env '
                          'remote)" && echo "$DOCKER_HOST"'],
                         capture_output=True, text=True, timeout=60)
    host = out.stdout.strip()
    assert host.startswith("unix://"), out.stderr
    probe = subprocess.run(["docker", "version"], env={**os.environ, "DOCKER_HOST": host},
                           capture_output=True, timeout=60)
    assert probe.returncode == 0, "the remote engine is not up: scripts/setup-engines.sh start"
    return {"DOCKER_HOST": host, "DOCKER_CONTEXT": ""}


def _docker_on(env: dict[str, str], *args: str) -> str:
    return subprocess.run(["docker", *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60).stdout


def _rows(sandbox: Runner) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(sandbox("ls", "--json", check=True).stdout)}


def test_ls_and_purge_reach_each_sandbox_on_its_own_engine(docker_engine: None,
                                                           sandbox: Runner, home: Path,
                                                           remote_env: dict[str, str]) -> None:
    # (SANDBOX_DOCKER and DOCKER_CONTEXT may be left set by the in-process API tests.)
    if os.environ.get("DOCKER_HOST") or "podman" in os.environ.get("SANDBOX_DOCKER", ""):
        pytest.fail("run this test with the main engine as the environment's")
    here = {"SANDBOX_IMAGE": BUSYBOX_IMAGE}
    there = {**here, **remote_env}
    far = sandbox("start", "--name", "far", env=there, check=True).stdout.decode().strip()
    near = sandbox("start", "--name", "near", env=here, check=True).stdout.decode().strip()
    try:
        rows = _rows(sandbox)
        assert rows[near]["status"] == "running" and rows[near]["engine"] is None
        assert rows[far]["status"] == "running", rows[far]
        assert rows[far]["engine"] and "sandbox-remote.sock" in rows[far]["engine"]
        far_id, far_volume = rows[far]["container_id"], rows[far]["volume"].split(":", 1)[1]
        text = sandbox("ls", check=True).stdout.decode()
        assert "running on local (unix:///run/sandbox-remote.sock)" in text

        # An engine that does not answer: its sandbox is unreachable, and kept by purge.
        state = home / "state.json"
        saved = state.read_text()
        data = json.loads(saved)
        data["sandboxes"][far]["options"]["engine_host"] = f"unix://{home}/no-engine.sock"
        state.write_text(json.dumps(data))
        assert _rows(sandbox)[far]["status"] == "unreachable"
        named = sandbox("purge", far)
        assert named.returncode == 5, named.stderr
        assert b"not purged: far (its engine" in named.stderr
        proc = sandbox("purge", check=True)
        assert b"far was not purged" in proc.stderr
        assert set(_rows(sandbox)) == {far}
        state.write_text(saved)

        # Its engine back: a bare purge from the main engine's environment removes it there.
        sandbox("purge", check=True)
        assert _rows(sandbox) == {}
        assert far_id not in _docker_on(remote_env, "ps", "-a", "-q", "--no-trunc").split()
        assert far_volume not in _docker_on(remote_env, "volume", "ls", "-q").split()
    finally:
        sandbox("purge", "--all", env=there)
        sandbox("purge", "--all", env=here)
