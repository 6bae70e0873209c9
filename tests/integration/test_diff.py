"""sandbox diff against the real engine: the `git apply` round trip on a real repository, binary
and large files named, a forged mtime still caught, a hostile tree walked safely, the manifest
kept in the home (never in /app) and removed by purge."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from tests.conftest import Runner

QUICK = 60


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True, timeout=60).stdout


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    (repo / "src" / "pkg").mkdir(parents=True)
    (repo / "README.md").write_text("".join(f"line {i}\n" for i in range(40)))
    (repo / "src" / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (repo / "src" / "gone.txt").write_text("bye\n")
    (repo / "src" / "nonl.txt").write_text("no newline")
    (repo / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "data.bin").write_bytes(b"\0\1\2" * 10)
    git(root, "init", "-q", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return repo


EDIT = textwrap.dedent("""
    cd /app
    sed -i 's/line 20/line twenty/' README.md
    echo 'line 40' >> README.md
    printf 'def f():\\n    return 2\\n' > src/pkg/mod.py
    rm src/gone.txt
    printf 'now with one\\n' > src/nonl.txt
    chmod +x tool.sh
    mkdir -p src/new && echo added > src/new/file.txt
    touch src/empty
    echo 'with space' > 'src/a b.txt'
""")


def test_diff_applies_with_git_apply(box: str, sandbox: Runner, tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    sandbox("copy-to", box, "**", cwd=repo, check=True)
    sandbox("exec", box, "sh", "-c", EDIT, check=True)
    proc = sandbox("diff", box, timeout=QUICK)
    assert proc.returncode == 0, proc.stderr
    patch = proc.stdout
    assert b"diff --git a/src/gone.txt b/src/gone.txt\ndeleted file mode 100644\n" in patch
    assert b"old mode 100644\nnew mode 100755\n" in patch
    assert b"new file mode 100644\n--- /dev/null\n+++ b/src/new/file.txt\n" in patch
    assert b"data.bin" not in patch  # unchanged
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    subprocess.run(["git", "apply", "-"], input=patch, cwd=clone, check=True, timeout=60)
    # the clone now holds what the sandbox holds
    out = tmp_path / "out"
    sandbox("copy-from", box, "**", str(out), check=True)
    theirs = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    ours = {str(p.relative_to(clone)): p.read_bytes() for p in clone.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(clone).parts}
    assert ours == theirs
    assert os.access(clone / "tool.sh", os.X_OK)
    stat_out = sandbox("diff", box, "--stat", check=True).stdout.decode()
    assert " 8 files changed" in stat_out.splitlines()[-1]
    files = json.loads(sandbox("diff", box, "--json", check=True).stdout)["files"]
    by_path = {f["path"]: f for f in files}
    assert by_path["src/gone.txt"]["status"] == "deleted"
    assert by_path["src/new/file.txt"]["status"] == "added"
    assert by_path["README.md"] == {"path": "README.md", "status": "modified", "binary": False,
                                    "insertions": 2, "deletions": 1, "oldMode": "100644",
                                    "newMode": "100644"}


def test_binary_and_large_files_are_named_not_dumped(
        box: str, sandbox: Runner, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob.bin").write_bytes(b"SECRET\0" * 100)
    (src / "big.txt").write_bytes(b"x\n" * (1 << 20))  # 2 MiB of text: over the bound
    sandbox("copy-to", box, "*", cwd=src, check=True)
    sandbox("exec", box, "sh", "-c", "cd /app && printf 'OTHER\\0' >> blob.bin && "
            "echo y >> big.txt && head -c 2000000 /dev/zero > new.bin", check=True)
    proc = sandbox("diff", box, check=True)
    out = proc.stdout
    assert b"Binary files a/blob.bin and b/blob.bin differ\n" in out
    assert b"Binary files a/big.txt and b/big.txt differ\n" in out
    assert b"Binary files /dev/null and b/new.bin differ\n" in out
    assert b"SECRET" not in out and b"OTHER" not in out and len(out) < 2000
    assert b"big.txt: its original was not kept" in proc.stderr


def test_a_forged_mtime_does_not_hide_a_change(
        pybox: str, sandbox: Runner, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("aaaa\n")
    sandbox("copy-to", pybox, "f.txt", cwd=src, check=True)
    sandbox("exec", pybox, "python3", "-c", textwrap.dedent("""
        import os
        st = os.stat("/app/f.txt")
        open("/app/f.txt", "w").write("bbbb\\n")   # the same size
        os.utime("/app/f.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    """), check=True)
    out = sandbox("diff", pybox, check=True).stdout
    assert b"-aaaa\n+bbbb\n" in out


def test_diff_on_a_hostile_tree(pybox: str, sandbox: Runner, tmp_path: Path,
                                home: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.txt").write_text("k\n")
    (src / "linked.txt").write_text("l\n")
    sandbox("copy-to", pybox, "*.txt", cwd=src, check=True)
    sandbox("exec", pybox, "sh", "-c", "cd /app && rm linked.txt && ln -s /etc/passwd "
            "linked.txt && ln -s / root && mkfifo fifo && truncate -s 1099511627776 sparse && "
            "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('sock')\"",
            check=True)
    proc = sandbox("diff", pybox, timeout=QUICK)
    assert proc.returncode == 0, proc.stderr
    assert b"diff --git a/linked.txt b/linked.txt\ndeleted file mode 100644\n" in proc.stdout
    assert b"root:" not in proc.stdout  # /etc/passwd never read
    assert b"Binary files /dev/null and b/sparse differ" in proc.stdout
    assert b"kept.txt" not in proc.stdout
    assert b"not compared: 1 fifo, 2 link, 1 socket" in proc.stderr
    # the manifest lives in the home, not in /app; purge removes it
    assert (home / "manifests" / pybox / "manifest.json").is_file()
    assert sorted(os.listdir(home / "volumes" / pybox)) == sorted(
        ["kept.txt", "linked.txt", "root", "fifo", "sparse", "sock"])
    sandbox("purge", pybox, check=True)
    assert not (home / "manifests" / pybox).exists()


def test_diff_without_copy_to_warns(box: str, sandbox: Runner) -> None:
    sandbox("write", box, "a.txt", "hello\n", check=True)
    proc = sandbox("diff", box, check=True)
    assert b"new file mode 100644\n--- /dev/null\n+++ b/a.txt\n@@ -0,0 +1 @@\n+hello\n" \
        in proc.stdout
    assert b"nothing was copied into" in proc.stderr
    assert sandbox("diff", "no-such-box").returncode == 3
