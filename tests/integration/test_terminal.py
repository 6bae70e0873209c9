"""What a person sees on a real terminal (a pseudo-terminal here) versus in a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from tests.conftest import CLI, Runner


def _on_terminal(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> bytes:
    """Run the CLI with stdout and stderr on a pseudo-terminal; return all it drew."""
    master, slave = pty.openpty()
    full_env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", **(env or {})}
    full_env.pop("NO_COLOR", None)
    if env and "NO_COLOR" in env:
        full_env["NO_COLOR"] = env["NO_COLOR"]
    proc = subprocess.Popen([*CLI, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=full_env, cwd=cwd)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks)
    return b"".join(chunks)


def test_ls_is_a_table_on_a_terminal(box: str, sandbox: Runner) -> None:
    drawn = _on_terminal("ls")
    assert b"NAME" in drawn and b"STATUS" in drawn and box.encode() in drawn
    assert b"\x1b[" in drawn  # styled header
    plain = _on_terminal("ls", env={"NO_COLOR": "1"})
    assert b"NAME" in plain and b"\x1b[" not in plain
    piped = sandbox("ls", check=True).stdout
    assert b"NAME" not in piped and piped.startswith(box.encode() + b"\t")


def test_copy_to_shows_progress_only_on_a_terminal(box: str, sandbox: Runner,
                                                   tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(300):
        (src / f"f{i}.txt").write_bytes(b"x" * 1000)
    drawn = _on_terminal("copy-to", box, "*.txt", "many", cwd=src)
    assert b"copying" in drawn and b"300/300" in drawn and b"copied 300 files" in drawn
    piped = sandbox("copy-to", box, "*.txt", "again", cwd=src, check=True)
    assert piped.stderr == b"sandbox: copied 300 files (293.0 KB) to /app/again\n"
