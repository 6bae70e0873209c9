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
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Protocol

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
    hint: str = ""  # a kind the mode cannot say ('hardlink': a tar member naming another)
    uid: int = -1  # the owner, where a tar stream gives it (a snapshot keeps it)
    gid: int = -1

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
        if self.hint:
            return self.hint
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


class Opened:
    """One regular file's bytes as a Source hands them: a descriptor of ours (a host folder:
    copies stay in the kernel) or the reader of a tar member (an engine volume's stream, valid
    until the next item). SIZE and MODE: as the file was opened (the member's header)."""

    __slots__ = ("fd", "mode", "size", "stream")

    def __init__(self, size: int, mode: int, fd: int = -1,
                 stream: IO[bytes] | None = None) -> None:
        self.size, self.mode, self.fd, self.stream = size, mode, fd, stream

    def read(self, n: int) -> bytes:
        """Up to N bytes (b'' at the end)."""
        if self.fd >= 0:
            return os.read(self.fd, n)
        assert self.stream is not None
        return self.stream.read(n)

    def copy_to(self, out_fd: int, size: int) -> None:
        """At most SIZE bytes to OUT_FD (fewer if the file ends first)."""
        if self.fd >= 0:
            volume._copy_range(self.fd, out_fd, size)
        else:
            volume.copy_stream(self.read, out_fd, size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


Item = tuple[tuple[str, ...], Entry, bool]  # (parts below /app, entry, chosen by a pattern)


class Source(Protocol):
    """What copy-from, diff and snapshot read a sandbox's /app through: its entries in one
    pass and the bytes of the regular file last handed out. HostFolder (walk() over the
    host folder) and TarTree (one tar stream of an engine volume) both give it, so the rules
    (the chooser, what is skipped and how it is counted, host-side writing, comparison) are
    written once, in the code that consumes it."""

    def items(self, choose: Chooser, skipped: Skipped) -> Iterator[Item]:
        """Every non-directory entry below /app, as walk() gives them."""
        ...

    def open(self, parts: tuple[str, ...]) -> Opened:
        """The bytes of regular file PARTS (the item last handed out); UnsafePath when it
        is not one any more."""
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

    def items(self, choose: Chooser, skipped: Skipped) -> Iterator[Item]:
        """The Source face: walk() over this folder."""
        return walk(self, choose, skipped)

    def open(self, parts: tuple[str, ...]) -> Opened:
        """The Source face: open_file as an Opened (a descriptor: kernel copies stay)."""
        fd, st = self.open_file(parts)
        return Opened(st.st_size, st.st_mode, fd=fd)

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


# --- an engine volume's tree, from one tar stream ------------------------------------------

_TAR_KINDS = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
              tarfile.FIFOTYPE: stat.S_IFIFO, tarfile.CHRTYPE: stat.S_IFCHR,
              tarfile.BLKTYPE: stat.S_IFBLK, tarfile.REGTYPE: stat.S_IFREG,
              tarfile.AREGTYPE: stat.S_IFREG, tarfile.CONTTYPE: stat.S_IFREG}


def member_parts(name: str) -> tuple[str, ...] | None:
    """The parts below /app of a member of `cp REF:/app/. -` ('.', './a/b' or 'a/b'); () for
    the root; None for a name no real tree holds (absolute, '..', '.', empty parts, a NUL)."""
    if name in (".", "./"):
        return ()
    rest = name[2:] if name.startswith("./") else name
    parts = tuple(rest.split("/"))
    if not rest or any(p in ("", ".", "..") or "\0" in p for p in parts):
        return None
    return parts


def _member_entry(member: tarfile.TarInfo, name: str) -> Entry:
    """MEMBER as an Entry: a hard link (a name for a file the stream already gave) is no
    regular file here: its bytes are not in the stream."""
    mtime_ns = int(member.mtime * 1_000_000_000)
    perm = stat.S_IMODE(member.mode)
    if member.islnk():
        return Entry(name, perm, 0, mtime_ns, 0, 0, "hardlink", member.uid, member.gid)
    kind = 0 if member.issparse() else _TAR_KINDS.get(member.type, 0)
    return Entry(name, kind | perm, member.size, mtime_ns, 0, 0, "" if kind else "other",
                 member.uid, member.gid)


class TarTree:
    """The Source of an engine volume: the tar stream of `cp REF:/app/. -` (the engine reads
    the volume; nothing runs in the image), read once, in stream mode.

    The stream is the container's tree: hostile. Names with '..', absolute or odd names are
    skipped ('name'), and only folders and regular files are ever handed on as such; a file's
    bytes are read from the stream in chunks, never held whole. The header sizes are believed
    for nothing but the budget: every member's bytes pass through the pipe whether chosen or
    not (a sparse terabyte streams as zeros), so the whole stream is held to BUDGET bytes, and
    passing it stops the walk with UnsafePath (LIMIT_HINT says how to raise it).
    """

    def __init__(self, stream: IO[bytes], budget: int, limit_hint: str = "",
                 fetch: Fetch | None = None, finish: Callable[[], None] | None = None) -> None:
        self.stream, self.budget, self.limit_hint = stream, budget, limit_hint
        self.fetch, self.finish = fetch, finish
        self._current: tuple[tuple[str, ...], tarfile.TarInfo] | None = None
        self._tar: tarfile.TarFile | None = None
        self._linked: tuple[tuple[str, ...], Opened, Callable[[], None]] | None = None

    def items(self, choose: Chooser, skipped: Skipped, dirs: bool = False) -> Iterator[Item]:
        """As walk() gives a host folder's (DIRS: folders too, as they come, for snapshot)."""
        try:
            yield from self._members(choose, skipped, dirs)
        finally:  # a consumer that stops early ends a hard link's fetch too
            self._current = None
            self._unlink()

    def _members(self, choose: Chooser, skipped: Skipped, dirs: bool) -> Iterator[Item]:
        # The folders on the path to the current member: (parts, looked into, chosen). The
        # engine writes a folder before what it holds, depth first; a member whose folders did
        # not come first has them judged here as walk() would have.
        path: list[tuple[tuple[str, ...], bool, bool]] = []
        passed = 0
        # Chosen second names of hard links: fetched once the stream has ended (FINISH), never
        # while it is open (the engine would make the fetch wait for the stream's end).
        later: list[tuple[tuple[str, ...], Entry]] = []
        with tarfile.open(fileobj=self.stream, mode="r|", encoding="utf-8",
                          errors="surrogateescape", bufsize=volume.CHUNK) as tar:
            self._tar = tar
            for member in tar:
                self._current = None
                self._unlink()
                if member.size > self.budget - passed:
                    raise self._over(member.name)
                passed += member.size
                rel = member_parts(member.name)
                if rel is None:
                    skipped.add("name")
                    continue
                if not rel:
                    if dirs and member.isdir():
                        yield rel, _member_entry(member, ""), False
                    continue
                look, inherited = self._parent(path, rel, choose)
                if not look:
                    continue
                entry = _member_entry(member, rel[-1])
                look, chosen = choose(rel, entry.is_dir, inherited)
                if not look or _bad_name(rel):
                    if look and (chosen or entry.is_dir):
                        skipped.add("long" if _too_long(rel) else "name")
                    if entry.is_dir:
                        path.append((rel, False, False))
                    continue
                if entry.is_dir:
                    path.append((rel, True, chosen))
                    if not dirs:
                        continue
                elif entry.is_file:
                    self._current = (rel, member)
                elif (entry.hint == "hardlink" and chosen and self.fetch is not None
                      and len(later) < HARDLINKS_MAX):
                    later.append((rel, entry))
                    continue
                yield rel, entry, chosen
        self._tar = self._current = None
        if self.finish is not None:
            self.finish()
        for rel, entry in later:
            self._unlink()
            entry, passed = self._second_name(rel, entry, passed)
            yield rel, entry, True

    def _second_name(self, rel: tuple[str, ...], entry: Entry,
                     passed: int) -> tuple[Entry, int]:
        """A hard link's second name REL, as walk() takes it: a file of its own, fetched by
        FETCH (a `cp` of that one path, whose stream holds its bytes); at most HARDLINKS_MAX
        a stream (the rest are left as they are: skipped 'hardlink')."""
        if self.fetch is None:
            return entry, passed
        got = self.fetch(rel, (entry.uid, entry.gid, stat.S_IMODE(entry.mode),
                               entry.mtime_ns // 1_000_000_000))
        if got is None:  # no regular file there (any more): as a link it stays
            return entry, passed
        opened, close = got
        if opened.size > self.budget - passed:
            close()
            raise self._over("./" + "/".join(rel))
        self._linked = (rel, opened, close)
        return Entry(entry.name, opened.mode, opened.size, entry.mtime_ns, 0, 0, "",
                     entry.uid, entry.gid), passed + opened.size

    def _unlink(self) -> None:
        if self._linked is not None:
            close, self._linked = self._linked[2], None
            close()

    @staticmethod
    def _parent(path: list[tuple[tuple[str, ...], bool, bool]], rel: tuple[str, ...],
                choose: Chooser) -> tuple[bool, bool]:
        """(walk into it, chosen) of REL's folder, PATH brought to end at it."""
        while path and (len(path[-1][0]) >= len(rel) or rel[:len(path[-1][0])] != path[-1][0]):
            path.pop()
        while len(path) < len(rel) - 1:  # folders the stream did not give first
            look, chosen = path[-1][1:] if path else (True, False)
            here = rel[:len(path) + 1]
            if look:
                look, chosen = choose(here, True, chosen)
                look = look and not _bad_name(here)
            path.append((here, look, chosen and look))
        return path[-1][1:] if path else (True, False)

    def open(self, parts: tuple[str, ...]) -> Opened:
        if self._linked is not None and self._linked[0] == parts:
            return self._linked[1]  # (closed with its stream, when the walk moves on)
        current = self._current
        if current is None or current[0] != parts or self._tar is None:
            raise UnsafePath(f"{volume._show(parts)}: changed by the container while read")
        member = current[1]
        handle = self._tar.extractfile(member)
        if handle is None:
            raise UnsafePath(f"{volume._show(parts)}: changed by the container while read")
        return Opened(member.size, stat.S_IFREG | stat.S_IMODE(member.mode), stream=handle)

    def _over(self, name: str) -> UnsafePath:
        rel = member_parts(name)
        shown = volume._show(rel) if rel else "/app"
        return UnsafePath(
            f"{shown}: stopped: the engine streams all of the volume's /app, chosen or not, "
            f"and this would pass the limit of {volume._bytes_text(self.budget)}"
            f"{self.limit_hint}; what was done so far is complete")


HARDLINKS_MAX = 256  # second names of hard-linked files fetched by a `cp` each, per stream
# fetch(parts, (uid, gid, mode, mtime)) -> the one regular file at PARTS, if it is still the
# one so described, and how to end its stream; else None
Fetch = Callable[[tuple[str, ...], tuple[int, int, int, int]],
                 "tuple[Opened, Callable[[], None]] | None"]


def _too_long(rel: tuple[str, ...]) -> bool:
    return (len(os.fsencode("/app/" + "/".join(rel))) >= volume.PATH_MAX
            or any(len(os.fsencode(p)) > volume.NAME_MAX for p in rel))


def _bad_name(rel: tuple[str, ...]) -> bool:
    """A path walk() could not take: too long, or a name with a control character."""
    return _too_long(rel) or has_control(rel[-1])
