"""Choosing host files for copy-to: gitignore-style patterns (pathspec) below a root folder."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

import pathspec

from . import validate
from .errors import InvalidInput

GITIGNORE_MAX = 1 << 20  # bytes of .gitignore read; the rest is left out
_GITIGNORE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


@dataclass
class Selection:
    """Files chosen (as path components relative to the root) and links left out."""

    files: list[tuple[str, ...]] = field(default_factory=list)
    skipped_links: int = 0


def _spec(lines: Sequence[str]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _gitignore_lines(root: str) -> list[str]:
    """The lines of ROOT/.gitignore when it is a regular file, at most GITIGNORE_MAX bytes of it.

    A link (even to a file inside ROOT), a FIFO, a device or a directory there is ignored, as is
    a missing file: opened without following links and without blocking, then checked.
    """
    try:
        fd = os.open(os.path.join(root, ".gitignore"), _GITIGNORE_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.ENODEV):
            return []
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        chunks: list[bytes] = []
        left = GITIGNORE_MAX
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        extra = os.read(fd, 1) if left == 0 else b""
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if extra:  # cut short: drop the partial last line rather than misread it
        data = data[: data.rfind(b"\n") + 1]
    return data.decode("utf-8", errors="replace").splitlines()


def select_files(root: str, patterns: Sequence[str], excludes: Sequence[str] = (),
                 use_gitignore: bool = True) -> Selection:
    """Regular files below ROOT matching any of PATTERNS and none of EXCLUDES / .gitignore.

    Symbolic links are never followed (so nothing outside ROOT is read), not even a .gitignore
    that is one, and .git is skipped unless ignores are off.
    """
    include = _spec([validate.glob(p) for p in patterns])
    ignore_lines = [validate.glob(p) for p in excludes]
    if use_gitignore:
        ignore_lines.append(".git/")
        ignore_lines += _gitignore_lines(root)
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
