"""purge deletes the sandbox folder and nothing else: not through links the container planted,
not stopped by a tree thousands of levels deep or a directory it locked, and not wherever a
hand-edited state file points."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Runner

CANARY = b"canary: purge must never delete me"
DEPTH = 3000


def sh(sandbox: Runner, name: str, script: str) -> str:
    return sandbox("exec", name, "sh", "-c", script, check=True).stdout.decode()


def make_victim(path: Path) -> dict[str, bytes | str]:
    """A host directory purge must leave alone, and a record of what is in it."""
    (path / "sub").mkdir(parents=True)
    (path / "canary.txt").write_bytes(CANARY)
    (path / "sub" / "canary.txt").write_bytes(CANARY)
    os.chmod(path / "sub", 0o755)
    return tree(path)


def tree(path: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(path):
        for entry in dirs + files:
            full = Path(root, entry)
            st = full.lstat()
            found[str(full.relative_to(path))] = (
                full.read_bytes() if stat.S_ISREG(st.st_mode) else stat.filemode(st.st_mode))
    found["."] = stat.filemode(path.stat().st_mode)
    return found


def test_purge_removes_hostile_folder_and_nothing_outside(box: str, sandbox: Runner,
                                                          home: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    before = make_victim(victim)
    folder = home / "volumes" / box
    began = time.monotonic()
    # Links to the host (directory, file, relative climb), a tree DEPTH levels deep (built by
    # wrapping, since no path that long can be named) with a link and a locked directory at
    # the bottom, a FIFO, a hard link, and directories the container locked with chmod 000.
    sh(sandbox, box, f"""
        ln -s {victim} linkdir && ln -s {victim}/canary.txt linkfile &&
        ln -s ../../../victim climb && mkdir -p a/b && ln -s {victim} a/b/l &&
        mkfifo fifo && echo x > f && ln f hard &&
        mkdir t && ln -s {victim} t/link && mkdir t/locked && echo y > t/locked/f &&
        chmod 000 t/locked && i=0 &&
        while [ $i -lt {DEPTH} ]; do mkdir n && mv t n/d && mv n t || exit 9; i=$((i+1)); done &&
        mkdir -p locked/inner && echo z > locked/inner/f && ln -s {victim} locked/inner/l &&
        chmod 000 locked/inner locked a
    """)
    planted = time.monotonic() - began
    deepest = os.open(folder / "t", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):  # the tree really is that deep
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=deepest)
            os.close(deepest)
            deepest = nxt
        assert os.readlink("link", dir_fd=deepest) == str(victim)
    finally:
        os.close(deepest)

    began = time.monotonic()
    proc = sandbox("purge", box)
    print(f"\nplanted {DEPTH} levels in {planted:.2f}s; purge took "
          f"{time.monotonic() - began:.2f}s")
    gone = not os.path.lexists(folder)
    if not gone:  # purge failed: pytest's own recursive cleanup could not remove a tree this
        subprocess.run(["rm", "-rf", "--", str(folder)], check=False)  # deep, rm can
    assert tree(victim) == before
    assert proc.returncode == 0, proc.stderr
    assert gone
    assert os.listdir(home / "volumes") == []


def test_purge_ignores_a_tampered_state_file(start_box: Callable[..., str], sandbox: Runner,
                                             home: Path, tmp_path: Path) -> None:
    # volumes/../../victim from the home is exactly this directory.
    victim = tmp_path / "victim"
    before = make_victim(victim)
    assert (home / "volumes" / ".." / ".." / "victim").resolve() == victim.resolve()
    good = start_box()
    other = start_box()
    state_path = home / "state.json"
    state = json.loads(state_path.read_text())
    entries = state["sandboxes"]
    template = dict(entries[good])
    # A crafted entry whose key and name climb out, one whose name disagrees with its key,
    # an extra volume path that must never be read, and the real entry renamed to climb out.
    entries["../../victim"] = {**template, "name": "../../victim", "volume": str(victim)}
    entries["evil"] = {**template, "name": "../../victim"}
    entries[good] = {**template, "volume": str(victim), "name": good}
    entries[other] = {**entries[other], "name": "../../victim"}
    entries["/abs"] = {**template, "name": str(victim)}
    state_path.write_text(json.dumps(state))
    # A host-side link in volumes/ named like a sandbox, old enough to look like a leftover.
    (home / "volumes" / "leftover").symlink_to(victim)
    old = time.time() - 3600
    os.utime(home / "volumes" / "leftover", (old, old), follow_symlinks=False)

    by_name = sandbox("purge", good)
    unknown = sandbox("purge", "evil")
    everything = sandbox("purge", "--all")
    assert tree(victim) == before
    assert by_name.returncode == 0, by_name.stderr
    assert unknown.returncode == 3, unknown.stderr  # no such sandbox: nothing to remove
    assert everything.returncode == 0, everything.stderr
    assert os.listdir(home / "volumes") == []
    assert not os.path.lexists(home / "volumes" / other)
    listed = sandbox("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert str(victim) not in listed.stdout.decode()
