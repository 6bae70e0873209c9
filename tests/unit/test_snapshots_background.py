"""The host-side halves of snapshots and detached processes, without an engine: the workspace
tar (hostile entries stay out), the unpacking of a snapshot's /app (nothing lands outside),
the Dockerfile's quoting, and the bounded log files."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from sandbox_cli import background, snapshots, volume
from sandbox_cli.errors import InvalidInput


def _tar_of(root: Path) -> tuple[tarfile.TarFile, snapshots.Walked]:
    out = io.BytesIO()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walked = snapshots.write_workspace_tar(fd, out)
    finally:
        os.close(fd)
    out.seek(0)
    return tarfile.open(fileobj=out), walked


def test_workspace_tar_keeps_folders_and_files_and_skips_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "app"
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f.txt").write_text("hello")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o4755)  # set-uid: dropped
    (root / "link").symlink_to("/etc/passwd")
    (root / "dirlink").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    os.link(root / "d" / "e" / "f.txt", root / "hard")
    tar, walked = _tar_of(root)
    members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["app", "app/d", "app/d/e", "app/d/e/f.txt", "app/hard",
                               "app/run.sh"]
    assert all(m.isdir() or m.isreg() for m in members.values())  # the hard link: a copy
    assert members["app/run.sh"].mode == 0o755
    reader = tar.extractfile(members["app/hard"])
    assert reader is not None and reader.read() == b"hello"
    assert walked.skipped == {"link": 2, "fifo": 1}
    assert (walked.files, walked.dirs, walked.bytes) == (3, 2, 20)


def _hostile_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x") -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o640
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            if kind == tarfile.REGTYPE:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("app", tarfile.DIRTYPE)
        add("app/ok.txt", data=b"fine")
        add("app/../escape.txt")
        add("/etc/abs.txt")
        add("other/x.txt")
        add("app/link", tarfile.SYMTYPE)
        add("app/dev", tarfile.CHRTYPE)
        add("app/sub/deep.txt", data=b"deep")
    return out.getvalue()


def test_unpack_of_a_hostile_tar_writes_nothing_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with volume.DirWalker(fd) as walker:
            walked = snapshots._unpack(io.BytesIO(_hostile_tar()), walker)
    finally:
        os.close(fd)
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert found == ["root", "root/ok.txt", "root/sub", "root/sub/deep.txt"]
    assert (root / "ok.txt").read_bytes() == b"fine"
    assert walked.files == 2 and sum(walked.skipped.values()) == 5


def test_dockerfile_quotes_values_and_resets_env_keys() -> None:
    base = {"Env": ["PATH=/bin", "TRICKY=a$HOME\"b\\"], "Entrypoint": None, "Cmd": ["sh"],
            "User": "", "WorkingDir": ""}
    text = snapshots.dockerfile("sha256:" + "0" * 64, base, ["API_KEY", "TRICKY", "bad-key"],
                                {"sandbox-cli.snapshot": "1"})
    assert 'ENV API_KEY=""' in text
    assert 'ENV TRICKY="a\\$HOME\\"b\\\\"' in text
    assert "bad-key" not in text
    assert 'ENTRYPOINT []' in text and 'CMD ["sh"]' in text and 'USER "0"' in text
    assert '"sandbox-cli.managed"=""' in text and '"sandbox-cli.snapshot"="1"' in text
    with pytest.raises(InvalidInput):
        snapshots._quote("line\nbreak")


def test_default_tag_is_a_valid_reference() -> None:
    assert snapshots.default_tag("My_Box.1-").startswith("sandbox-snapshot/my-box-1:")


def test_ring_log_keeps_the_latest_bytes_within_the_cap(tmp_path: Path) -> None:
    log = background._RingLog(str(tmp_path), "stdout")
    for index in range(50):
        log.write(bytes([65 + index % 26]) * (100 << 10))  # 5 MB in all
    log.write(b"END\n")
    log.close()
    stored = sum(p.stat().st_size for p in tmp_path.glob("stdout*.log"))
    assert stored <= background.LOG_CAP
    assert background._stored(str(tmp_path), "stdout").endswith(b"END\n")
    for path in tmp_path.glob("stdout*.log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_tail_takes_whole_lines() -> None:
    assert background._tail(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert background._tail(b"a\nb\nc", 1) == b"c"
    assert background._tail(b"a\n", 5) == b"a\n"
    assert background._tail(b"a\n", 0) == b""


def test_process_ids_are_checked() -> None:
    store = type("S", (), {"home": "/nonexistent"})()
    with pytest.raises(InvalidInput):
        background._proc_dir(store, "box", "../../x")  # type: ignore[arg-type]
