"""A hard link in an engine volume's /app, followed in the stream by more than the pipes and
sockets between the engine and us hold: the second name's own `cp` must not wait for the first
stream (Docker holds the container's lock until an archive is read to its end), so copy-from,
diff and snapshot end in time with the second name's bytes."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, CLI, DOCKER, Runner

pytestmark = pytest.mark.engines

QUICK = 90  # seconds: the bytes involved stream in well under one

# a1 and a2 are one file (a2 comes second: no bytes in the stream), then 32 MB more in "z"
TREE = ("cd /app && echo hi > a1 && ln a1 a2 && "
        "head -c 33554432 /dev/zero > z")


@pytest.fixture
def linked(docker_engine: None, sandbox: Runner) -> Iterator[str]:
    """A volume sandbox holding TREE; purged after."""
    out = sandbox("start", "--storage", "volume", "--image", BUSYBOX_IMAGE, check=True,
                  timeout=180)
    name = out.stdout.decode().strip()
    try:
        sandbox("exec", name, "--", "sh", "-c", TREE, check=True, timeout=120)
        yield name
    finally:
        sandbox("purge", name, timeout=180)


def _ends(tmp_path: Path, *args: str) -> bytes:
    """Run the CLI; on a hang, SIGTERM it (so it undoes what it made) and fail."""
    proc = subprocess.Popen([*CLI, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=QUICK)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        pytest.fail(f"sandbox {' '.join(args)} hung (more than {QUICK} s)")
    assert proc.returncode == 0, err
    return out


def test_copy_from_a_hard_link_before_a_large_file_ends(
        linked: str, sandbox: Runner, tmp_path: Path) -> None:
    _ends(tmp_path, "copy-from", linked, "**", str(tmp_path / "d"))
    assert (tmp_path / "d" / "a2").read_bytes() == b"hi\n"
    assert (tmp_path / "d" / "z").stat().st_size == 32 << 20


def test_diff_of_a_hard_link_before_a_large_file_ends(
        linked: str, tmp_path: Path) -> None:
    _ends(tmp_path, "diff", linked, "--stat")


def test_snapshot_of_a_hard_link_before_a_large_file_ends(
        linked: str, tmp_path: Path, home: Path) -> None:
    tag = f"sandbox-test-snap/{os.urandom(4).hex()}:1"
    try:
        _ends(tmp_path, "snapshot", linked, "--tag", tag)
    finally:
        subprocess.run([DOCKER, "image", "rm", "-f", tag], capture_output=True, timeout=120)
        left = subprocess.run(  # an intermediate commit a killed snapshot left
            [DOCKER, "images", "-q", "--filter", f"label=sandbox-cli.home-dir={home}"],
            capture_output=True, text=True, timeout=60).stdout.split()
        if left:
            subprocess.run([DOCKER, "image", "rm", "-f", *left], capture_output=True,
                           timeout=120)
