"""A hostile container plants links, FIFOs, sockets, devices and hard links in its folder; the
host-side read / write / copy-to must never follow, block on or write through any of them, and
must refuse bad paths before touching the filesystem."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox_cli import sandbox as core
from sandbox_cli import validate
from sandbox_cli.errors import InvalidInput
from sandbox_cli.state import StateStore
from tests.conftest import Runner

SECRET = b"TOP-SECRET-HOST-DATA-7d1c"
QUICK = 20  # seconds: anything slower than this blocked


def sh(sandbox: Runner, name: str, script: str) -> str:
    """Run SCRIPT with sh inside sandbox NAME (must succeed); its stdout as text."""
    return sandbox("exec", name, "sh", "-c", script, check=True).stdout.decode()


def folder(home: Path, name: str) -> Path:
    return home / "volumes" / name


def one_error_line(proc: object) -> None:
    """The CLI failed the way a user should see it: one line on stderr, no traceback."""
    err = proc.stderr.decode()  # type: ignore[attr-defined]
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("sandbox: error:"), err


def snapshot(path: Path) -> dict[str, bytes | str]:
    """Every entry below PATH with its content (files) or kind, to prove nothing changed."""
    found: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(path):
        for entry in dirs + files:
            full = Path(root, entry)
            rel = str(full.relative_to(path))
            mode = full.lstat().st_mode
            found[rel] = full.read_bytes() if stat.S_ISREG(mode) else stat.filemode(mode)
    return found


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret.txt"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    path = tmp_path / "host-dir"
    path.mkdir()
    (path / "file").write_bytes(SECRET)
    (path / "sub").mkdir()
    (path / "sub" / "file").write_bytes(SECRET)
    return path


# --- 2. symbolic links never lead out --------------------------------------------------------

def test_read_refuses_final_link_to_host_file(box: str, sandbox: Runner,
                                              secret_file: Path) -> None:
    sh(sandbox, box, f"ln -s {secret_file} /app/link && mkdir sub && ln -s {secret_file} sub/l")
    for path in ("link", "/app/link", "sub/l", "./sub//l"):
        proc = sandbox("read", box, path)
        assert proc.returncode == 4, (path, proc.stderr)
        assert SECRET not in proc.stdout and SECRET not in proc.stderr
        one_error_line(proc)


def test_write_replaces_final_link_never_writes_through(box: str, sandbox: Runner, home: Path,
                                                        secret_file: Path) -> None:
    sh(sandbox, box, f"ln -s {secret_file} /app/link")
    proc = sandbox("write", box, "link", "from-host")
    assert secret_file.read_bytes() == SECRET
    assert proc.returncode in (0, 4), proc.stderr
    if proc.returncode == 0:  # the link itself was replaced by a regular file
        planted = folder(home, box) / "link"
        assert stat.S_ISREG(planted.lstat().st_mode)
        assert planted.read_bytes() == b"from-host"
        assert sh(sandbox, box, "cat /app/link") == "from-host"


def test_intermediate_directory_link_is_not_followed(box: str, sandbox: Runner, home: Path,
                                                     secret_dir: Path) -> None:
    sh(sandbox, box, f"ln -s {secret_dir} /app/d && mkdir -p a && ln -s {secret_dir} a/b")
    before = snapshot(secret_dir)
    for path in ("d/file", "d/sub/file", "a/b/file", "a/b/sub/file"):
        proc = sandbox("read", box, path)
        assert proc.returncode == 4, (path, proc.stderr)
        assert SECRET not in proc.stdout
        one_error_line(proc)
    for path in ("d/file", "d/new", "d/sub/file", "a/b/new", "a/b/newdir/new"):
        proc = sandbox("write", box, path, "from-host")
        assert proc.returncode == 4, (path, proc.stderr)
        one_error_line(proc)
    assert snapshot(secret_dir) == before


def test_dangling_links_never_create_host_files(box: str, sandbox: Runner, home: Path,
                                                tmp_path: Path) -> None:
    new_file, new_dir = tmp_path / "created-file", tmp_path / "created-dir"
    sh(sandbox, box, f"ln -s {new_file} /app/x && ln -s {new_dir} /app/y")
    proc = sandbox("write", box, "x", "from-host")
    assert proc.returncode in (0, 4), proc.stderr
    assert sandbox("write", box, "y/inner", "from-host").returncode == 4
    assert sandbox("write", box, "y/deeper/inner", "from-host").returncode == 4
    assert not os.path.lexists(new_file)
    assert not os.path.lexists(new_dir)
    if proc.returncode == 0:
        assert (folder(home, box) / "x").read_bytes() == b"from-host"


def test_copy_to_never_follows_planted_destination_links(box: str, sandbox: Runner, home: Path,
                                                         tmp_path: Path, secret_dir: Path,
                                                         secret_file: Path) -> None:
    work = tmp_path / "work"
    (work / "pkg").mkdir(parents=True)
    (work / "src.txt").write_bytes(b"host source")
    (work / "pkg" / "file").write_bytes(b"host pkg file")
    # dest itself a link; a link below dest; a final file-name link at the destination.
    sh(sandbox, box, f"ln -s {secret_dir} /app/dest && mkdir -p deep && "
                     f"ln -s {secret_dir} deep/pkg && mkdir -p out && "
                     f"ln -s {secret_file} out/src.txt")
    before = snapshot(secret_dir)
    assert sandbox("copy-to", box, "src.txt", "dest").returncode == 4
    assert sandbox("copy-to", box, "pkg/*", "deep").returncode == 4
    assert sandbox("copy-to", box, "src.txt", "dest/sub").returncode == 4
    proc = sandbox("copy-to", box, "src.txt", "out")
    assert proc.returncode in (0, 4), proc.stderr
    assert snapshot(secret_dir) == before
    assert secret_file.read_bytes() == SECRET
    if proc.returncode == 0:
        copied = folder(home, box) / "out" / "src.txt"
        assert stat.S_ISREG(copied.lstat().st_mode) and copied.read_bytes() == b"host source"


# --- 4. FIFOs, sockets and devices are never opened ------------------------------------------

def plant_specials(sandbox: Runner, name: str, home: Path) -> None:
    sh(sandbox, name, "mkfifo /app/fifo && python -c \"import socket; "
                      "socket.socket(socket.AF_UNIX).bind('/app/sock')\"")
    base = folder(home, name)
    # The container cannot mknod with its capabilities dropped; the host (root) can.
    os.mknod(base / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(base / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    assert stat.S_ISFIFO((base / "fifo").lstat().st_mode)
    assert stat.S_ISSOCK((base / "sock").lstat().st_mode)


def test_read_never_opens_fifo_socket_or_device(pybox: str, sandbox: Runner,
                                                home: Path) -> None:
    plant_specials(sandbox, pybox, home)
    for special in ("fifo", "sock", "null", "zero"):
        began = time.monotonic()
        proc = sandbox("read", pybox, special, timeout=QUICK)
        assert time.monotonic() - began < QUICK
        assert proc.returncode == 4, (special, proc.stderr)
        one_error_line(proc)


def test_write_never_blocks_on_or_writes_into_special_files(pybox: str, sandbox: Runner,
                                                            home: Path) -> None:
    plant_specials(sandbox, pybox, home)
    for special in ("fifo", "sock", "null"):
        proc = sandbox("write", pybox, special, "from-host", timeout=QUICK)
        assert proc.returncode in (0, 4), (special, proc.stderr)
        target = folder(home, pybox) / special
        if proc.returncode == 0:  # the special file was replaced, not written into
            assert stat.S_ISREG(target.lstat().st_mode), special
            assert target.read_bytes() == b"from-host"


def test_copy_to_never_blocks_on_a_planted_fifo(box: str, sandbox: Runner, home: Path,
                                                tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "data.txt").write_bytes(b"copied")
    sh(sandbox, box, "mkfifo /app/data.txt")
    proc = sandbox("copy-to", box, "data.txt", timeout=QUICK)
    assert proc.returncode == 0, proc.stderr
    assert (folder(home, box) / "data.txt").read_bytes() == b"copied"


# --- 5. hard links are never written through -------------------------------------------------

def test_write_never_writes_through_container_hard_link(box: str, sandbox: Runner,
                                                        home: Path) -> None:
    sh(sandbox, box, "echo original > other && ln other h && ln other h2")
    assert os.stat(folder(home, box) / "other").st_nlink == 3
    assert sandbox("write", box, "h", "new", check=True).returncode == 0
    assert sh(sandbox, box, "cat other") == "original\n"
    assert sh(sandbox, box, "cat h") == "new"
    # copy-to onto a hard-linked destination replaces the name too.
    (home.parent / "work" / "h2").write_bytes(b"copied")
    sandbox("copy-to", box, "h2", check=True)
    assert sh(sandbox, box, "cat other h2") == "original\ncopied"


def test_write_never_writes_through_host_hard_link_to_outside(start_box: Callable[..., str],
                                                              sandbox: Runner, home: Path,
                                                              tmp_path: Path) -> None:
    # An uncapped folder: a capped one is a file system of its own, which no link can enter.
    box = start_box("--disk", "unlimited")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(SECRET)
    os.link(outside, folder(home, box) / "hl")  # same filesystem: a real second name
    assert os.stat(outside).st_nlink == 2
    assert sandbox("write", box, "hl", "from-host", check=True).returncode == 0
    assert outside.read_bytes() == SECRET
    assert (folder(home, box) / "hl").read_bytes() == b"from-host"


# --- 7. bad paths are refused before any filesystem call -------------------------------------

BAD_PATHS = ["..", "../x", "a/../../x", "./..", "/etc/passwd", "/app/../x", "/app/..",
             "/appx/y", "", "/app", "."]


def test_cli_refuses_bad_paths_with_usage_error(box: str, sandbox: Runner, home: Path) -> None:
    # A neighbour's file one level up: what '..' would reach from the sandbox folder.
    (home / "volumes" / "x").write_bytes(SECRET)
    for path in BAD_PATHS:
        read = sandbox("read", box, path)
        assert read.returncode == 2, (path, read.stderr)
        assert SECRET not in read.stdout
        one_error_line(read)
        write = sandbox("write", box, path, "from-host")
        assert write.returncode == 2, (path, write.stderr)
        one_error_line(write)
    assert (home / "volumes" / "x").read_bytes() == SECRET
    assert os.listdir(folder(home, box)) == []


def test_bad_path_checked_before_the_sandbox_is_even_looked_up(sandbox: Runner) -> None:
    # No such sandbox: had the path been looked at after the name, this would be exit code 3.
    for cmd in (("read", "no-such-box", "../x"), ("write", "no-such-box", "../x", "y")):
        proc = sandbox(*cmd)
        assert proc.returncode == 2, proc.stderr
        one_error_line(proc)


@pytest.mark.parametrize("path", ["a\0b", "\0", "../a\0", "/app/\0x"])
def test_nul_bytes_refused_before_any_filesystem_call(home: Path, path: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def touched(*args: object, **kwargs: object) -> None:
        raise AssertionError("filesystem touched before the path was checked")

    monkeypatch.setattr(core, "require", touched)
    monkeypatch.setattr(core.volume, "opened_root", touched)
    with pytest.raises(InvalidInput):
        validate.sandbox_path(path)
    store = StateStore()
    with pytest.raises(InvalidInput):
        core.write_file(store, "some-box", path, b"data")
    with pytest.raises(InvalidInput):
        core.read_file(store, "some-box", path, 1)
    with pytest.raises(InvalidInput):
        core.copy_to(store, "some-box", ["*"], dest=path)


def test_copy_to_refuses_escaping_patterns_and_destinations(box: str, sandbox: Runner,
                                                            home: Path, tmp_path: Path) -> None:
    # Files a climbing pattern would reach: beside the work folder and in the sandbox home.
    (tmp_path / "outside.txt").write_bytes(SECRET)
    (tmp_path / "work" / "f.txt").write_bytes(b"x")
    for pattern in ("../*", "../outside.txt", "a/../../outside.txt", "/etc/passwd", "/*",
                    "sub/../..", "!x", "", f"{tmp_path}/outside.txt"):
        proc = sandbox("copy-to", box, pattern)
        assert proc.returncode == 2, (pattern, proc.stderr)
        one_error_line(proc)
        assert b"invalid pattern" in proc.stderr, proc.stderr  # refused, not merely unmatched
    for dest in ("..", "../other", "/etc", "/app/../x", "a/../.."):
        proc = sandbox("copy-to", box, "f.txt", dest)
        assert proc.returncode == 2, (dest, proc.stderr)
        one_error_line(proc)
        assert b"invalid path" in proc.stderr, proc.stderr
    assert os.listdir(folder(home, box)) == []
    assert sorted(os.listdir(home / "volumes")) == [box]


def test_copy_to_skips_source_links_pointing_outside(box: str, sandbox: Runner, home: Path,
                                                     tmp_path: Path, secret_file: Path,
                                                     secret_dir: Path) -> None:
    work = tmp_path / "work"
    (work / "real").mkdir(parents=True)
    (work / "real" / "ok.txt").write_bytes(b"fine")
    (work / "link.txt").symlink_to(secret_file)
    (work / "linkdir").symlink_to(secret_dir)
    (work / "real" / "up.txt").symlink_to("../../host-secret.txt")  # relative, climbs out
    proc = sandbox("copy-to", box, "**", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["files"] == 1 and summary["skippedLinks"] >= 2
    copied = snapshot(folder(home, box))
    assert set(copied) == {"real", "real/ok.txt"} and copied["real/ok.txt"] == b"fine"
    # Naming only the links: nothing to copy, and nothing read through them.
    for pattern in ("link.txt", "linkdir/*", "linkdir/**", "real/up.txt"):
        proc = sandbox("copy-to", box, pattern)
        assert proc.returncode == 2, (pattern, proc.stderr)
        one_error_line(proc)
    assert set(snapshot(folder(home, box))) == {"real", "real/ok.txt"}
