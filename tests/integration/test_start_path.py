"""What `start` and `run` spend their time on: the snapshot check overlaps the container's
creation, so does `run`'s folder cap, and the plain forms (`start`, `run CMD`, with --image
and --name at most) skip typer and behave exactly as the typer-parsed forms."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import BUSYBOX_IMAGE, DOCKER, Runner, typer_imported


def _ordering_shim(tmp_path: Path, meet: Path | None = None) -> tuple[Path, dict[str, str]]:
    """SANDBOX_DOCKER: the real docker, logging when `image inspect` and `run`/`create` begin.
    Each waits (at most 10 s) for the other to begin, and logs `inspect-met` / `VERB-met` if
    it did: both lines prove the two overlapped, whichever the scheduler started first
    (nothing here is a timed assertion). With MEET, a run/create waits for that flag file
    instead of the inspect."""
    log, made, asked = tmp_path / "order.log", tmp_path / "made.flag", tmp_path / "asked.flag"
    meet = meet or asked
    wait = 'i=0; while [ ! -e "$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done\n'
    script = tmp_path / "docker-order"
    script.write_text(
        "#!/bin/sh\n"
        f'log={log}\n'
        f'meets() {{ {wait}  [ -e "$1" ]; }}\n'
        'if [ "$1" = image ] && [ "$2" = inspect ]; then\n'
        f'  echo inspect-begin >> "$log"; : > {asked}\n'
        f'  if meets {made}; then echo inspect-met >> "$log"; fi\n'
        f'  {DOCKER} "$@"; rc=$?; echo inspect-end >> "$log"; exit $rc\n'
        'fi\n'
        'case "$1" in run|create)\n'
        f'  verb=$1; echo "$verb-begin" >> "$log"; : > {made}\n'
        f'  if meets {meet}; then echo "$verb-met" >> "$log"; fi;;\n'
        'esac\n'
        f'exec {DOCKER} "$@"\n')
    script.chmod(0o755)
    return log, {"SANDBOX_DOCKER": str(script)}


def _overlapped(log: Path, verb: str) -> None:
    lines = log.read_text().split()
    assert {"inspect-met", f"{verb}-met", "inspect-end"} <= set(lines), lines


def test_start_asks_whether_the_image_is_a_snapshot_while_the_container_is_made(
        docker_engine: None, sandbox: Runner, tmp_path: Path) -> None:
    log, env = _ordering_shim(tmp_path)
    name = "t-" + os.urandom(4).hex()
    try:
        sandbox("start", "--name", name, "--image", BUSYBOX_IMAGE, env=env, timeout=60,
                check=True)
        _overlapped(log, "run")
        assert sandbox("exec", name, "true").returncode == 0
    finally:
        sandbox("purge", name)


def test_run_asks_whether_the_image_is_a_snapshot_while_the_container_is_made(
        docker_engine: None, sandbox: Runner, tmp_path: Path) -> None:
    log, env = _ordering_shim(tmp_path)
    proc = sandbox("run", "--image", BUSYBOX_IMAGE, "--", "echo", "hi", env=env, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, b"hi\n"), proc.stderr
    _overlapped(log, "create")


def _imports(sandbox: Runner, *args: str, input: bytes | None = None,
             cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, bool]:
    """Run the CLI with -X importtime: (the process, whether typer was imported). The
    import lines are taken out of its stderr."""
    proc = sandbox(*args, input=input, cwd=cwd, env={"PYTHONPROFILEIMPORTTIME": "1"})
    return proc, typer_imported(proc)


def test_plain_start_skips_typer_and_matches_the_typer_path(
        docker_engine: None, sandbox: Runner, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "sandbox.yaml").write_text("memory: 2g\n")  # a loosening: announced by both
    fast, slow = ("t-" + os.urandom(4).hex() for _ in range(2))
    try:
        quick, typer_seen = _imports(sandbox, "start", f"--name={fast}", "--image",
                                     BUSYBOX_IMAGE, cwd=project)
        assert not typer_seen
        parsed, typer_used = _imports(sandbox, "start", "--name", slow, "--image",
                                      BUSYBOX_IMAGE, "--ttl", "1h", cwd=project)
        assert typer_used
        assert (quick.returncode, quick.stdout) == (0, f"{fast}\n".encode()), quick.stderr
        assert (parsed.returncode, parsed.stdout) == (0, f"{slow}\n".encode()), parsed.stderr
        assert quick.stderr == parsed.stderr
        assert b"loosens the defaults: memory 2g" in quick.stderr.replace(b"=", b" ")
        rows = {r["name"]: r for r in json.loads(sandbox("ls", "--json", check=True).stdout)}
        for key in ("image", "network", "keep", "storage"):
            assert rows[fast][key] == rows[slow][key], key
        again, _ = _imports(sandbox, "start", "--name", fast, "--image", BUSYBOX_IMAGE)
        assert again.returncode == 2
        assert again.stderr == f"sandbox: error: a sandbox named '{fast}' already " \
                               "exists\n".encode()
    finally:
        sandbox("purge", fast, slow)


def test_plain_run_skips_typer_and_keeps_codes_stdin_and_refusals(
        docker_engine: None, sandbox: Runner) -> None:
    ran, typer_seen = _imports(sandbox, "run", "--image", BUSYBOX_IMAGE, "sh", "-c",
                               "cat; echo err >&2; exit 3", input=b"piped\n")
    assert not typer_seen
    assert (ran.returncode, ran.stdout, ran.stderr) == (3, b"piped\n", b"err\n")
    missing, typer_seen = _imports(sandbox, "run", "--image", BUSYBOX_IMAGE, "--", "pyhton")
    assert not typer_seen
    assert (missing.returncode, missing.stdout) == (127, b"")
    assert missing.stderr == b"sandbox: error: command not found in the sandbox: 'pyhton'\n"
    # Anything else is typer's: an option of run's after --image, or no command at all.
    timed, typer_used = _imports(sandbox, "run", "--image", BUSYBOX_IMAGE, "--timeout", "30",
                                 "true")
    assert typer_used and timed.returncode == 0
    bare, typer_used = _imports(sandbox, "run", "--image", BUSYBOX_IMAGE)
    assert typer_used and bare.returncode == 2
    assert json.loads(sandbox("ls", "--json", check=True).stdout) == []


def test_run_caps_its_folder_while_the_container_is_created(
        docker_engine: None, sandbox: Runner, tmp_path: Path) -> None:
    """mkfs overlaps the create, and the command still meets the cap: its folder is mounted
    before `docker start`. Each side waits (at most 10 s) for the other to begin and logs
    that it met it, so the log proves the overlap whichever the scheduler starts first."""
    mkfs_began = tmp_path / "mkfs.flag"
    log, env = _ordering_shim(tmp_path, meet=mkfs_began)
    real = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
    assert real is not None
    tools = tmp_path / "tools"
    tools.mkdir()
    shim = tools / "mkfs.ext4"
    shim.write_text(
        "#!/bin/sh\n"
        f'echo mkfs-begin >> {log}; : > {mkfs_began}; made={tmp_path / "made.flag"}; i=0\n'
        'while [ ! -e "$made" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done\n'
        f'if [ -e "$made" ]; then echo mkfs-met >> {log}; fi\n'
        f'{real} "$@"; rc=$?; echo mkfs-end >> {log}; exit $rc\n')
    shim.chmod(0o755)
    env["PATH"] = f"{tools}:{os.environ['PATH']}"
    fill = "head -c 40000000 /dev/zero > big; echo rc=$?; wc -c < big"
    proc = sandbox("run", "--image", BUSYBOX_IMAGE, "--disk", "16m", "--", "sh", "-c", fill,
                   env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().split()
    # Each met the other before going on: neither ran before the other began.
    assert {"create-met", "mkfs-met", "mkfs-end"} <= set(lines), lines
    said, size = proc.stdout.decode().split()
    assert said != "rc=0" and int(size) < 16 * 2**20, proc.stdout


def test_a_failed_cap_undoes_the_run(docker_engine: None, sandbox: Runner,
                                     tmp_path: Path, home: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    shim = tools / "mkfs.ext4"
    shim.write_text("#!/bin/sh\necho 'mkfs.ext4: refused' >&2\nexit 1\n")
    shim.chmod(0o755)
    name = "t-" + os.urandom(4).hex()
    proc = sandbox("run", "--name", name, "--image", BUSYBOX_IMAGE, "--", "true",
                   env={"PATH": f"{tools}:{os.environ['PATH']}"}, timeout=60)
    assert proc.returncode == 7, proc.stderr  # as when made before the create
    assert proc.stderr == b"sandbox: error: mkfs.ext4 failed: mkfs.ext4: refused\n"
    assert not (home / "volumes" / name).exists()
    assert not list((home / "disks").glob(f"{name}*"))
    made = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"name=^{name}$"],
                          capture_output=True, text=True, timeout=30).stdout
    assert made.strip() == ""


def test_plain_read_and_write_skip_typer_and_match_the_typer_path(
        box: str, sandbox: Runner) -> None:
    """`read NAME PATH` and `write NAME PATH [TEXT]` take the typer-free path; the same
    command with an option (`--max-size`) or a `--` goes through typer: same bytes, same
    refusals, same exit codes, in both workspace kinds' shared body."""
    wrote, typer_seen = _imports(sandbox, "write", box, "a.txt", "hello")
    assert (wrote.returncode, typer_seen) == (0, False), wrote.stderr
    piped, typer_seen = _imports(sandbox, "write", box, "b.bin", "-", input=b"\0\1binary")
    assert (piped.returncode, typer_seen) == (0, False), piped.stderr
    via_stdin, typer_seen = _imports(sandbox, "write", box, "c.txt", input=b"from stdin")
    assert (via_stdin.returncode, typer_seen) == (0, False), via_stdin.stderr
    for path, want in (("a.txt", b"hello"), ("b.bin", b"\0\1binary"), ("c.txt", b"from stdin")):
        quick, typer_seen = _imports(sandbox, "read", box, path)
        parsed, typer_used = _imports(sandbox, "read", "--max-size", "1m", box, path)
        assert (typer_seen, typer_used) == (False, True)
        assert quick.stdout == parsed.stdout == want and quick.returncode == 0
    # refusals: the same line and code whichever path parsed
    for args in (("no-such-box", "a.txt"), (box, "../escape"), (box, "missing.txt")):
        quick, typer_seen = _imports(sandbox, "read", *args)
        parsed, typer_used = _imports(sandbox, "read", "--max-size", "1g", *args)
        assert (typer_seen, typer_used) == (False, True)
        assert quick.returncode == parsed.returncode != 0, args
        assert quick.stderr == parsed.stderr and quick.stderr.startswith(b"sandbox: error: ")
    # an option-looking TEXT or PATH goes to typer, which refuses it as before
    dashed, typer_used = _imports(sandbox, "write", box, "d.txt", "-x")
    assert typer_used and dashed.returncode == 2
