"""Refused early and clearly (one line, exit 2, before any docker call): memory below docker's
minimum, a host port published twice, more CPUs than the host has, a bad --tmpfs-size."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, Runner, docker_inspect

IMG = ("--image", BUSYBOX_IMAGE)
TOO_MANY_CPUS = str((os.cpu_count() or 1) + 1)

CASES = [
    (["--memory", "2"], "memory size '2' is below the minimum of 6m"),
    (["--memory", "5m"], "memory size '5m' is below the minimum of 6m"),
    (["--network", "-p", "8080:80", "-p", "8080:81"], "host port 8080/tcp is published twice"),
    (["--network", "-p", "0.0.0.0:8080:80", "-p", "127.0.0.1:8080:81"], "published twice"),
    (["--cpus", TOO_MANY_CPUS], f"CPU count {TOO_MANY_CPUS} is more than the"),
    (["--tmpfs-size", "64x"], "invalid tmpfs size '64x'"),
    (["--tmpfs-size", "0"], "invalid tmpfs size '0'"),
    (["--tmpfs-size", "64m,exec"], "invalid tmpfs size"),
]


def _refused(proc: subprocess.CompletedProcess, log: Path, needle: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.startswith("sandbox: error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert not log.exists(), f"docker was called: {log.read_text()}"


@pytest.mark.parametrize("command", ["start", "run"])
@pytest.mark.parametrize(("flags", "needle"), CASES)
def test_refused_before_any_docker_call(sandbox: Runner, home: Path, command: str,
                                        flags: list[str], needle: str,
                                        fake_docker: tuple[Path, dict[str, str]]) -> None:
    log, env = fake_docker
    argv = [command, *IMG, *flags] + (["--", "true"] if command == "run" else [])
    _refused(sandbox(*argv, env=env), log, needle)


@pytest.mark.parametrize(("setting", "needle"), [
    ("memory: 2", "sandbox.yaml:1: memory: memory size '2' is below the minimum of 6m"),
    (f"cpus: {TOO_MANY_CPUS}", f"sandbox.yaml:1: cpus: CPU count {TOO_MANY_CPUS} is more"),
    ("tmpfs_size: lots", "sandbox.yaml:1: tmpfs_size: invalid tmpfs size 'lots'"),
    ("network: true\nports: ['8080:80', '8080:81/tcp']", "sandbox.yaml:2: ports: host port"),
])
def test_refused_from_the_project_file(sandbox: Runner, home: Path, tmp_path: Path,
                                       setting: str, needle: str,
                                       fake_docker: tuple[Path, dict[str, str]]) -> None:
    log, env = fake_docker
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "sandbox.yaml").write_text(setting + "\n")
    _refused(sandbox("start", *IMG, env=env, cwd=work), log, needle)


def test_tmpfs_size_flag_reaches_the_container(start_box: Callable[..., str]) -> None:
    name = start_box("--read-only", "--tmpfs-size", "16m")
    tmpfs = docker_inspect(name, "{{json .HostConfig.Tmpfs}}")
    assert "size=16m" in tmpfs


def test_the_smallest_memory_docker_takes_is_accepted(start_box: Callable[..., str]) -> None:
    name = start_box("--memory", "6m")
    assert docker_inspect(name, "{{.HostConfig.Memory}}") == str(6 << 20)
