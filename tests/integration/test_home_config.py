"""Config files come with the code you run: read only when regular files, without blocking,
bounded in size and depth; a project file's loosenings (the image too) announced in words."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, Runner


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir(exist_ok=True)
    return path


def _one_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.startswith("sandbox: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and needle in err, err


def test_a_project_file_linked_to_proc_kmsg_does_not_hang_start(
        sandbox: Runner, home: Path, work: Path,
        fake_docker: tuple[Path, dict[str, str]]) -> None:
    _, env = fake_docker
    (work / "sandbox.yaml").symlink_to("/proc/kmsg")  # root-owned: passes the owner check
    proc = sandbox("start", "--image", BUSYBOX_IMAGE, env=env, cwd=work, timeout=20)
    _one_error(proc, f"{work}/sandbox.yaml: is a symbolic link")


def test_a_fifo_project_file_is_refused_not_skipped_or_waited_on(
        sandbox: Runner, home: Path, work: Path,
        fake_docker: tuple[Path, dict[str, str]]) -> None:
    log, env = fake_docker
    os.mkfifo(work / "sandbox.yaml")
    proc = sandbox("start", "--image", BUSYBOX_IMAGE, env=env, cwd=work, timeout=20)
    _one_error(proc, f"{work}/sandbox.yaml: not a regular file")
    assert not log.exists()


def test_a_user_file_linked_to_proc_kmsg_is_not_read(
        sandbox: Runner, home: Path, tmp_path: Path, work: Path,
        fake_docker: tuple[Path, dict[str, str]]) -> None:
    """The user file may be a link (dotfile managers), but /proc files are never read: their
    size is 0, and reading /proc/kmsg would block, or consume the kernel's log."""
    _, env = fake_docker
    user = tmp_path / "xdg-config" / "sandbox-cli" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.symlink_to("/proc/kmsg")
    proc = sandbox("start", "--image", BUSYBOX_IMAGE, "--memory", "2", env=env, cwd=work,
                   timeout=20)
    _one_error(proc, "memory size '2' is below")  # got past the user file at once


def test_an_oversized_project_file_is_refused(sandbox: Runner, home: Path, work: Path) -> None:
    with open(work / "sandbox.yaml", "wb") as handle:
        handle.truncate(2 << 20)
    _one_error(sandbox("start", cwd=work, timeout=20), "larger than 1 MiB")


@pytest.mark.parametrize("shape", ["flow", "block"])
def test_a_deeply_nested_file_is_a_clear_error(sandbox: Runner, home: Path, work: Path,
                                               shape: str) -> None:
    depth = 5000
    if shape == "flow":
        text = "env: " + "[" * depth + "]" * depth + "\n"
    else:
        text = "env:\n  " + "- " * depth + "x\n"  # compact nested block sequences
    (work / "sandbox.yaml").write_text(text)
    _one_error(sandbox("start", cwd=work, timeout=60),
               f"{work}/sandbox.yaml: nested too deeply to be a settings file")


def test_a_project_file_choosing_the_image_is_announced_in_words(
        docker_engine: None, sandbox: Runner, home: Path, work: Path) -> None:
    (work / "sandbox.yaml").write_text(f"image: {BUSYBOX_IMAGE}\nnetwork: true\n"
                                       "memory: 2g\ncpus: 1\n")
    proc = sandbox("start", "--name", "t-announce", cwd=work, timeout=120)
    try:
        assert proc.returncode == 0, proc.stderr
        warning = [line for line in proc.stderr.decode().splitlines() if "loosens" in line]
        assert warning == [f"sandbox: warning: {work}/sandbox.yaml loosens the defaults: "
                           f"image {BUSYBOX_IMAGE}, network on, memory 2g"]
    finally:
        sandbox("purge", "t-announce")


def test_another_users_planted_project_entry_is_ignored_not_fatal(
        sandbox: Runner, home: Path, tmp_path: Path,
        fake_docker: tuple[Path, dict[str, str]]) -> None:
    """A link or FIFO named sandbox.yaml planted above our folder by another user (in /tmp,
    say) must neither hang nor block our start: it is ignored with a warning."""
    log, env = fake_docker
    shared = tmp_path / "shared"
    (shared / "work").mkdir(parents=True)
    (shared / "sandbox.yaml").symlink_to("/proc/kmsg")
    os.lchown(shared / "sandbox.yaml", 65534, 65534)
    proc = sandbox("start", "--image", BUSYBOX_IMAGE, env=env, cwd=shared / "work", timeout=20)
    err = proc.stderr.decode()
    assert f"ignoring {shared}/sandbox.yaml: it is owned by another user" in err
    assert log.exists()  # went on to docker (the stand-in fails it)
