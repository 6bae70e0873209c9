"""Walking a sandbox's /app tree safely, through a small workspace seam.

A Workspace gives two things: the entries of one directory (streamed, never following a link)
and a read descriptor for one regular file (checked before it is opened: a FIFO, socket or
device is never opened). HostFolder implements them on the host folder with the descriptor-based
access of volume.py; another workspace kind (an engine volume read through the engine) only has
to implement the same two methods for copy-from and diff to work on it.

The walk (walk()) is iterative and streamed: the files of a directory are handed on while it is
read, and only the names of its subfolders wait (at most PENDING_MAX over the whole walk), so a
directory a million entries wide costs no memory and a tree thousands deep no stack. Every
directory is reopened by name from the root with O_NOFOLLOW (volume.DirWalker, a bounded cache
of descriptors), so a folder the container swaps for a link while we walk is refused, never
followed. What is not copied is counted by kind in a Skipped tally.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from . import volume
from .errors import UnsafePath

PENDING_MAX = 1 << 16  # subfolder names waiting to be walked, over all levels
_PREFIX_BYTES = len(b"/app/")

# Kinds of entries (and reasons) that a walk or a copy leaves out, as counted and reported.
KINDS = {
    stat.S_IFLNK: "link", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "device", stat.S_IFBLK: "device",
}


@dataclass(frozen=True)
class Entry:
    """One directory entry as lstat saw it while the directory was read."""

    name: str
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def kind(self) -> str:
        """'file', 'dir' or the skipped kind: 'link', 'fifo', 'socket', 'device', 'other'."""
        if self.is_file:
            return "file"
        if self.is_dir:
            return "dir"
        return KINDS.get(stat.S_IFMT(self.mode), "other")


class Workspace(Protocol):
    """What a walk needs from a sandbox's /app (PARTS: components below /app)."""

    def entries(self, parts: tuple[str, ...]) -> Iterator[Entry]:
        """The entries of directory PARTS, streamed; UnsafePath when it is not one (a link, a
        file, gone) or cannot be read."""
        ...

    def open_file(self, parts: tuple[str, ...]) -> tuple[int, os.stat_result]:
        """A read descriptor (the caller closes it) and its fstat for regular file PARTS;
        UnsafePath for anything else."""
        ...


class HostFolder:
    """The Workspace of a host folder (a bind mount), from its root descriptor."""

    def __init__(self, root_fd: int) -> None:
        self.walker = volume.DirWalker(root_fd)

    def entries(self, parts: tuple[str, ...]) -> Iterator[Entry]:
        shown = volume._show(parts)
        fd = self.walker.dir_fd(parts, create=False)
        try:
            scan = os.scandir(fd)  # scans a duplicate: the walker may close FD meanwhile
        except OSError as exc:
            raise _refusal(exc, shown) from None
        with scan:
            for item in scan:
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we read the directory
                yield Entry(item.name, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                            st.st_ino)

    def open_file(self, parts: tuple[str, ...]) -> tuple[int, os.stat_result]:
        shown = volume._show(parts)
        with volume._refuse_too_long(shown):
            parent = self.walker.dir_fd(parts[:-1], create=False)
            try:
                return volume.open_regular_file(parent, parts[-1], shown)
            except OSError as exc:
                raise _refusal(exc, shown) from None

    def close(self) -> None:
        self.walker.close()


def _refusal(exc: OSError, shown: str) -> UnsafePath | OSError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return UnsafePath(f"{shown}: permission denied")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return UnsafePath(f"{shown}: changed by the container while read")
    return exc


def has_control(name: str) -> bool:
    """Whether NAME holds a control character (a newline, an escape...): such names are not
    copied to the host, where they would break scripts and could drive a terminal."""
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)


@dataclass
class Skipped:
    """Entries left out, by kind ('link', 'fifo', 'too-large', 'exists', ...)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str) -> None:
        self.counts[kind] += 1

    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def text(self) -> str:
        """'2 link, 1 fifo' ('' when nothing was skipped)."""
        return ", ".join(f"{count} {kind}" for kind, count in sorted(self.counts.items()))


@dataclass
class _Frame:
    """A directory on the walk's path: its name, whether a pattern chose it, the subfolders
    still to walk (name, chosen) and the bytes of its path as /app/... gives it."""

    name: str
    chosen: bool
    length: int
    pending: list[tuple[str, bool]] = field(default_factory=list)
    scanned: bool = False


# chosen(rel, is_dir, inherited) -> (walk it at all, chosen by a pattern)
Chooser = Callable[[tuple[str, ...], bool, bool], tuple[bool, bool]]


def walk(ws: Workspace, choose: Chooser, skipped: Skipped,
         ) -> Iterator[tuple[tuple[str, ...], Entry, bool]]:
    """Every non-directory entry below /app as (parts, entry, chosen), depth first.

    CHOOSE says for each entry whether to look at it at all (an excluded folder is never
    entered) and whether a pattern chose it (a chosen folder chooses all below it). Entries
    the walk cannot take are counted in SKIPPED when chosen: a path too long to name ('long'),
    a name with a control character ('name'), a folder it could not read or that changed
    ('unreadable', 'changed'), subfolders past PENDING_MAX ('too-many-folders').
    """
    stack = [_Frame("", False, _PREFIX_BYTES - 1)]
    waiting = 0
    while stack:
        top = stack[-1]
        if not top.scanned:
            top.scanned = True
            here = tuple(frame.name for frame in stack[1:])
            try:
                for entry in ws.entries(here):
                    length = top.length + 1 + len(os.fsencode(entry.name))
                    rel = (*here, entry.name)
                    look, chosen = choose(rel, entry.is_dir, top.chosen)
                    if not look:
                        continue
                    if length >= volume.PATH_MAX or has_control(entry.name):
                        if chosen or entry.is_dir:
                            skipped.add("long" if length >= volume.PATH_MAX else "name")
                        continue
                    if not entry.is_dir:
                        yield rel, entry, chosen
                    elif waiting >= PENDING_MAX:
                        skipped.add("too-many-folders")
                    else:
                        top.pending.append((entry.name, chosen))
                        waiting += 1
            except UnsafePath as exc:
                skipped.add("unreadable" if "permission" in exc.message else "changed")
        if top.pending:
            name, chosen = top.pending.pop()
            waiting -= 1
            stack.append(_Frame(name, chosen, top.length + 1 + len(os.fsencode(name))))
            continue
        stack.pop()
