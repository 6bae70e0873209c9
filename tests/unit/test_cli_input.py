"""The CLI refuses bad input with one line and exit code 2, before any docker call."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI


@pytest.fixture
def recorded(fake_docker: tuple[Path, dict[str, str]],
             tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The shared docker stand-in, with a private home and no machine settings."""
    calls, settings = fake_docker
    env = {**os.environ, **settings, "SANDBOX_HOME": str(tmp_path / "home"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    env.pop("SANDBOX_IMAGE", None)
    return calls, env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def test_bad_project_file_names_file_and_line(recorded: tuple[Path, dict[str, str]],
                                              tmp_path: Path) -> None:
    calls, env = recorded
    project = tmp_path / "proj"
    (project / "deep").mkdir(parents=True)
    (project / "sandbox.yaml").write_text("image: python:3.12\nmemroy: 2g\n")
    proc = _run(["start"], env, project / "deep")
    assert proc.returncode == 2
    assert proc.stderr == (f"sandbox: error: {project}/sandbox.yaml:2: unknown setting 'memroy' "
                           "(known: allow_hosts, cap_add, cpus, disk, egress_network, env, "
                           "image, keep, memory, network, pids, ports, proxy_image, read_only, "
                           "runtime, storage, tmpfs_size, ttl)\n")
    assert not calls.exists()


@pytest.mark.parametrize("args", [
    ["start", "--name", "-x"], ["start", "--ttl", "soon"], ["start", "-p", "99999:1"],
    ["start", "--image", "Bad Image"], ["start", "-e", "1A=b"], ["exec", "../x", "true"],
    ["read", "box", "../etc/passwd"], ["write", "box", "/etc/passwd", "x"],
    ["copy-to", "box", "../*"], ["exec", "--timeout", "-1", "box", "true"],
])
def test_refused_before_docker(recorded: tuple[Path, dict[str, str]], tmp_path: Path,
                               args: list[str]) -> None:
    calls, env = recorded
    proc = _run(args, env, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("sandbox: error: ") and proc.stderr.count("\n") == 1
    assert not calls.exists()
