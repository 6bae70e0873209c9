"""copy-to chooses what git would add: nested .gitignore files, the work tree's own rules when
run from a subfolder, built-in and --exclude rules beyond any negation, bounded-time patterns,
each pattern matching something, and no DEST that is really a second shell-expanded match."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import Runner

QUICK = 20


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "HOME": str(cwd), "XDG_CONFIG_HOME": str(cwd / ".xdg"),
           "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=QUICK, check=True).stdout


def _in_box(home: Path, box: str) -> set[str]:
    root = home / "volumes" / box
    return {str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files}


def test_copy_to_takes_what_git_would_add(box: str, sandbox: Runner, home: Path,
                                          tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _write(repo, {".gitignore": "*.log\n.env\n", "app/.gitignore": "gen/\n!keep.log\n",
                  "app/main.py": "", "app/run.log": "", "app/keep.log": "", "app/.env": "S",
                  "app/gen/out.c": "", "app/lib/x.py": "", "app/lib/.gitignore": "*.tmp\n",
                  "app/lib/y.tmp": "", "top.py": ""})
    (repo / ".git" / "info" / "exclude").write_text("*.secret\n")
    (repo / "app" / "token.secret").write_text("T")
    sandbox("copy-to", box, "**", cwd=repo / "app", check=True)
    expected = set(_git(repo / "app", "ls-files", "--others", "--exclude-standard").split())
    assert expected == {".gitignore", "main.py", "keep.log", "lib/.gitignore", "lib/x.py"}
    assert _in_box(home, box) == expected
    assert len(_git(repo, "check-ignore", "app/run.log", "app/.env", "app/token.secret",
                    "app/gen/out.c", "app/lib/y.tmp").split()) == 5


def test_negations_never_bring_back_git_or_an_exclude(box: str, sandbox: Runner, home: Path,
                                                      tmp_path: Path) -> None:
    work = tmp_path / "work"
    _write(work, {".gitignore": "!.git/\n!.env\n", ".git/config": "token=CI-TOKEN",
                  ".env": "SECRET", "a.py": ""})
    sandbox("copy-to", box, "**", "--exclude", ".env", check=True)
    assert _in_box(home, box) == {".gitignore", "a.py"}


def test_backtracking_globs_cost_no_time(box: str, sandbox: Runner, tmp_path: Path) -> None:
    """`*a*a*...*b` against a name of 40 a's took 149 s, from the pattern or a .gitignore."""
    work = tmp_path / "work"
    evil = "*a" * 12 + "*b"
    _write(work, {"a" * 40: "", "a" * 39 + "b": "", ".gitignore": evil + "\n"})
    proc = sandbox("copy-to", box, evil, "--no-ignore", timeout=QUICK)  # the pattern alone
    assert proc.returncode == 0, proc.stderr
    proc = sandbox("copy-to", box, "**", "--exclude", evil, timeout=QUICK)  # and in .gitignore
    assert proc.returncode == 0, proc.stderr
    too_long = sandbox("copy-to", box, "*" * 2000, timeout=QUICK)
    assert too_long.returncode == 2 and b"too long" in too_long.stderr


def test_unquoted_pattern_is_caught(box: str, sandbox: Runner, home: Path,
                                    tmp_path: Path) -> None:
    """`copy-to BOX *.py` expanded by the shell to `copy-to BOX a.py b.py`."""
    work = tmp_path / "work"
    _write(work, {"a.py": "", "b.py": ""})
    proc = sandbox("copy-to", box, "a.py", "b.py")
    assert proc.returncode == 2
    assert b"quote the pattern" in proc.stderr
    assert not (home / "volumes" / box / "a.py").exists()
    assert not (home / "volumes" / box / "b.py").exists()
    sandbox("copy-to", box, "a.py", "b.py/", check=True)  # a trailing / says: a folder
    assert (home / "volumes" / box / "b.py" / "a.py").is_file()


def test_each_pattern_must_match_something(sandbox: Runner, box: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    _write(work, {"tests/t.py": "", "src/a.py": ""})
    proc = sandbox("run", "--image", "sandbox-test/busybox:latest", "--copy", "srcc/**",
                   "--copy", "tests/**", "--", "true", timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.decode()
    assert "'srcc/**'" in err and "'tests/**'" not in err
    ok = sandbox("run", "--image", "sandbox-test/busybox:latest", "--copy", "src/**",
                 "--copy", "tests/**", "--", "ls", "/app/src", "/app/tests", timeout=120)
    assert ok.returncode == 0, ok.stderr
    missing = sandbox("copy-to", box, "nothing/**")
    assert missing.returncode == 2 and b"'nothing/**'" in missing.stderr
