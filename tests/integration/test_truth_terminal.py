"""A terminal is allocated only when stdin, stdout and stderr all are terminals (so
`2>err.log` keeps stderr apart), or when -t asks; -T never."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from tests.conftest import CLI, Runner

# Prints whether the command has a terminal on stdout, and one line on each stream.
PROBE = ["sh", "-c", "if [ -t 1 ]; then echo tty; else echo notty; fi; echo to-stderr >&2"]


def _run_on_pty(*args: str, stderr_file: Path | None = None) -> tuple[int, bytes]:
    """Run the CLI with stdin and stdout (and stderr, unless STDERR_FILE) on a pty."""
    master, slave = pty.openpty()
    err = open(stderr_file, "wb") if stderr_file else None  # noqa: SIM115
    try:
        proc = subprocess.Popen([*CLI, *args], stdin=slave, stdout=slave,
                                stderr=err if err else slave, env={**os.environ, "TERM": "dumb"})
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
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if err:
            err.close()
    return code, b"".join(chunks)


def test_stderr_to_a_file_from_a_terminal_stays_apart(box: str, tmp_path: Path) -> None:
    err = tmp_path / "err.log"
    code, drawn = _run_on_pty("exec", box, *PROBE, stderr_file=err)
    assert code == 0
    assert b"notty" in drawn and b"to-stderr" not in drawn
    assert err.read_bytes() == b"to-stderr\n"


def test_all_three_terminals_get_a_tty_and_no_tty_refuses_one(box: str) -> None:
    code, drawn = _run_on_pty("exec", box, *PROBE)
    assert code == 0 and b"tty" in drawn and b"notty" not in drawn
    code, drawn = _run_on_pty("exec", "-T", box, *PROBE)
    assert code == 0 and b"notty" in drawn


def test_tty_forced(box: str, tmp_path: Path) -> None:
    code, drawn = _run_on_pty("exec", "--tty", box, *PROBE, stderr_file=tmp_path / "e")
    assert code == 0 and b"tty" in drawn and b"notty" not in drawn


def test_run_follows_the_same_rule(docker_engine: None, sandbox: Runner,
                                   tmp_path: Path) -> None:
    from tests.conftest import BUSYBOX_IMAGE

    err = tmp_path / "err.log"
    code, drawn = _run_on_pty("run", "--image", BUSYBOX_IMAGE, "--", *PROBE, stderr_file=err)
    assert code == 0 and b"notty" in drawn and err.read_bytes().endswith(b"to-stderr\n")
    code, drawn = _run_on_pty("run", "-t", "--image", BUSYBOX_IMAGE, "--", *PROBE,
                              stderr_file=tmp_path / "e")
    assert code == 0 and b"tty" in drawn and b"notty" not in drawn


def test_tty_needs_a_terminal_and_json_cannot_have_one(box: str, sandbox: Runner) -> None:
    proc = sandbox("exec", "-t", box, "true", input=b"data")
    assert proc.returncode == 2 and proc.stderr.startswith(b"sandbox: error: --tty needs")
    proc = sandbox("exec", "--json", "-t", box, "true")
    assert proc.returncode == 2 and b"cannot use --tty" in proc.stderr
