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
import sys
import threading
import time
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


ENGINE_KEYS = ("SANDBOX_DOCKER", "DOCKER_HOST", "DOCKER_CONTEXT")


def test_api_calls_keep_each_sandbox_on_its_engine_and_the_environment_untouched(
        docker_engine: None, home: Path, remote_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One process, sandboxes on two engines: a call about one never moves the next call (or
    another thread's) to the other engine, and os.environ stays the user's. An attach to the
    far sandbox used to leave DOCKER_HOST pointing there: the next start went to the far
    engine, a purge removed the wrong one's record and left its container."""
    import sandbox_cli

    monkeypatch.setenv("SANDBOX_IMAGE", BUSYBOX_IMAGE)
    monkeypatch.setenv("DOCKER_HOST", remote_env["DOCKER_HOST"])
    far = sandbox_cli.Sandbox.start(name="far")
    monkeypatch.delenv("DOCKER_HOST")
    before = {key: os.environ.get(key) for key in ENGINE_KEYS}
    try:
        assert sandbox_cli.Sandbox.attach("far").exec(["echo", "far"]).stdout == "far\n"
        assert {key: os.environ.get(key) for key in ENGINE_KEYS} == before
        near = sandbox_cli.Sandbox.start(name="near")  # the environment's engine, not far's
        here_ids = _docker_on({}, "ps", "-q", "--no-trunc").split()
        there_ids = _docker_on(remote_env, "ps", "-q", "--no-trunc").split()
        assert near.info().container_id in here_ids and near.info().engine is None
        assert far.info().container_id in there_ids

        # Side by side on two threads: each exec reaches its own sandbox every time.
        failures: list[str] = []

        def loop(box: sandbox_cli.Sandbox, word: str) -> None:
            for _ in range(15):
                result = box.exec(["echo", word])
                if result.stdout != f"{word}\n":
                    failures.append(f"{word}: {result.exit_code} {result.stderr}")

        threads = [threading.Thread(target=loop, args=(box, box.name)) for box in (far, near)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, failures[:3]

        # A stream read after other calls: its timeout kill still goes to far's engine.
        with far.exec_stream(["sh", "-c", "echo go; sleep 77"], timeout=2) as stream:
            assert near.exec(["true"]).exit_code == 0
            assert b"".join(chunk for _, chunk in stream) == b"go\n"
            assert (stream.result.exit_code, stream.result.timed_out) == (124, True)
        left = _docker_on(remote_env, "exec", far.info().container_id, "ps", "-o", "args")
        assert "sleep 77" not in left and "sleep" in left, left  # its main sleep lives

        for box in (far, near):
            box.purge()
        assert sandbox_cli.list_sandboxes() == []
        assert _docker_on({}, "ps", "-aq", "--filter", "label=sandbox-cli.name=near") == ""
        assert _docker_on(remote_env, "ps", "-aq", "--filter", "label=sandbox-cli.name=far") == ""
        assert {key: os.environ.get(key) for key in ENGINE_KEYS} == before
    finally:
        for name in ("far", "near"):
            subprocess.run([sys.executable, "-m", "sandbox_cli", "purge", name],
                           capture_output=True, timeout=120)


def test_background_exec_runs_on_the_sandbox_engine(docker_engine: None, sandbox: Runner,
                                                    remote_env: dict[str, str]) -> None:
    """`exec -d` from the main engine's environment: the detached relay (a process of its
    own) is handed the far sandbox's engine, and its command runs there."""
    here = {"SANDBOX_IMAGE": BUSYBOX_IMAGE}
    far = sandbox("start", "--name", "far-bg", env={**here, **remote_env},
                  check=True).stdout.decode().strip()
    try:
        ident = sandbox("exec", "-d", far, "sh", "-c", "echo from-far; hostname",
                        env=here, check=True).stdout.decode().strip()
        logs = b""
        for _ in range(100):
            logs = sandbox("logs", far, ident, env=here, check=True).stdout
            if logs.count(b"\n") >= 2:
                break
            time.sleep(0.1)
        assert logs == b"from-far\nfar-bg\n", logs  # (the main engine has no such container)
    finally:
        sandbox("purge", far, env=here)


def test_sweep_leaves_an_expired_sandbox_of_another_engine_to_purge(
        docker_engine: None, sandbox: Runner, home: Path, remote_env: dict[str, str]) -> None:
    """`ls` from the main engine's environment sweeps only that engine's sandboxes: an
    expired one on the remote engine, past its files' grace, keeps its record (it used to be
    dropped, "expired far removed", its engine volume left on the remote engine for good);
    a bare purge then removes it there."""
    here = {"SANDBOX_IMAGE": BUSYBOX_IMAGE}
    far = sandbox("start", "--name", "far-old", env={**here, **remote_env},
                  check=True).stdout.decode().strip()
    try:
        volume_name = _rows(sandbox)[far]["volume"].split(":", 1)[1]
        state = home / "state.json"
        data = json.loads(state.read_text())
        data["sandboxes"][far]["expires_at"] = "2020-01-01T00:00:00Z"  # long past, files too
        state.write_text(json.dumps(data))
        listed = sandbox("ls", "--json", env=here, check=True)
        assert b"removed" not in listed.stderr, listed.stderr
        assert far in _rows(sandbox)
        assert volume_name in _docker_on(remote_env, "volume", "ls", "-q").split()
        sandbox("purge", env=here, check=True)
        assert far not in _rows(sandbox)
        assert volume_name not in _docker_on(remote_env, "volume", "ls", "-q").split()
    finally:
        sandbox("purge", far, env={**here, **remote_env})
