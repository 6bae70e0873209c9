"""The hostile container, round 2, host-side file access: huge sparse files, file leases, names
that carry terminal escapes or newlines, linked folders, and folders of many subfolders."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from pathlib import Path

from tests.conftest import CLI, Runner

QUICK = 20  # seconds: anything slower than this blocked or streamed far too much


def sh(sandbox: Runner, name: str, script: str) -> str:
    return sandbox("exec", name, "sh", "-c", script, check=True).stdout.decode()


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("sandbox: error:"), err
    return err


# --- read takes a bounded number of bytes ------------------------------------------------------

def test_read_refuses_a_sparse_terabyte_at_once(box: str, sandbox: Runner, home: Path) -> None:
    """`truncate -s 1T f; sandbox read box f > f` used to stream a terabyte of zeros."""
    sh(sandbox, box, "dd if=/dev/zero of=/app/big bs=1 count=0 seek=1099511627776 2>/dev/null")
    assert (home / "volumes" / box / "big").stat().st_size == 1 << 40
    proc = sandbox("read", box, "big", timeout=QUICK)
    assert proc.returncode == 4
    assert proc.stdout == b""
    assert "over the read limit of 1 GiB" in one_error_line(proc)


def test_read_limit_is_a_flag(box: str, sandbox: Runner) -> None:
    sandbox("write", box, "f", "x" * 5000, check=True)
    refused = sandbox("read", "--max-size", "4k", box, "f")
    assert refused.returncode == 4 and refused.stdout == b""
    assert "4 KiB" in one_error_line(refused)
    assert sandbox("read", "--max-size", "5000", box, "f").stdout == b"x" * 5000
    assert sandbox("read", box, "f", "--max-size", "1m").stdout == b"x" * 5000
    bad = sandbox("read", "--max-size", "lots", box, "f")
    assert bad.returncode == 2
    one_error_line(bad)


LEASE_HOLDER = textwrap.dedent("""
    import fcntl, os, signal, time
    signal.signal(signal.SIGIO, signal.SIG_IGN)  # hold on when the kernel asks for it back
    with open("/app/leased", "w") as fh:
        fh.write("data\\n")
    fd = os.open("/app/leased", os.O_RDONLY)
    fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE: lease-break-time (45 s) per opener
    print("held", flush=True)
    time.sleep(120)
""")


def test_read_never_waits_on_a_lease_the_container_holds(pybox: str, sandbox: Runner,
                                                         home: Path, tmp_path: Path) -> None:
    sandbox("write", pybox, "hold.py", LEASE_HOLDER, check=True)
    holder = subprocess.Popen([*CLI, "exec", pybox, "python3", "/app/hold.py"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"  # the sandbox user may take a lease
        for _ in range(2):  # the second open finds the lease still being broken
            proc = sandbox("read", pybox, "leased", timeout=QUICK)
            assert proc.returncode == 4 and proc.stdout == b""
            assert "lease" in one_error_line(proc)
    finally:
        os.killpg(holder.pid, signal.SIGTERM)
        holder.wait(timeout=60)


# --- messages never carry raw control characters --------------------------------------------

def test_names_with_newlines_and_escapes_never_forge_a_line(box: str, sandbox: Runner) -> None:
    name = "x\nsandbox: error: forged\x1b[2J\x07"
    sh(sandbox, box, "mkfifo \"$(printf 'x\\nsandbox: error: forged\\033[2J\\007')\"")
    proc = sandbox("read", box, name, timeout=QUICK)
    assert proc.returncode == 4
    err = one_error_line(proc)
    assert "\x1b" not in err and "\x07" not in err
    assert "x\\nsandbox: error: forged\\x1b[2J\\x07" in err


def test_copy_summary_escapes_a_hostile_destination(box: str, sandbox: Runner,
                                                    tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "a.txt").write_text("a")
    proc = sandbox("copy-to", box, "a.txt", "d\x1b]0;pwned\x07\nsandbox: error: forged/",
                   check=True)
    err = proc.stderr.decode()
    assert "\x1b" not in err and "\x07" not in err
    assert len(err.strip().splitlines()) == 1, err


# --- links in place of folders say so -----------------------------------------------------------

def test_a_linked_folder_is_called_a_symbolic_link(box: str, sandbox: Runner,
                                                   tmp_path: Path) -> None:
    sh(sandbox, box, "mkdir -p /app/real && ln -s /app/real /app/d && ln -s /etc /app/e")
    for argv in (("write", box, "d/f", "x"), ("read", box, "d/f"), ("write", box, "e/x/y", "z"),
                 ("copy-to", box, "a.txt", "d/")):
        (tmp_path / "work" / "a.txt").write_text("a")
        proc = sandbox(*argv)
        assert proc.returncode == 4, argv
        assert "is a symbolic link" in one_error_line(proc), argv
    assert sh(sandbox, box, "ls /app/real") == ""


def test_write_replaces_a_final_link_with_a_file(box: str, sandbox: Runner, home: Path) -> None:
    """As the README says: the link itself is replaced (renamed over), never written through."""
    sh(sandbox, box, "echo keep > /app/target && ln -s /app/target /app/link")
    sandbox("write", box, "link", "new", check=True)
    assert not (home / "volumes" / box / "link").is_symlink()
    assert sh(sandbox, box, "cat /app/link; cat /app/target") == "newkeep\n"


# --- purge of many folders ----------------------------------------------------------------------

def test_purge_removes_many_folders_the_container_made(box: str, sandbox: Runner,
                                                       home: Path) -> None:
    sh(sandbox, box, "cd /app && mkdir e && cd e && seq 1 20000 | xargs mkdir && "
                     "mkdir -p /app/full/a/b && touch /app/full/a/b/f /app/full/x && "
                     "mkdir /app/locked && touch /app/locked/f && chmod 0 /app/locked")
    proc = sandbox("purge", box, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not (home / "volumes" / box).exists()
