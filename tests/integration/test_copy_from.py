"""copy-from and run --copy-out against the real engine: a hostile /app (links, FIFOs, sockets,
devices, hard links, bad names, paths too long, sparse giants, a folder swapped for a link to /
while we copy), a wide tree, the host side (no overwrite without --force, links in DEST never
followed, no half file after a failure, modes masked)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path

from tests.conftest import CLI, Runner, tree_of

QUICK = 60  # seconds: a FIFO opened or a giant read would blow through this


def sh(sandbox: Runner, name: str, script: str) -> str:
    return sandbox("exec", name, "sh", "-c", script, check=True, timeout=120).stdout.decode()


def copy_json(sandbox: Runner, *args: str) -> dict:
    proc = sandbox("copy-from", *args, "--json", timeout=QUICK)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)



DEEP = textwrap.dedent("""
    import os, socket
    os.chdir("/app/out")
    s = socket.socket(socket.AF_UNIX); s.bind("sock")
    for _ in range(250):          # 250 * 21 bytes: a path far over PATH_MAX
        os.mkdir("d" * 20); os.chdir("d" * 20)
    open("deep.txt", "w").write("deep")
""")


def test_every_hostile_kind_is_counted_and_never_followed(
        pybox: str, sandbox: Runner, home: Path, tmp_path: Path) -> None:
    sh(sandbox, pybox, "mkdir -p /app/out/sub && cd /app/out && echo hi > sub/f.txt && "
       "echo x > big.txt && ln sub/f.txt hard && ln -s / root && ln -s sub sublink && "
       "ln -s /etc/passwd pw && mkfifo fifo && printf 'run' > run.sh && chmod 4755 run.sh && "
       "printf s > secret && chmod 600 secret && touch \"$(printf 'evil\\033]0;x\\007')\" && "
       "touch \"$(printf 'nl\\nname')\" && truncate -s 1099511627776 sparse")
    sandbox("exec", pybox, "python3", "-c", DEEP, check=True)
    os.mknod(home / "volumes" / pybox / "out" / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    dest = tmp_path / "dest"
    result = copy_json(sandbox, pybox, "out/**", str(dest))
    assert result["skipped"] == {"device": 1, "fifo": 1, "link": 3, "long": 1, "name": 2,
                                 "socket": 1, "too-large": 1}, result
    assert result["files"] == 5
    got = tree_of(dest)
    assert got == {"out": None, "out/sub": None, "out/sub/f.txt": b"hi\n", "out/hard": b"hi\n",
                   "out/big.txt": b"x\n", "out/run.sh": b"run", "out/secret": b"s"} | {
        k: None for k in got if k.startswith("out/" + "d" * 20)}
    # hard links are separate files; set-id dropped; modes by the owner's x bit; ours
    assert (dest / "out/hard").stat().st_nlink == 1
    assert (dest / "out/hard").stat().st_ino != (dest / "out/sub/f.txt").stat().st_ino
    assert stat.S_IMODE((dest / "out/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "out/secret").stat().st_mode) == 0o644
    assert (dest / "out/secret").stat().st_uid == os.getuid()
    text = sandbox("copy-from", pybox, "out/**", str(tmp_path / "d2"), timeout=QUICK).stderr
    assert text.decode().count("\n") == 1 and b"\x1b" not in text, text


def test_a_folder_swapped_for_a_link_to_root_is_never_followed(
        box: str, sandbox: Runner, tmp_path: Path) -> None:
    sh(sandbox, box, "mkdir -p /app/out/dir && cd /app/out/dir && "
       "for i in $(seq 1 40); do echo $i > f$i; done")
    swapper = subprocess.Popen(
        [*CLI, "exec", box, "sh", "-c",
         "cd /app/out; i=0; while [ $i -lt 4000 ]; do mv dir real; ln -s / dir; "
         "rm dir; mv real dir; i=$((i+1)); done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        allowed = {"out", "out/dir", "out/real"} | {f"out/{d}/f{i}" for d in ("dir", "real")
                                                     for i in range(1, 41)}
        for attempt in range(6):
            dest = tmp_path / f"dest{attempt}"
            proc = sandbox("copy-from", box, "out/**", str(dest), "--json", timeout=QUICK)
            assert proc.returncode == 0, proc.stderr
            got = tree_of(dest) if dest.exists() else {}
            assert set(got) <= allowed, sorted(set(got) - allowed)[:5]
    finally:
        swapper.wait(timeout=300)


def test_a_wide_tree_streams(pybox: str, sandbox: Runner, tmp_path: Path) -> None:
    sandbox("exec", pybox, "python3", "-c",
            "import os; os.mkdir('/app/w'); [open(f'/app/w/{i}', 'w').close() "
            "for i in range(20000)]", check=True, timeout=120)
    result = copy_json(sandbox, pybox, "w/", str(tmp_path / "dest"))
    assert result["files"] == 20000 and result["skipped"] == {}
    assert len(os.listdir(tmp_path / "dest" / "w")) == 20000


def test_limits_per_file_and_in_all(box: str, sandbox: Runner, tmp_path: Path) -> None:
    sh(sandbox, box, "mkdir /app/o && head -c 600000 /dev/zero > /app/o/a && "
       "head -c 600000 /dev/zero > /app/o/b")
    one = copy_json(sandbox, box, "o/**", str(tmp_path / "one"), "--max-size", "500k")
    assert one["files"] == 0 and one["skipped"] == {"too-large": 2}
    proc = sandbox("copy-from", box, "o/**", str(tmp_path / "all"), "--max-total", "1m",
                   timeout=QUICK)
    assert proc.returncode == 4, proc.stderr
    assert b"--max-total" in proc.stderr and b"Traceback" not in proc.stderr
    copied = list((tmp_path / "all" / "o").iterdir())
    assert len(copied) == 1 and copied[0].stat().st_size == 600000


def test_no_overwrite_without_force_and_no_link_followed_in_dest(
        box: str, sandbox: Runner, tmp_path: Path) -> None:
    sh(sandbox, box, "mkdir -p /app/r/sub && echo new > /app/r/a && echo new > /app/r/l && "
       "echo new > /app/r/sub/s")
    dest = tmp_path / "dest"
    (dest / "r").mkdir(parents=True)
    (dest / "r" / "a").write_text("mine\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("keep\n")
    (dest / "r" / "l").symlink_to(outside / "target")
    (dest / "r" / "sub").symlink_to(outside)
    first = copy_json(sandbox, box, "r/**", str(dest))
    assert first["files"] == 0
    assert first["skipped"] == {"dest-conflict": 1, "exists": 2}
    assert (dest / "r" / "a").read_text() == "mine\n"
    forced = copy_json(sandbox, box, "r/**", str(dest), "--force")
    assert forced["files"] == 2 and forced["skipped"] == {"dest-conflict": 1}
    assert (dest / "r" / "a").read_text() == "new\n"
    assert not (dest / "r" / "l").is_symlink() and (dest / "r" / "l").read_text() == "new\n"
    assert (outside / "target").read_text() == "keep\n"
    assert sorted(os.listdir(outside)) == ["target"]


def test_a_failed_copy_leaves_no_half_file(box: str, sandbox: Runner, tmp_path: Path) -> None:
    sh(sandbox, box, "mkdir /app/o && head -c 3000000 /dev/urandom > /app/o/big")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        proc = sandbox("copy-from", box, "o/**", str(small), timeout=QUICK)
        assert proc.returncode == 1, proc.stderr
        assert b"Traceback" not in proc.stderr
        assert [str(p.relative_to(small)) for p in small.rglob("*")] == ["o"]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_nothing_matching_is_exit_2(box: str, sandbox: Runner, tmp_path: Path) -> None:
    proc = sandbox("copy-from", box, "nothing/**", str(tmp_path / "d"))
    assert proc.returncode == 2 and b"no files match" in proc.stderr
    assert sandbox("copy-from", box, "../x", str(tmp_path / "d")).returncode == 2


def test_run_copy_out_on_success_failure_and_timeout(
        docker_engine: None, sandbox: Runner, tmp_path: Path) -> None:
    from tests.conftest import BUSYBOX_IMAGE

    script = "mkdir -p out && echo $1 > out/r.txt && mkfifo out/p; exit $2"
    for label, extra, code in (("ok", ("0",), 0), ("fail", ("3",), 3)):
        dest = tmp_path / label
        proc = sandbox("run", "--image", BUSYBOX_IMAGE, "--copy-out", "out/**",
                       "--copy-out-dest", str(dest), "--", "sh", "-c", script, "sh", label,
                       *extra, timeout=QUICK)
        assert proc.returncode == code, proc.stderr
        assert (dest / "out" / "r.txt").read_text() == f"{label}\n"
        assert b"skipped 1: 1 fifo" in proc.stderr
    dest = tmp_path / "slow"
    proc = sandbox("run", "--image", BUSYBOX_IMAGE, "--timeout", "3", "--copy-out", "out/**",
                   "--copy-out-dest", str(dest), "--", "sh", "-c",
                   "mkdir out; echo early > out/r.txt; sleep 60", timeout=QUICK)
    assert proc.returncode == 124, proc.stderr
    assert (dest / "out" / "r.txt").read_text() == "early\n"
    assert sandbox("ls", "--json").stdout.strip() == b"[]"
