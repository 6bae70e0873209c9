"""Messages in one style: plurals and units."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.conftest import BUSYBOX_IMAGE, Runner


def test_plural_and_unit_messages(docker_engine: None, sandbox: Runner, tmp_path: Path) -> None:
    name = "t-" + uuid.uuid4().hex[:10]
    sandbox("start", "--name", name, "--image", BUSYBOX_IMAGE, check=True)
    try:
        work = tmp_path / "src"
        work.mkdir()
        (work / "one.txt").write_text("1\n")
        proc = sandbox("copy-to", name, "*.txt", cwd=work, check=True)
        assert proc.stderr == b"sandbox: copied 1 file (2 B) to /app/\n"
        proc = sandbox("exec", "--timeout", "1", name, "sleep", "30", timeout=60)
        assert proc.returncode == 124
        assert proc.stderr == (b"sandbox: error: timed out after 1 s; the command was stopped "
                               b"in the container\n")
    finally:
        proc = sandbox("purge", name)
    assert proc.stderr == f"sandbox: removed 1 sandbox: {name}\n".encode()


def test_write_dash_reads_stdin(box: str, sandbox: Runner, home: Path) -> None:
    sandbox("write", box, "f.bin", "-", input=b"\x00from stdin", check=True)
    assert (home / "volumes" / box / "f.bin").read_bytes() == b"\x00from stdin"
