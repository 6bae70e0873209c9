"""copy-from: files of a sandbox's /app (hostile, changing under us) to a host folder.

The source side is a tree.Source: tree.walk over the host folder, or the tar stream of an
engine volume (tree.TarTree); either way no link is followed, nothing but regular files is
read, nothing blocks, memory stays bounded. The host side never writes outside DEST: every
subfolder is made with mkdir and opened O_NOFOLLOW from DEST's descriptor (volume.DirWalker),
never reached by a joined path string; each file is written to a fresh O_EXCL temporary file in
its destination folder and then linked into place (link(2) fails on an existing name, so nothing
is overwritten without --force) or, with --force, renamed over the old name (a link there is
replaced, never written through). A failed copy removes its temporary file: no half file.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import tree, volume
from .errors import InvalidInput, UnsafePath

if TYPE_CHECKING:
    from .state import SandboxRecord, StateStore

TOTAL_MAX_DEFAULT = 4 << 30  # bytes one copy-from takes in all (hard links repeat a file)
_HOST_DIR_MODE = 0o755


class _HostDirs(volume.DirWalker):
    """DEST's subfolders, made 0755 and reached from DEST's descriptor alone."""

    dir_mode = _HOST_DIR_MODE


@dataclass
class ExportSummary:
    """What copy-from did: files and bytes copied, DEST, what was left out by kind."""

    files: int = 0
    bytes: int = 0
    destination: str = ""
    skipped: tree.Skipped = field(default_factory=tree.Skipped)
    unmatched: list[str] = field(default_factory=list)  # patterns that chose nothing

    def to_json(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes, "destination": self.destination,
                "skipped": self.skipped.as_dict()}


def chooser(patterns: Sequence[str], excludes: Sequence[str],
            used: list[bool] | None = None) -> tree.Chooser:
    """tree.Chooser for gitignore-style PATTERNS and EXCLUDES (selection's linear matcher);
    USED[i] turns True once pattern i chose an entry."""
    from .selection import _compile_user

    includes = _compile_user(patterns)
    left_out = _compile_user(excludes)

    def choose(rel: tuple[str, ...], is_dir: bool, inherited: bool) -> tuple[bool, bool]:
        if any(rule.match(rel, is_dir) for rule in left_out):
            return False, False
        if inherited:
            return True, True
        hit = False
        for index, rule in enumerate(includes):
            if rule.match(rel, is_dir):
                hit = True
                if used is not None:
                    used[index] = True
        return True, hit

    return choose


def host_mode(mode: int) -> int:
    """A copy's mode on the host: 0755 when the owner could execute it, else 0644."""
    return 0o755 if mode & stat.S_IXUSR else 0o644


def open_dest(dest: str) -> int:
    """A descriptor of host folder DEST, made (with its parents) when missing. DEST itself is
    your own path and may be a link you made; nothing below it is followed."""
    try:
        os.makedirs(dest, mode=_HOST_DIR_MODE, exist_ok=True)
        return os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileExistsError, NotADirectoryError):
        raise InvalidInput(f"DEST {dest!r} is not a folder") from None


def copy_tree(ws: tree.Source, dest_fd: int, patterns: Sequence[str],
              excludes: Sequence[str] = (), *, force: bool = False,
              max_size: int = volume.READ_MAX_DEFAULT, max_total: int = TOTAL_MAX_DEFAULT,
              advance: Callable[[int], None] | None = None) -> ExportSummary:
    """Copy the regular files of WS chosen by PATTERNS (less EXCLUDES) below DEST_FD.

    A file over MAX_SIZE is skipped ('too-large'); the copy stops with UnsafePath before the
    total would pass MAX_TOTAL. Existing names are skipped ('exists') unless FORCE.
    """
    used = [False] * len(patterns)
    summary = ExportSummary()
    skipped = summary.skipped
    with _HostDirs(dest_fd) as dirs:
        for rel, entry, chosen in ws.items(chooser(patterns, excludes, used), skipped):
            if not chosen:
                continue
            if not entry.is_file:
                skipped.add(entry.kind)
                continue
            if entry.size > max_size:
                skipped.add("too-large")
                continue
            if entry.size > max_total - summary.bytes:
                raise _over_total(rel, max_total)
            copied = _copy_one(ws, dirs, rel, force, max_size, max_total - summary.bytes,
                               skipped)
            if copied is not None:
                summary.files += 1
                summary.bytes += copied
                if advance is not None:
                    advance(copied)
    summary.unmatched = [p for p, hit in zip(patterns, used, strict=True) if not hit]
    return summary


def _over_total(rel: tuple[str, ...], max_total: int) -> UnsafePath:
    return UnsafePath(f"{volume._show(rel)}: stopped, the copy would pass its total limit of "
                      f"{volume._bytes_text(max_total)} (raise it with --max-total); the files "
                      "copied so far are complete")


def _copy_one(ws: tree.Source, dirs: volume.DirWalker, rel: tuple[str, ...], force: bool,
              max_size: int, room: int, skipped: tree.Skipped) -> int | None:
    """Copy one file; its size, or None when it was skipped (counted in SKIPPED)."""
    try:
        src = ws.open(rel)
    except UnsafePath as exc:
        skipped.add("locked" if "lease" in exc.message else "changed")
        return None
    try:
        if not stat.S_ISREG(src.mode):
            skipped.add("changed")
            return None
        size = min(src.size, max_size)
        if src.size > max_size:  # it grew past the limit since the directory was read
            skipped.add("too-large")
            return None
        if size > room:  # it grew since the directory was read
            skipped.add("too-large")
            return None
        try:
            parent = dirs.dir_fd(rel[:-1], create=True)
        except UnsafePath:  # a file or a link of yours where a folder goes: left alone
            skipped.add("dest-conflict")
            return None
        return _write(src, size, src.mode, parent, rel[-1], force, skipped)
    finally:
        src.close()


def _write(src: tree.Opened, size: int, mode: int, parent: int, name: str, force: bool,
           skipped: tree.Skipped) -> int | None:
    """SIZE bytes of SRC into a temporary file of PARENT, then into place as NAME."""
    if not force and _exists(parent, name):
        skipped.add("exists")
        return None
    fd, tmp = volume._new_temp(parent, None)
    try:
        src.copy_to(fd, size)
        os.fchmod(fd, host_mode(mode))
        written = os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        volume._unlink_quietly(parent, tmp)
        raise
    os.close(fd)
    try:
        placed = _place(parent, tmp, name, force)
    except BaseException:
        volume._unlink_quietly(parent, tmp)
        raise
    if not placed:
        skipped.add("exists" if _exists(parent, name) else "dest-conflict")
        return None
    return written


def _exists(parent: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


_RENAME_NOREPLACE = 1
_renameat2: list[Any] = []  # [libc's renameat2 or None], looked up once


def _rename_noreplace(parent: int, tmp: str, name: str) -> bool | None:
    """renameat2(RENAME_NOREPLACE): one call where link + unlink take two. True when moved,
    False when NAME exists, None when the kernel, libc or file system lacks it."""
    if not _renameat2:
        try:
            import ctypes

            func = ctypes.CDLL(None, use_errno=True).renameat2
            func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                             ctypes.c_uint]
            _renameat2.append(func)
        except (OSError, AttributeError):
            _renameat2.append(None)
    func = _renameat2[0]
    if func is None:
        return None
    if func(parent, os.fsencode(tmp), parent, os.fsencode(name), _RENAME_NOREPLACE) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return None
    raise OSError(err, os.strerror(err))


def _place(parent: int, tmp: str, name: str, force: bool) -> bool:
    """Move TMP to NAME; False (TMP removed) when NAME is there and not FORCE, or is a
    folder. Without FORCE, link(2) is the atomic 'create only if absent'."""
    if force:
        try:
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            return True
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                volume._unlink_quietly(parent, tmp)
                return False
            raise
    moved = _rename_noreplace(parent, tmp, name)
    if moved is not None:
        if not moved:
            volume._unlink_quietly(parent, tmp)
        return moved
    try:
        os.link(tmp, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
    except FileExistsError:
        volume._unlink_quietly(parent, tmp)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links on this file system: check, then rename (a narrow race with
        # yourself, never with the container, which cannot reach the host folder).
        if _exists(parent, name):
            volume._unlink_quietly(parent, tmp)
            return False
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        return True
    with suppress(OSError):
        os.unlink(tmp, dir_fd=parent)
    return True


@contextmanager
def workspace(store: StateStore, record: SandboxRecord, budget: int = TOTAL_MAX_DEFAULT,
              limit_hint: str = "") -> Iterator[tree.Source]:
    """RECORD's /app as a tree.Source: its host folder (a walk), or its engine volume (one
    tar stream of `cp`, held to BUDGET bytes in all; LIMIT_HINT: how to raise it)."""
    from .sandbox import workspace_of
    from .workspace import EngineVolume

    place = workspace_of(store, record)
    if isinstance(place, EngineVolume):
        if not record.expired() and not _container_running(record):
            # run's container goes (--rm) once its command ends, its volume stays: a helper
            # reads it (one that is going already would fail the cp halfway)
            place = workspace_of(store, record, helper=True)
        assert isinstance(place, EngineVolume)
        with place.tree(budget, limit_hint) as source:
            yield source
        return
    with volume.opened_root(store.volumes_dir, record.name) as root:
        folder = tree.HostFolder(root)
        try:
            yield folder
        finally:
            folder.close()


def _container_running(record: SandboxRecord) -> bool:
    """Whether RECORD's container is there and running (Docker and Podman alike)."""
    import json

    from . import docker
    from .sandbox import container_ref

    proc = docker.run_docker(docker.inspect_argv([container_ref(record)]), check=False)
    try:
        rows = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    except ValueError:
        return False
    state = rows[0].get("State") if rows and isinstance(rows[0], dict) else None
    return isinstance(state, dict) and state.get("Running") is True


def copy_from(store: StateStore, name: str, patterns: Sequence[str], dest: str = ".",
              excludes: Sequence[str] = (), *, force: bool = False,
              max_size: int = volume.READ_MAX_DEFAULT, max_total: int = TOTAL_MAX_DEFAULT,
              advance: Callable[[int], None] | None = None) -> ExportSummary:
    """`sandbox copy-from`: validate, then copy_tree from NAME's /app into host folder DEST.
    An expired sandbox's files can still be copied (as `read` can)."""
    from .sandbox import require
    from .selection import pattern

    for text in (*patterns, *excludes):
        pattern(text)
    record = require(store, name, expired_ok=True)
    dest_fd = open_dest(dest)
    try:
        with workspace(store, record, max_total, " (raise it with --max-total)") as ws:
            summary = copy_tree(ws, dest_fd, patterns, excludes, force=force,
                                max_size=max_size, max_total=max_total, advance=advance)
    finally:
        os.close(dest_fd)
    summary.destination = dest
    return summary


def summary_line(summary: ExportSummary) -> str:
    """'copied 3 files (1.2 KB) to out; skipped 2: 1 fifo, 1 link'."""
    from .ui import human_bytes, plural

    line = (f"copied {plural(summary.files, 'file')} ({human_bytes(summary.bytes)}) "
            f"to {summary.destination}")
    if summary.skipped.total():
        line += f"; skipped {summary.skipped.total()}: {summary.skipped.text()}"
        if summary.skipped.counts.get("exists"):
            line += " (--force overwrites)"
    return line
