"""The CLI against hostile inputs to its host-side file code: trees with more directories than a
process may hold descriptors, paths thousands of levels deep, over-long names, a copy-to source
whose .gitignore is a FIFO or a link to /dev/zero, and a state file nested beyond the parser."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

from tests.conftest import CLI, Runner

QUICK = 20  # seconds: anything slower than this blocked


def folder(home: Path, name: str) -> Path:
    return home / "volumes" / name


def one_error_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The CLI failed the way a user should see it: one line on stderr, no traceback."""
    err = proc.stderr.decode()
    assert "Traceback" not in err, err[-3000:]
    assert len(err.strip().splitlines()) == 1, err[-3000:]
    assert err.startswith("sandbox: error:"), err[-3000:]
    return err


def _ulimit_n_1024() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def test_copy_to_more_directories_than_ulimit_n(box: str, home: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    for i in range(1100):
        sub = work / "tree" / f"d{i:04d}"
        sub.mkdir(parents=True)
        (sub / "f.txt").write_text(f"file {i}\n")
    proc = subprocess.run([*CLI, "copy-to", box, "tree/**", "dest"], cwd=work,
                          capture_output=True, timeout=300, stdin=subprocess.DEVNULL,
                          preexec_fn=_ulimit_n_1024)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    copied = folder(home, box) / "dest" / "tree"
    assert len(list(copied.iterdir())) == 1100
    assert (copied / "d1099" / "f.txt").read_text() == "file 1099\n"


def test_write_and_read_a_path_two_thousand_levels_deep(box: str, sandbox: Runner) -> None:
    path = "a/" * 2000 + "x"  # /app/ + 4001 bytes: still within PATH_MAX
    proc = sandbox("write", box, path, "deep-data")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    proc = sandbox("read", box, path)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout == b"deep-data"


def test_path_longer_than_path_max_is_refused(box: str, sandbox: Runner, home: Path) -> None:
    path = "a/" * 3000 + "x"
    for command in (("write", box, path, "hi"), ("read", box, path)):
        proc = sandbox(*command)
        assert proc.returncode == 4, proc.stderr.decode()[-3000:]
        assert "too long" in one_error_line(proc)
    assert list(folder(home, box).iterdir()) == []


def test_name_longer_than_name_max_is_refused(box: str, sandbox: Runner, home: Path) -> None:
    for path in ("n" * 256, "n" * 300 + "/file", "ok/" + "é" * 200):
        for command in (("write", box, path, "hi"), ("read", box, path)):
            proc = sandbox(*command)
            assert proc.returncode == 4, (command[0], proc.stderr.decode()[-3000:])
            err = one_error_line(proc)
            assert "too long" in err and "/app/" in err
    assert [p.name for p in folder(home, box).iterdir()] == []


def test_copy_to_with_a_fifo_gitignore_does_not_block(box: str, sandbox: Runner,
                                                      home: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "data.txt").write_text("copied\n")
    os.mkfifo(work / ".gitignore")
    proc = sandbox("copy-to", box, "*.txt", timeout=QUICK)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert (folder(home, box) / "data.txt").read_text() == "copied\n"


def test_copy_to_with_a_gitignore_linked_to_dev_zero(box: str, sandbox: Runner,
                                                     home: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "data.txt").write_text("copied\n")
    (work / ".gitignore").symlink_to("/dev/zero")
    proc = sandbox("copy-to", box, "*.txt", timeout=QUICK)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert (folder(home, box) / "data.txt").read_text() == "copied\n"


def test_state_file_nested_too_deep_is_an_unreadable_file(sandbox: Runner, home: Path) -> None:
    """No engine needed: read and write consult the state file before any docker call."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "state.json").write_text("[" * 200_000 + "]" * 200_000)
    for command in (("read", "box-1", "x"), ("write", "box-1", "x", "hi")):
        proc = sandbox(*command, timeout=QUICK)
        assert proc.returncode == 3, proc.stderr.decode()[-3000:]
        assert "no sandbox named" in one_error_line(proc)
