"""snapshot -> start --image TAG: the same files and modes in /app; the hostile parts of the
workspace (links, FIFOs) stay out; -e values never reach the image; ls/purge --snapshots see
this home's snapshot images only."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import BUSYBOX_IMAGE, Runner

LISTING = ("cd /app && find . -mindepth 1 \\( -type f -o -type d \\) | sort | "
           "while read -r p; do stat -c '%n %a %s' \"$p\"; done")


def _image_env(ref: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Env}}", ref],
                          capture_output=True, text=True, timeout=30).stdout


def _rmi(sandbox: Runner, *refs: str) -> None:
    """Remove the test's images: its sandboxes first (an image a container uses stays)."""
    sandbox("purge", "--all")
    subprocess.run(["docker", "rmi", *refs], capture_output=True, timeout=60)


def test_snapshot_then_start_from_it_gives_the_same_files_and_modes(
        start_box: Callable[..., str], sandbox: Runner) -> None:
    tag = f"sandbox-test-snap/{os.urandom(4).hex()}:1"
    name = start_box("-e", "SNAP_SECRET=hunter2")
    sandbox("exec", name, "sh", "-c",
            "mkdir -p src/deep/er && printf 'a\\n' > src/a.py && printf 'x%.0s' $(seq 300) "
            "> src/deep/er/big && chmod 750 src/deep/er/big && chmod 700 src/deep && "
            "ln -s /etc/passwd link && mkfifo fifo && : > empty && echo t > /tmp/not-kept",
            check=True)
    before = sandbox("exec", name, "sh", "-c", LISTING, check=True).stdout
    try:
        made = sandbox("snapshot", name, "--tag", tag, check=True)
        assert made.stdout.decode() == f"{tag}\n"
        assert b"skipped 2" in made.stderr  # the link and the FIFO
        env = _image_env(tag)
        assert "hunter2" not in env and "SNAP_SECRET=" in env
        parent = subprocess.run(["docker", "image", "inspect", "-f", "{{.Parent}}", tag],
                                capture_output=True, text=True, timeout=30).stdout.strip()
        if parent:
            assert "hunter2" not in _image_env(parent)

        copy = start_box(image=tag)
        after = sandbox("exec", copy, "sh", "-c", LISTING, check=True).stdout
        assert after == before
        assert b"./src/deep/er/big 750 300" in after and b"./src/deep 700" in after
        assert sandbox("exec", copy, "cat", "src/a.py", check=True).stdout == b"a\n"
        listing = sandbox("exec", copy, "ls", "-a", "/app", check=True).stdout.split()
        assert b"link" not in listing and b"fifo" not in listing
        # run seeds its one-shot sandbox from the snapshot too
        ran = sandbox("run", "--image", tag, "--", "cat", "src/a.py", check=True)
        assert ran.stdout == b"a\n"
        # --json names the tag and counts what was skipped, by kind
        made2 = json.loads(sandbox("snapshot", copy, "--tag", tag + "b", "--json",
                                   check=True).stdout)
        assert made2["tag"] == tag + "b" and made2["skipped"] == {}
    finally:
        _rmi(sandbox, tag, tag + "b")


def test_ls_and_purge_snapshots_touch_only_this_homes_snapshot_images(
        start_box: Callable[..., str], sandbox: Runner, tmp_path: Path) -> None:
    ours = f"sandbox-test-snap/{os.urandom(4).hex()}:ours"
    theirs = f"sandbox-test-snap/{os.urandom(4).hex()}:theirs"
    plain = f"sandbox-test-snap/{os.urandom(4).hex()}:plain"
    other_home = {"SANDBOX_HOME": str(tmp_path / "other-home")}
    name = start_box()
    try:
        sandbox("snapshot", name, "--tag", ours, check=True)
        other = "t-" + os.urandom(4).hex()
        sandbox("start", "--name", other, "--image", BUSYBOX_IMAGE, env=other_home,
                check=True)
        try:
            sandbox("snapshot", other, "--tag", theirs, env=other_home, check=True)
        finally:
            sandbox("purge", other, env=other_home)
        # an image that claims the snapshot label but not this home's
        subprocess.run(["docker", "build", "-q", "-t", plain, "--label",
                        "sandbox-cli.snapshot=1", "-"], input=f"FROM {BUSYBOX_IMAGE}\n",
                       text=True, capture_output=True, check=True, timeout=120)
        listed = json.loads(sandbox("ls", "--snapshots", "--json", check=True).stdout)
        assert [row["tags"] for row in listed] == [[ours]]
        assert listed[0]["source"] == name
        # a tag held by an image that is not our snapshot is refused, left alone
        assert sandbox("snapshot", name, "--tag", theirs).returncode == 2
        assert sandbox("snapshot", name, "--tag", plain).returncode == 2

        purged = json.loads(sandbox("purge", "--snapshots", "--json", check=True).stdout)
        assert purged["images"] == [ours]
        assert json.loads(sandbox("ls", "--snapshots", "--json", check=True).stdout) == []
        for kept in (theirs, plain):
            assert subprocess.run(["docker", "image", "inspect", kept], capture_output=True,
                                  timeout=30).returncode == 0
        assert name in sandbox("ls", check=True).stdout.decode()  # sandboxes untouched
    finally:
        _rmi(sandbox, ours, theirs, plain)


def test_snapshot_of_a_paused_sandbox_and_bad_tags(start_box: Callable[..., str],
                                                   sandbox: Runner) -> None:
    name = start_box()
    tag = f"sandbox-test-snap/{os.urandom(4).hex()}:paused"
    sandbox("write", name, "f", "1", check=True)
    sandbox("pause", name, check=True)
    try:
        sandbox("snapshot", name, "--tag", tag, check=True)
        assert sandbox("snapshot", name, "--tag", "Bad Tag").returncode == 2
        assert sandbox("snapshot", "no-such-box").returncode == 3
    finally:
        sandbox("resume", name)
        _rmi(sandbox, tag)


def test_a_failed_seed_undoes_its_own_start_only(start_box: Callable[..., str],
                                                 sandbox: Runner, home: Path) -> None:
    bystander = start_box()
    source = start_box()
    tag = f"sandbox-test-snap/{os.urandom(4).hex()}:big"
    sandbox("exec", source, "dd", "if=/dev/zero", "of=big", "bs=1M", "count=20", check=True)
    try:
        sandbox("snapshot", source, "--tag", tag, check=True)
        name = "t-" + os.urandom(4).hex()
        failed = sandbox("start", "--name", name, "--image", tag, "--disk", "16m")
        assert failed.returncode == 1
        assert failed.stderr.startswith(b"sandbox: error: could not fill /app from snapshot")
        assert b"Traceback" not in failed.stderr
        assert not (home / "volumes" / name).exists()
        rows = {r["name"]: r["status"]
                for r in json.loads(sandbox("ls", "--json", check=True).stdout)}
        assert rows == {bystander: "running", source: "running"}
        seeds = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={name}-seed"],
                               capture_output=True, text=True, timeout=30).stdout
        assert seeds.strip() == ""
        # The seed comes after the container is made (sandbox._create): that goes too.
        made = subprocess.run(["docker", "ps", "-aq", "--filter", f"name=^{name}$"],
                              capture_output=True, text=True, timeout=30).stdout
        assert made.strip() == ""
    finally:
        _rmi(sandbox, tag)


def test_a_sparse_giant_is_not_snapshot_into_the_hosts_disk(start_box: Callable[..., str],
                                                            sandbox: Runner) -> None:
    """The build context is a plain file in the home: a sparse 64 GiB file in /app (a few
    blocks on the container's side) must be refused (exit 4) before it is written out, in
    both workspace kinds, and leave no image behind."""
    for storage in ("bind", "volume"):
        name = start_box("--storage", storage)
        tag = f"sandbox-test-snap/{os.urandom(4).hex()}:giant"
        sandbox("exec", name, "sh", "-c", "echo small > a && truncate -s 64G giant",
                check=True)
        try:
            refused = sandbox("snapshot", name, "--tag", tag, "--max-total", "1m", timeout=120)
            assert refused.returncode == 4, refused.stderr
            line = refused.stderr.decode()
            assert "--max-total" in line and "giant" in line, line
            assert subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                                  timeout=30).returncode != 0
            # under the limit (the default 4 GiB) the small file alone goes in
            sandbox("exec", name, "rm", "giant", check=True)
            sandbox("snapshot", name, "--tag", tag, check=True)
        finally:
            _rmi(sandbox, tag)
