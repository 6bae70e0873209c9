"""Choosing host files for copy-to: gitignore-style patterns (pathspec) below a root folder."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

import pathspec

from . import validate
from .errors import InvalidInput


@dataclass
class Selection:
    """Files chosen (as path components relative to the root) and links left out."""

    files: list[tuple[str, ...]] = field(default_factory=list)
    skipped_links: int = 0


def _spec(lines: Sequence[str]) -> pathspec.PathSpec:  # type: ignore[type-arg, unused-ignore]
    return pathspec.PathSpec.from_lines("gitwildmatch", lines)


def select_files(root: str, patterns: Sequence[str], excludes: Sequence[str] = (),
                 use_gitignore: bool = True) -> Selection:
    """Regular files below ROOT matching any of PATTERNS and none of EXCLUDES / .gitignore.

    Symbolic links are never followed (so nothing outside ROOT is read) and .git is skipped
    unless ignores are off.
    """
    include = _spec([validate.glob(p) for p in patterns])
    ignore_lines = [validate.glob(p) for p in excludes]
    if use_gitignore:
        ignore_lines.append(".git/")
        try:
            with open(os.path.join(root, ".gitignore"), encoding="utf-8", errors="replace") as fh:
                ignore_lines += fh.read().splitlines()
        except (FileNotFoundError, IsADirectoryError):
            pass
    ignore = _spec(ignore_lines) if ignore_lines else None
    selection = Selection()
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, *rel_dir)), key=lambda e: e.name)
        except PermissionError:
            continue
        for entry in entries:
            rel = (*rel_dir, entry.name)
            rel_text = "/".join(rel)
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                if ignore is None or not ignore.match_file(rel_text + "/"):
                    stack.append(rel)
            elif ignore is not None and ignore.match_file(rel_text):
                continue
            elif include.match_file(rel_text):
                if stat.S_ISREG(mode):
                    selection.files.append(rel)
                elif stat.S_ISLNK(mode):
                    selection.skipped_links += 1
    if not selection.files:
        shown = " ".join(repr(p) for p in patterns)
        raise InvalidInput(f"no files match {shown} under {root}")
    selection.files.sort()
    return selection
