"""The container attacks shared host resources: disk and inodes through /app and its own file
system, the engine's CPU through its main process's output and an image's health check, and
its own keep-alive process through a stop storm. Each default must hold on the real engine."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox_cli import disk
from tests.conftest import BUSYBOX_IMAGE, Runner, docker_inspect


def sh(sandbox: Runner, name: str, script: str,
       timeout: float = 120) -> subprocess.CompletedProcess:
    return sandbox("exec", name, "sh", "-c", script, timeout=timeout)


CAN_CAP = disk.supported() is None


@pytest.mark.skipif(not CAN_CAP, reason="needs root and loop devices (CI runs as root)")
def test_disk_cap_bounds_bytes_and_files_in_app(start_box: Callable[..., str], sandbox: Runner,
                                                home: Path) -> None:
    name = start_box("--disk", "64m")
    # Bytes: 100 MB does not fit in a 64 MB cap.
    big = sh(sandbox, name, "dd if=/dev/zero of=/app/big bs=1M count=100 2>&1")
    assert big.returncode != 0 and b"No space left" in big.stdout
    used = os.statvfs(home / "volumes" / name)
    assert used.f_blocks * used.f_frsize <= 64 << 20
    sh(sandbox, name, "rm -f /app/big")
    # Inodes: a 64 MB cap holds 4,096 entries, so 6,000 empty files cannot all be made.
    files = sh(sandbox, name, "i=0; while [ $i -lt 6000 ]; do touch /app/f$i || exit 9; "
                              "i=$((i+1)); done")
    assert files.returncode == 9, files.stderr
    assert b"No space left" in files.stderr
    assert len(os.listdir(home / "volumes" / name)) < 4100
    # The host's own disk never saw more than the image's used blocks.
    image = home / "disks" / f"{name}.img"
    assert image.stat().st_blocks * 512 <= 80 << 20
    sandbox("purge", name, check=True)
    assert not image.exists() and not (home / "volumes" / name).exists()
    mounts = Path("/proc/self/mounts").read_text()
    assert str(home) not in mounts


def test_uncapped_folder_is_announced(docker_engine: None, sandbox: Runner) -> None:
    name = "t-" + uuid.uuid4().hex[:10]
    proc = sandbox("start", "--name", name, "--image", BUSYBOX_IMAGE, "--disk", "unlimited",
                   check=True)
    assert b"not capped" not in proc.stderr  # an explicit `unlimited` is not warned about
    sandbox("purge", name, check=True)
    if not CAN_CAP:  # a user who cannot mount is told once at start
        proc = sandbox("start", "--name", name, "--image", BUSYBOX_IMAGE, check=True)
        assert b"/app is not capped at 1g" in proc.stderr
        sandbox("purge", name, check=True)


def test_read_only_root_and_bounded_tmp(start_box: Callable[..., str], sandbox: Runner) -> None:
    name = start_box("--tmpfs-size", "16m") if _has_tmpfs_flag(sandbox) else start_box()
    assert sh(sandbox, name, "touch /x").returncode != 0
    assert sh(sandbox, name, "touch /usr/x").returncode != 0
    for directory in ("/tmp", "/var/tmp"):
        assert sh(sandbox, name, f"echo ok > {directory}/f && cat {directory}/f").stdout == b"ok\n"
    limit = 16 if _has_tmpfs_flag(sandbox) else 256
    flood = sh(sandbox, name, f"dd if=/dev/zero of=/tmp/big bs=1M count={limit + 8} 2>&1")
    assert flood.returncode != 0 and b"No space left" in flood.stdout


def _has_tmpfs_flag(sandbox: Runner) -> bool:
    return b"--tmpfs-size" in sandbox("start", "--help").stdout


def test_writable_root_is_announced_as_uncapped(start_box: Callable[..., str],
                                                sandbox: Runner) -> None:
    name = "t-" + uuid.uuid4().hex[:10]
    proc = sandbox("start", "--name", name, "--image", BUSYBOX_IMAGE, "--writable-root",
                   check=True)
    try:
        assert b"own file system is not capped" in proc.stderr
        assert docker_inspect(name, "{{.HostConfig.ReadonlyRootfs}}") == "false"
    finally:
        sandbox("purge", name)


def test_main_output_flood_is_refused(box: str, sandbox: Runner) -> None:
    # `yes > /proc/1/fd/1` made dockerd and the shim burn a host CPU on log copying: the
    # main process is root, so the sandbox user cannot open its descriptors at all.
    flood = sh(sandbox, box, "yes > /proc/1/fd/1", timeout=30)
    assert flood.returncode != 0 and b"Permission denied" in flood.stderr
    for pid in ("1", "$(pgrep -x sleep || echo 1)"):
        proc = sh(sandbox, box, f"echo x > /proc/{pid}/fd/2")
        assert proc.returncode != 0


def test_stop_storm_cannot_stop_the_keep_alive(docker_engine: None, sandbox: Runner) -> None:
    # The code stops every process it may signal, forever: the sandbox's own sleep must be
    # out of its reach, so the TTL still ends it on time.
    name = "t-" + uuid.uuid4().hex[:10]
    sandbox("start", "--name", name, "--image", BUSYBOX_IMAGE, "--ttl", "4s", check=True)
    try:
        user = docker_inspect(name, '{{index .Config.Labels "sandbox-cli.user"}}')
        subprocess.run(["docker", "exec", "-d", "--user", user, name, "sh", "-c",
                        "while :; do kill -STOP -1; done"], check=True, timeout=30)
        time.sleep(1)
        states = subprocess.run(["docker", "exec", "--user", "0:0", name, "sh", "-c",
                                 "grep -h State /proc/1/status /proc/[0-9]*/status"],
                                capture_output=True, text=True, timeout=30).stdout
        assert states.splitlines()[0].split()[1] != "T", states
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            gone = subprocess.run(["docker", "inspect", name], capture_output=True, timeout=30)
            if gone.returncode != 0:
                break
            time.sleep(0.5)
        assert gone.returncode != 0, "the TTL did not end a sandbox under a stop storm"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        sandbox("purge", name)


@pytest.fixture
def healthcheck_image(docker_engine: None, tmp_path: Path) -> Iterator[str]:
    tag = f"sandbox-test/healthcheck:{uuid.uuid4().hex[:8]}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BUSYBOX_IMAGE}\nHEALTHCHECK --interval=1ms --timeout=1s CMD true\n")
    subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True,
                   capture_output=True, timeout=120)
    yield tag
    # Not waited for: a container wedged elsewhere on the engine can hold rmi for a minute.
    subprocess.Popen(["docker", "rmi", "-f", tag], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)


def test_image_health_check_never_runs(healthcheck_image: str,
                                       start_box: Callable[..., str]) -> None:
    name = start_box(image=healthcheck_image)
    time.sleep(0.5)
    assert json.loads(docker_inspect(name, "{{json .Config.Healthcheck}}"))["Test"] == ["NONE"]
    assert docker_inspect(name, "{{json .State.Health}}") in ("null", "")
