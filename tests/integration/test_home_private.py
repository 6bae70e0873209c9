"""Another local user: the sandbox home is private, and a home (or any part of it) that is not
ours, or is reached through a link, is refused before anything there is read or written."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Runner

OTHER_UID = 65534  # nobody: a second local user that exists on every system


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _record(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "container_id": "0" * 64, "image": "img",
            "created_at": "2026-01-01T00:00:00Z", "expires_at": "2999-01-01T00:00:00Z", **extra}


def _write_state(home: Path, *records: dict[str, object]) -> None:
    (home / "state.json").write_text(json.dumps(
        {"version": 1, "sandboxes": {str(r["name"]): r for r in records}}))


def _victim(tmp_path: Path) -> Path:
    """A folder of someone else's, with a Documents folder old enough to look like a leftover."""
    victim = tmp_path / "victim"
    (victim / "Documents").mkdir(parents=True)
    (victim / "Documents" / "thesis.txt").write_text("years of work")
    old = time.time() - 86400
    os.utime(victim / "Documents", (old, old))
    return victim


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A folder every local user can enter (as /tmp is), for homes another user must not read."""
    base = Path(tempfile.mkdtemp(prefix="sandbox-shared-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_new_home_is_private_to_its_user(docker_engine: None, sandbox: Runner,
                                           shared_base: Path) -> None:
    home = shared_base / "home"
    env = {"SANDBOX_HOME": str(home)}
    name = "t-private-home"
    sandbox("start", "--name", name, "--image", "sandbox-test/busybox:latest", env=env,
            check=True)
    try:
        assert _mode(home) == 0o700
        assert _mode(home / "volumes") == 0o700
        assert _mode(home / "state.json") == 0o600
        assert _mode(home / "state.lock") == 0o600
        # A second real user cannot read what sandbox names, images, ports and env keys.
        peek = subprocess.run(["cat", str(home / "state.json")], user=OTHER_UID,
                              capture_output=True, timeout=10)
        assert peek.returncode != 0 and b"Permission denied" in peek.stderr
        assert name.encode() not in peek.stdout
    finally:
        sandbox("purge", name, env=env)


def test_wide_modes_left_by_an_older_version_are_tightened(docker_engine: None,
                                                          sandbox: Runner, home: Path) -> None:
    (home / "volumes").mkdir(parents=True)
    _write_state(home)
    (home / "state.lock").write_text("")
    for path, mode in ((home, 0o755), (home / "volumes", 0o755),
                       (home / "state.json", 0o644), (home / "state.lock", 0o644)):
        path.chmod(mode)
    proc = sandbox("ls")
    assert proc.returncode == 0, proc.stderr
    assert (_mode(home), _mode(home / "volumes")) == (0o700, 0o700)
    assert (_mode(home / "state.json"), _mode(home / "state.lock")) == (0o600, 0o600)


def test_a_home_made_first_by_another_user_is_refused(docker_engine: None, sandbox: Runner,
                                                      home: Path, tmp_path: Path) -> None:
    """The attack: another user pre-creates the home with volumes/ a link to the victim's
    folder; a bare purge then deleted the victim's Documents as 'orphan folders'."""
    victim = _victim(tmp_path)
    home.mkdir()
    (home / "volumes").symlink_to(victim)
    os.lchown(home / "volumes", OTHER_UID, OTHER_UID)
    os.chown(home, OTHER_UID, OTHER_UID)
    proc = sandbox("purge", timeout=60)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("sandbox: error: ")
    assert str(home) in err and f"uid {OTHER_UID}" in err
    assert (victim / "Documents" / "thesis.txt").read_text() == "years of work"


def test_a_volumes_link_in_our_own_home_is_refused(docker_engine: None, sandbox: Runner,
                                                   home: Path, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    home.mkdir(mode=0o700)
    (home / "volumes").symlink_to(victim)
    proc = sandbox("purge", timeout=60)
    assert proc.returncode == 2
    assert f"{home}/volumes: it is a symbolic link" in proc.stderr.decode()
    assert (victim / "Documents" / "thesis.txt").exists()


@pytest.mark.parametrize("part", ["state.json", "state.lock"])
def test_a_state_file_or_lock_of_another_user_is_refused(docker_engine: None, sandbox: Runner,
                                                         home: Path, part: str) -> None:
    (home / "volumes").mkdir(parents=True, mode=0o700)
    _write_state(home, _record("t-foreign"))
    (home / "state.lock").write_text("")
    os.chown(home / part, OTHER_UID, OTHER_UID)
    for command in (["ls"], ["purge", "t-foreign"], ["exec", "t-foreign", "true"]):
        proc = sandbox(*command, timeout=60)
        assert proc.returncode == 2, (command, proc.stderr)
        assert f"{home / part}: it is owned by nobody (uid {OTHER_UID})" in proc.stderr.decode()
    assert "t-foreign" in (home / "state.json").read_text()  # nothing written


def test_a_linked_state_file_is_refused_and_its_target_untouched(
        docker_engine: None, sandbox: Runner, home: Path, tmp_path: Path) -> None:
    (home / "volumes").mkdir(parents=True, mode=0o700)
    target = tmp_path / "victim.json"
    target.write_text(json.dumps({"version": 1, "sandboxes": {
        "t-gone": _record("t-gone", expires_at="2000-01-01T00:00:00Z")}}))
    before = target.read_bytes()
    (home / "state.json").symlink_to(target)
    proc = sandbox("ls", timeout=60)
    assert proc.returncode == 2
    assert f"{home}/state.json: it is a symbolic link" in proc.stderr.decode()
    assert target.read_bytes() == before
    assert (home / "state.json").is_symlink()


@pytest.mark.parametrize("problem", ["other-owner", "world-writable"])
def test_a_parent_others_can_change_is_refused(docker_engine: None, sandbox: Runner,
                                               tmp_path: Path, problem: str) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    if problem == "other-owner":
        os.chown(parent, OTHER_UID, OTHER_UID)
    else:
        parent.chmod(0o777)
    proc = sandbox("ls", env={"SANDBOX_HOME": str(parent / "home")}, timeout=60)
    assert proc.returncode == 2
    assert f"its parent {parent}" in proc.stderr.decode()
    assert not (parent / "home").exists()


def test_a_held_lock_ends_in_a_clear_error_not_a_hang(docker_engine: None, sandbox: Runner,
                                                      home: Path) -> None:
    (home / "volumes").mkdir(parents=True, mode=0o700)
    _write_state(home, _record("t-locked"))
    lock = os.open(home / "state.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        began = time.monotonic()
        proc = sandbox("purge", "t-locked", env={"SANDBOX_LOCK_TIMEOUT": "2"}, timeout=30)
        waited = time.monotonic() - began
    finally:
        os.close(lock)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1
    assert f"state lock {home}/state.lock is still taken after 2 s" in err
    assert f"held by pid {os.getpid()}" in err
    assert waited < 20
    assert "t-locked" in (home / "state.json").read_text()  # the purge did not half-happen

