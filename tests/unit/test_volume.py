"""Host-side file handling without a container: the directory walker (bounded descriptors, deep
paths, over-long names), copy-in permissions, copy-to's .gitignore, and the untrusted state file.
The folder plays the hostile container's part: links, FIFOs and trees thousands of levels deep."""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_cli import volume
from sandbox_cli.errors import UnsafePath
from sandbox_cli.selection import select_files
from sandbox_cli.state import SandboxRecord, StateStore

QUICK = 20  # seconds: anything slower than this blocked


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A sandbox folder and a directory descriptor for it; removed afterwards with the iterative
    remove_tree, as pytest's own clean-up (a recursive shutil.rmtree) fails on a deep tree."""
    folder = tmp_path / "box"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield folder, fd
    finally:
        os.close(fd)
        parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            volume.remove_tree(parent, "box")
        finally:
            os.close(parent)


@pytest.fixture
def low_fd_limit() -> Iterator[int]:
    """Lower this process's soft descriptor limit to 128 (as `ulimit -n 128`), then restore."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 128
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _host_file(tmp_path: Path, mode: int, data: bytes = b"#!/bin/sh\necho hi\n") -> int:
    path = tmp_path / f"src-{mode:o}"
    path.write_bytes(data)
    os.chmod(path, mode)
    return os.open(path, os.O_RDONLY)


# --- the walker: bounded descriptors, iterative, deep paths ----------------------------------

def test_copy_in_to_many_directories_stays_under_the_descriptor_limit(
        root: tuple[Path, int], tmp_path: Path, low_fd_limit: int) -> None:
    folder, root_fd = root
    before = _open_fds()
    src = _host_file(tmp_path, 0o644, b"data")
    count = 3 * low_fd_limit  # one descriptor kept per directory would run out long before
    try:
        with volume.DirWalker(root_fd) as walker:
            for i in range(count):
                os.lseek(src, 0, os.SEEK_SET)
                volume.copy_file_in(walker, ("top", f"d{i:04d}", "sub", "f"), src, 4)
                assert _open_fds() - before <= volume.DirWalker.CACHE_SIZE + 4
    finally:
        os.close(src)
    assert _open_fds() == before  # close() released every cached descriptor
    assert sorted(p.name for p in (folder / "top").iterdir()) == [f"d{i:04d}" for i in range(count)]
    assert (folder / "top" / f"d{count - 1:04d}" / "sub" / "f").read_bytes() == b"data"


def test_deep_path_is_walked_without_recursion_or_a_descriptor_per_level(
        root: tuple[Path, int], tmp_path: Path, low_fd_limit: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, root_fd = root
    parts = ("a",) * 1500 + ("x",)  # deeper than the interpreter's recursion limit
    assert volume.write_from(root_fd, parts, b"deep") == 4
    out = tmp_path / "out"
    with out.open("wb") as handle:
        assert volume.read_to(root_fd, parts, handle.fileno()) == 4
    assert out.read_bytes() == b"deep"
    monkeypatch.chdir(folder)  # too long for one path: check it from inside, a step at a time
    for _ in range(1500):
        os.chdir("a")
    assert Path("x").read_bytes() == b"deep"


def test_whole_path_longer_than_path_max_is_refused(root: tuple[Path, int],
                                                    tmp_path: Path) -> None:
    folder, root_fd = root
    parts = ("a",) * 3000 + ("x",)
    with pytest.raises(UnsafePath, match="too long"):
        volume.write_from(root_fd, parts, b"hi")
    with pytest.raises(UnsafePath, match="too long"):
        volume.read_to(root_fd, parts, 1)
    assert list(folder.iterdir()) == []  # refused before anything was created


@pytest.mark.parametrize("parts", [("n" * 256,), ("n" * 300, "f"), ("ok", "é" * 200)])
def test_name_longer_than_name_max_is_refused(root: tuple[Path, int], tmp_path: Path,
                                              parts: tuple[str, ...]) -> None:
    _, root_fd = root
    with pytest.raises(UnsafePath, match="too long") as caught:
        volume.write_from(root_fd, parts, b"hi")
    assert caught.value.message.startswith("/app/")
    with pytest.raises(UnsafePath, match="too long"):
        volume.read_to(root_fd, parts, 1)
    src = _host_file(tmp_path, 0o644)
    try:
        with volume.DirWalker(root_fd) as walker, pytest.raises(UnsafePath, match="too long"):
            volume.copy_file_in(walker, parts, src, 3)
    finally:
        os.close(src)


def test_evicted_directory_is_resolved_again_from_the_root(root: tuple[Path, int],
                                                           tmp_path: Path) -> None:
    """A descriptor dropped from the cache is never reused: the next lookup walks from the root
    with O_NOFOLLOW again, so a directory the container swapped for a link is refused."""
    folder, root_fd = root
    outside = tmp_path / "outside"
    outside.mkdir()
    with volume.DirWalker(root_fd) as walker:
        walker.dir_fd(("victim", "sub"), create=True)
        for i in range(volume.DirWalker.CACHE_SIZE + 2):
            walker.dir_fd((f"other{i}",), create=True)
        os.rename(folder / "victim", folder / "moved")
        (folder / "victim").symlink_to(outside)
        with pytest.raises(UnsafePath, match="refusing to follow"):
            walker.dir_fd(("victim", "sub"), create=True)
    assert list(outside.iterdir()) == []


# --- copy-in keeps the executable bit --------------------------------------------------------

@pytest.mark.parametrize(("source_mode", "expected"), [
    (0o755, 0o775), (0o644, 0o664), (0o700, 0o770), (0o4777, 0o775), (0o2751, 0o771),
])
def test_copy_file_in_keeps_permission_bits_shared_with_the_group(
        root: tuple[Path, int], tmp_path: Path, source_mode: int, expected: int) -> None:
    folder, root_fd = root
    src = _host_file(tmp_path, source_mode)
    try:
        with volume.DirWalker(root_fd) as walker:
            volume.copy_file_in(walker, ("bin", "tool"), src, 18, os.fstat(src).st_mode)
    finally:
        os.close(src)
    assert stat.S_IMODE((folder / "bin" / "tool").stat().st_mode) == expected
    assert (folder / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"


def test_copy_file_in_without_a_mode_makes_a_plain_file(root: tuple[Path, int],
                                                        tmp_path: Path) -> None:
    folder, root_fd = root
    src = _host_file(tmp_path, 0o755)
    old = os.umask(0o022)
    try:
        with volume.DirWalker(root_fd) as walker:
            volume.copy_file_in(walker, ("tool",), src, 18)
    finally:
        os.umask(old)
        os.close(src)
    assert stat.S_IMODE((folder / "tool").stat().st_mode) == 0o644


# --- copy-to's .gitignore is read safely -----------------------------------------------------

def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "keep.py").write_text("print(1)\n")
    (project / "notes.txt").write_text("notes\n")
    return project


def test_gitignore_symlink_is_not_followed(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (tmp_path / "elsewhere").write_text("*.txt\n")
    (project / ".gitignore").symlink_to(tmp_path / "elsewhere")
    chosen = select_files(str(project), ["*"])
    assert ("notes.txt",) in chosen.files


def test_regular_gitignore_is_still_used(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / ".gitignore").write_text("# comment\n*.txt\n")
    assert select_files(str(project), ["*"]).files == [(".gitignore",), ("keep.py",)]
    assert ("notes.txt",) in select_files(str(project), ["*"], use_gitignore=False).files


def test_gitignore_directory_is_ignored(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / ".gitignore").mkdir()
    assert ("notes.txt",) in select_files(str(project), ["*"]).files


def test_gitignore_is_read_up_to_one_mib(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / ".gitignore").write_bytes(b"#" + b"x" * (2 << 20) + b"\n*.txt\n")
    assert ("notes.txt",) in select_files(str(project), ["*"]).files


def _select_in_child(project: Path) -> subprocess.CompletedProcess[str]:
    """select_files in a child process capped at 512 MiB, so a failure cannot take us down."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
        from sandbox_cli.selection import select_files
        print(sorted(select_files({str(project)!r}, ["*"]).files))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=QUICK, stdin=subprocess.DEVNULL)


def test_gitignore_link_to_dev_zero_is_not_read(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / ".gitignore").symlink_to("/dev/zero")
    proc = _select_in_child(project)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "('notes.txt',)" in proc.stdout


def test_gitignore_fifo_does_not_block(tmp_path: Path) -> None:
    project = _project(tmp_path)
    os.mkfifo(project / ".gitignore")
    proc = _select_in_child(project)  # a blocking open would run into the timeout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "('notes.txt',)" in proc.stdout


# --- the state file: booleans and nesting ----------------------------------------------------

def _entry(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "box-1", "container_id": "c" * 64, "image": "img",
        "created_at": "2026-01-01T00:00:00Z", "expires_at": "2999-01-01T00:00:00Z",
        "keep": False, "network": False, "ports": [], "env_keys": [], "user": "1000:1000",
        "options": {"memory": "1g", "cpus": 1.0, "cap_add": ["NET_ADMIN"]},
    }
    entry.update(changes)
    return entry


@pytest.mark.parametrize("value", ["false", "true", "", "0", 1, 0, None, [], {}, [True]])
def test_keep_and_network_accept_only_json_booleans(value: object) -> None:
    record = SandboxRecord.from_json(_entry(keep=value, network=value))
    assert record is not None
    assert record.keep is False and record.network is False


def test_real_booleans_are_read() -> None:
    record = SandboxRecord.from_json(_entry(keep=True, network=True))
    assert record is not None and record.keep is True and record.network is True
    record = SandboxRecord.from_json(_entry(keep=False, network=False))
    assert record is not None and record.keep is False and record.network is False


@pytest.mark.parametrize("changes", [
    {"image": 5}, {"container_id": ["x"]}, {"user": None}, {"expires_at": 12},
    {"ports": "8080"}, {"env_keys": {"A": 1}}, {"ports": [["80"]]}, {"options": ["a", "b"]},
])
def test_entry_with_a_wrongly_typed_field_is_dropped(changes: dict[str, object]) -> None:
    assert SandboxRecord.from_json(_entry(**changes)) is None


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_state_file_nested_too_deep_reads_as_unreadable(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.ensure_dirs()
    Path(store.path).write_text(_nested(200_000))
    assert store.load() == {}
    assert store.get("box-1") is None


def test_transaction_moves_a_too_deep_state_file_aside(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.ensure_dirs()
    Path(store.path).write_text('{"sandboxes": ' + _nested(200_000) + "}")
    record = SandboxRecord.from_json(_entry())
    assert record is not None
    with store.transaction() as records:
        records["box-1"] = record
    assert set(store.load()) == {"box-1"}
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text().startswith('{"sandboxes": [[[')


def test_deeply_nested_option_neither_breaks_loading_nor_saving(tmp_path: Path) -> None:
    """Nesting json.loads accepts can still be too deep to copy or dump: such a value is
    dropped when read, so no later transaction fails on it."""
    store = StateStore(str(tmp_path))
    store.ensure_dirs()
    deep = json.loads(_nested(700))
    entry = _entry(options={"memory": "1g", "deep": deep})
    Path(store.path).write_text(json.dumps({"version": 1, "sandboxes": {"box-1": entry}}))
    assert store.load()["box-1"].options == {"memory": "1g"}
    with store.transaction() as records:
        records["box-1"].keep = True
    saved = json.loads(Path(store.path).read_text())["sandboxes"]["box-1"]
    assert saved["keep"] is True and saved["options"] == {"memory": "1g"}


def test_remove_tree_reads_a_wide_folder_a_bounded_number_of_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """purge rescanned a folder from its start after each subfolder (80,000 empty subfolders:
    58 s against 9 s for rm -rf); now empty ones go by rmdir and names are read in batches."""
    import sandbox_cli.volume as volume_module

    victim = tmp_path / "victim"
    victim.mkdir()
    for i in range(3000):
        (victim / f"d{i}").mkdir()
    (victim / "d7" / "f").write_text("x")
    (victim / "d8" / "sub").mkdir()
    scans = []
    real = os.scandir

    def counting(fd: int) -> object:
        scans.append(fd)
        return real(fd)

    monkeypatch.setattr(volume_module.os, "scandir", counting)
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        volume_module.remove_tree(parent, "victim")
    finally:
        os.close(parent)
    assert not victim.exists()
    assert len(scans) <= 6, len(scans)
