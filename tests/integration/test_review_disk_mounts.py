"""The size-capped folder's mount must be recognised however the home's path is spelt: the
kernel records a mount point by its real path, so a SANDBOX_HOME reached through a symbolic link
(or holding characters mountinfo escapes) must still be unmounted by purge, never emptied
through its mount and left mounted on a deleted image."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_cli import disk
from tests.conftest import BUSYBOX_IMAGE, CLI

CAN_CAP = disk.supported() is None


def _points(path: Path) -> list[str]:
    """The mount points (decoded as the kernel means them) under PATH's real path."""
    real = os.path.realpath(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_bytes().splitlines():
        field = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]),
                       line.split()[4])
        point = os.fsdecode(field)
        if point == real or point.startswith(real + "/"):
            points.append(point)
    return points


@pytest.fixture
def odd_home(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A home whose spelling differs from the kernel's: through a link, with a space and a
    non-ASCII character. Anything left mounted is unmounted afterwards, whatever happens."""
    real = tmp_path / "real dir é"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    yield link / "home"
    for point in _points(real):
        subprocess.run(["umount", "--lazy", point], check=False, timeout=30)


@pytest.mark.skipif(not CAN_CAP, reason="needs root and loop devices (CI runs as root)")
def test_purge_unmounts_a_capped_folder_of_a_linked_home(docker_engine: None,
                                                         odd_home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_HOME", str(odd_home))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")
           or k in ("SANDBOX_HOME", "SANDBOX_DOCKER")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], capture_output=True, env=env, timeout=120,
                              stdin=subprocess.DEVNULL)

    name = "t-" + uuid.uuid4().hex[:10]
    started = run("start", "--name", name, "--image", BUSYBOX_IMAGE, "--disk", "32m")
    assert started.returncode == 0, started.stderr
    try:
        assert _points(odd_home), "the folder should be a mounted image"
        purged = run("purge", name)
        assert purged.returncode == 0, purged.stderr
        assert not _points(odd_home), "purge left the image mounted"
        assert not (odd_home / "volumes" / name).exists()
    finally:
        run("purge", name)
