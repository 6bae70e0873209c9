"""copy-to's file choice against git itself: the same tree, the same ignore files, the same answer;
patterns matched in bounded time; built-in and --exclude rules beat a file's negations."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandbox_cli.errors import InvalidInput
from sandbox_cli.selection import PATTERN_MAX, check_dest, parse_rule, select_files

QUICK = 30


def _git(tree: Path, *args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "HOME": str(tree.parent), "XDG_CONFIG_HOME": str(tree.parent / "xdg"),
           "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=cwd or tree, env=env, capture_output=True,
                          text=True, timeout=QUICK, check=True).stdout


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


TREE = {
    ".gitignore": "*.log\n.env\nbuild/\n/top-only.txt\ndocs/**/*.tmp\n!keep.log\n# comment\n"
                  "\\#hash\ntrailing\\ \nsp \n",
    "a.py": "", "app.log": "", "keep.log": "", ".env": "", "top-only.txt": "", "#hash": "",
    "trailing ": "", "sp": "",
    "build/out.o": "", "src/build/x.o": "", "src/top-only.txt": "",
    "src/main.py": "", "src/debug.log": "", "src/.gitignore": "*.py\n!main.py\ngen/\n",
    "src/util.py": "", "src/gen/g.c": "", "src/deep/x.py": "", "src/deep/.gitignore": "!x.py\n",
    "docs/a/b.tmp": "", "docs/b.tmp": "", "docs/readme.md": "",
    "sub/inner/.gitignore": "/local.txt\n*.md\n", "sub/inner/local.txt": "",
    "sub/inner/deeper/local.txt": "", "sub/inner/n.md": "", "sub/inner/ok.c": "",
    "sub/secret.key": "", "odd/[x].c": "", "odd/a]b": "", "odd/q?": "",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    _write(root, TREE)
    (root / ".git" / "info").mkdir(exist_ok=True)
    (root / ".git" / "info" / "exclude").write_text("*.key\n")
    return root


def _git_untracked(root: Path, cwd: Path) -> set[tuple[str, ...]]:
    """What git would add: untracked files that no ignore rule leaves out, relative to CWD."""
    out = _git(root, "ls-files", "-z", "--others", "--exclude-standard", cwd=cwd)
    return {tuple(p.split("/")) for p in out.split("\0") if p}


def test_selection_is_git_s_own(tree: Path) -> None:
    assert set(select_files(str(tree), ["**"]).files) == _git_untracked(tree, tree)


@pytest.mark.parametrize("sub", ["src", "sub", "sub/inner", "docs"])
def test_from_a_subfolder_the_work_tree_rules_apply(tree: Path, sub: str) -> None:
    """Run from inside the work tree: the top's .gitignore, info/exclude and those between apply."""
    chosen = set(select_files(str(tree / sub), ["**"]).files)
    assert chosen == _git_untracked(tree, tree / sub)


def test_git_ignored_files_never_chosen(tree: Path) -> None:
    chosen = {"/".join(p) for p in select_files(str(tree / "src"), ["**"]).files}
    assert "debug.log" not in chosen and "util.py" not in chosen
    ignored = _git(tree, "check-ignore", "src/debug.log", "src/util.py", ".env", "sub/secret.key")
    assert len(ignored.split()) == 4
    assert ("debug.log",) in select_files(str(tree / "src"), ["**"], use_gitignore=False).files


def test_a_root_git_ignores_is_refused_clearly(tree: Path) -> None:
    (tree / "build" / "sub").mkdir()
    (tree / "build" / "sub" / "f.c").write_text("")
    with pytest.raises(InvalidInput, match="ignored by git's rules"):
        select_files(str(tree / "build" / "sub"), ["**"])
    assert select_files(str(tree / "build" / "sub"), ["**"], use_gitignore=False).files


def test_negations_never_beat_git_dir_or_user_excludes(tmp_path: Path) -> None:
    root = tmp_path / "p"
    _write(root, {".gitignore": "!.git/\n!.git\n!.env\n!*\n", ".git/config": "token",
                  ".env": "SECRET", "a.py": "", "sub/.git/config": "t", "sub/.env": ""})
    chosen = select_files(str(root), ["**"], excludes=[".env"]).files
    assert chosen == [(".gitignore",), ("a.py",)]


@pytest.mark.parametrize("where", ["pattern", "gitignore", "exclude"])
def test_backtracking_glob_is_matched_in_bounded_time(tmp_path: Path, where: str) -> None:
    """`*a*a*...*b` against 40 a's took 149 s with a backtracking regex; now a quick pass."""
    evil = "*a" * 12 + "*b"
    root = tmp_path / "p"
    _write(root, {"a" * 40: "", "a" * 39 + "b": "", "x/" + "a" * 200: ""})
    pattern, excludes, gitignore = "**", "[]", ""
    if where == "pattern":
        pattern = evil
    elif where == "exclude":
        excludes = repr([evil])
    else:
        gitignore = evil + "\n"
    (root / ".gitignore").write_text(gitignore)
    code = textwrap.dedent(f"""
        from sandbox_cli.selection import select_files
        print(sorted("/".join(f) for f in select_files({str(root)!r}, [{pattern!r}],
                                                         {excludes}).files))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=QUICK, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("a" * 39 + "b" in proc.stdout) == (where == "pattern")
    assert ("a" * 40 in proc.stdout) == (where != "pattern")


def test_overlong_pattern_is_a_usage_error_and_gitignore_line_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "p"
    _write(root, {"a.py": "", ".gitignore": "*" * (PATTERN_MAX + 1) + "\n*.txt\n", "n.txt": ""})
    with pytest.raises(InvalidInput, match="too long"):
        select_files(str(root), ["*" * (PATTERN_MAX + 1)])
    assert select_files(str(root), ["**"]).files == [(".gitignore",), ("a.py",)]
    assert "longer than" in capsys.readouterr().err


def test_each_pattern_that_matches_nothing_is_named(tmp_path: Path) -> None:
    root = tmp_path / "p"
    _write(root, {"tests/t.py": "", "src/a.py": ""})
    assert len(select_files(str(root), ["src/**", "tests/**"]).files) == 2
    with pytest.raises(InvalidInput, match="'srcc/\\*\\*'") as caught:
        select_files(str(root), ["srcc/**", "tests/**"])
    assert "tests" not in caught.value.message


@pytest.mark.parametrize(("pattern", "path", "is_dir", "expected"), [
    ("*.py", "a/b/c.py", False, True),
    ("/a.py", "x/a.py", False, False),
    ("a/**", "a", True, False),
    ("a/**", "a/b/c", False, True),
    ("a/**/b", "a/b", False, True),
    ("**/b", "x/y/b", True, True),
    ("b/", "x/b", False, False),
    ("b/", "x/b", True, True),
    ("[!a]?", "ba", False, True),
    ("[a-c][]x]", "b]", False, True),
    ("[[:digit:]]x", "7x", False, True),
    ("a[", "a[", False, False),
    ("\\*", "*", False, True),
    ("\\*", "x", False, False),
    ("x\\", "x", False, False),
    ("*a" * 12 + "*b", "a" * 40, False, False),
])
def test_rules_match_as_git_does(pattern: str, path: str, is_dir: bool, expected: bool) -> None:
    rule = parse_rule(pattern)
    assert rule is not None
    assert rule.match(tuple(path.split("/")), is_dir) is expected


@pytest.mark.parametrize(("files", "pattern", "dest"), [
    (["a.py", "b.py"], "a.py", "b.py"),  # `*.py` expanded by the shell
    (["a.py"], "*.py", "b.py"),
    (["a.txt", "notes"], "a.txt", "notes"),  # an existing host file as DEST
])
def test_dest_that_looks_like_a_second_match_is_refused(tmp_path: Path, files: list[str],
                                                        pattern: str, dest: str) -> None:
    _write(tmp_path, dict.fromkeys(files, ""))
    with pytest.raises(InvalidInput, match="quote the pattern"):
        check_dest(str(tmp_path), [pattern], dest)
    check_dest(str(tmp_path), [pattern], dest + "/")  # a trailing '/' says it is a folder


def test_ordinary_destinations_pass(tmp_path: Path) -> None:
    _write(tmp_path, {"src/a.py": "", "a.py": ""})
    for pattern, dest in (("src/**", "src"), ("*.py", "tests"), ("*.py", "."), ("**", "/app")):
        check_dest(str(tmp_path), [pattern], dest)
