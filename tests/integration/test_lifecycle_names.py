"""A start that fails or is interrupted removes only what it made: never a namesake of the
user's, never another SANDBOX_HOME's sandbox."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, CLI, Runner


def _docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def users_container(docker_engine: None) -> Iterator[str]:
    """A container the user made by hand, not through sandbox."""
    name = "t-mydb-" + os.urandom(4).hex()
    _docker("run", "-d", "--name", name, BUSYBOX_IMAGE, "sleep", "300").check_returncode()
    yield name
    _docker("rm", "-f", name)


def test_start_on_a_users_container_name_leaves_it_alone(
        users_container: str, sandbox: Runner, home: Path) -> None:
    before = _docker("inspect", "-f", "{{.Id}}", users_container).stdout
    for command in ("start", "run"):
        extra = ["--", "true"] if command == "run" else []
        proc = sandbox(command, "--name", users_container, "--image", BUSYBOX_IMAGE, *extra)
        assert proc.returncode == 2, proc.stderr
        assert b"did not create" in proc.stderr and proc.stderr.count(b"\n") == 1
        assert _docker("inspect", "-f", "{{.State.Running}} {{.Id}}",
                       users_container).stdout == f"true {before.strip()}\n"
        assert not (home / "volumes" / users_container).exists()


def test_two_homes_with_one_name_never_touch_each_other(
        docker_engine: None, sandbox: Runner, tmp_path: Path) -> None:
    name = "t-shared-" + os.urandom(4).hex()
    first = {"SANDBOX_HOME": str(tmp_path / "ci-job-1")}
    second = {"SANDBOX_HOME": str(tmp_path / "ci-job-2")}
    try:
        sandbox("start", "--name", name, "--image", BUSYBOX_IMAGE, env=first, check=True)
        sandbox("write", name, "mine.txt", "job 1", env=first, check=True)
        clash = sandbox("start", "--name", name, "--image", BUSYBOX_IMAGE, env=second)
        assert clash.returncode == 2
        assert b"another SANDBOX_HOME" in clash.stderr and b"ci-job-1" in clash.stderr
        assert sandbox("purge", name, env=second).returncode == 3
        sandbox("purge", "--all", env=second, check=True)
        assert sandbox("exec", name, "cat", "mine.txt", env=first, check=True).stdout == b"job 1"
        listed = json.loads(sandbox("ls", "--json", env=second, check=True).stdout)
        assert listed == []
    finally:
        sandbox("purge", "--all", env=first)
        sandbox("purge", "--all", env=second)
    assert _docker("ps", "-aq", "--filter", f"name=^{name}$").stdout == ""


def test_start_killed_mid_docker_run_removes_its_container_by_label(
        docker_engine: None, home: Path, tmp_path: Path) -> None:
    """The docker client made the container but never printed its id: cleanup finds it by
    this attempt's label, and leaves a same-named container of another home alone."""
    shim = tmp_path / "docker-slow-run"
    shim.write_text('#!/bin/sh\nif [ "$1" = "run" ]; then docker "$@" >/dev/null; sleep 600; fi\n'
                    'exec docker "$@"\n')
    shim.chmod(0o755)
    name = "t-killed-" + os.urandom(4).hex()
    env = {**os.environ, "SANDBOX_DOCKER": str(shim)}
    proc = subprocess.Popen([*CLI, "start", "--name", name, "--image", BUSYBOX_IMAGE], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not _docker("ps", "-q", "--filter", f"name=^{name}$").stdout.strip():
            assert time.monotonic() < deadline, "the container never came up"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert _docker("ps", "-aq", "--filter", f"name=^{name}$").stdout == ""
        assert not (home / "volumes" / name).exists()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the shim's sleep, in the test's group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _docker("rm", "-f", name)
