"""Safe host-side access to a sandbox's folder, which the container may rewrite at any moment.

Every path is resolved one component at a time from a directory descriptor with O_NOFOLLOW, so
no symlink (final, intermediate or dangling) leads out, even when the container swaps a directory
for a link while we walk. Files are checked through an O_PATH descriptor before they are opened,
so a FIFO, socket or device is never opened at all; writes go to a fresh file that is renamed
into place, so nothing is ever written through a hard link. The walk is iterative and holds a
bounded number of directory descriptors, so neither a tree thousands of levels deep nor one with
thousands of directories exhausts the stack or the descriptor limit; a name or path too long for
the kernel is refused (exit code 4), never a traceback.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from .errors import InvalidInput, UnsafePath

CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_PREFIX = ".sandbox-tmp-"
NAME_MAX = 255  # bytes in one name (Linux)
PATH_MAX = 4096  # bytes in a path with its NUL: the container cannot name anything longer
# Group bits rw: with the folder's ACLs (acl.py) they are the mask that lets the sandbox user
# (not you, unless you are root) change what you put there.
FILE_MODE, DIR_MODE = 0o664, 0o775
_SHOWN_MAX = 160  # characters of a path quoted in a message
READ_MAX_DEFAULT = 1 << 30  # bytes `read` (and any copy out) takes unless told otherwise
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'512k', '10m', '1g', '2T', '100' (bytes) -> bytes; binary units, optional trailing b/ib."""
    value = text.strip().lower()
    for tail in ("ib", "b"):
        if len(value) > 1 and value.endswith(tail) and value[-len(tail) - 1].isalpha():
            value = value[: -len(tail)]
            break
    unit = value[-1:] if value[-1:].isalpha() else ""
    number = value[: len(value) - len(unit)]
    if unit not in _SIZE_UNITS or not number.isdigit() or int(number) <= 0:
        raise InvalidInput(f"invalid size {text!r}: expected e.g. 100m or 2g")
    return int(number) * _SIZE_UNITS[unit]


def _bytes_text(count: int) -> str:
    """1073741824 -> '1 GiB', 1536 -> '1536 bytes'; exact, for limits quoted in refusals."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


def bytes_text(count: int) -> str:
    """_bytes_text, for other modules' refusals."""
    return _bytes_text(count)


def _show(parts: Iterable[str]) -> str:
    """PARTS as the container sees them (/app/...), shortened in the middle when very long."""
    text = "/".join(parts)
    if len(text) > _SHOWN_MAX:
        half = _SHOWN_MAX // 2
        text = f"{text[:half]}...{text[-half:]}"
    return "/app/" + text


def _check_length(parts: tuple[str, ...]) -> None:
    """Refuse a name longer than NAME_MAX or a path the container could not name, up front."""
    for part in parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UnsafePath(f"{_show(parts)}: name too long (at most {NAME_MAX} bytes a name)")
    size = len(os.fsencode("/app/" + "/".join(parts)))
    if size >= PATH_MAX:
        raise UnsafePath(f"{_show(parts)}: path too long ({size} bytes; at most {PATH_MAX - 1})")


check_length = _check_length  # for the engine-volume workspace (workspace.py)


@contextmanager
def _refuse_too_long(shown: str) -> Iterator[None]:
    """ENAMETOOLONG from any call below (a file system with a shorter NAME_MAX): a refusal."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        raise UnsafePath(f"{shown}: name too long for the file system") from None


def _kind(mode: int) -> str:
    for test, label in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                        (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return label
    return "not a regular file"


def _dir_refusal(exc: OSError, shown: str, parent_fd: int = -1,
                 name: str = "") -> UnsafePath | None:
    """The refusal an error opening directory SHOWN (NAME beneath PARENT_FD) stands for, or
    None for a host failure. A link in place of a folder is named as one."""
    if exc.errno == errno.ENOENT:
        return UnsafePath(f"{shown}: no such directory")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        if exc.errno == errno.ELOOP or _is_link(parent_fd, name):
            return UnsafePath(f"{shown}: is a symbolic link; refusing to follow it")
        return UnsafePath(f"{shown}: not a directory")
    if exc.errno == errno.EACCES:
        return UnsafePath(f"{shown}: permission denied")
    if exc.errno == errno.ENAMETOOLONG:
        return UnsafePath(f"{shown}: name too long for the file system")
    return None


def _is_link(parent_fd: int, name: str) -> bool:
    """Whether NAME beneath PARENT_FD is a symbolic link now (never follows it)."""
    if parent_fd < 0 or not name:
        return False
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_dir_at(parent_fd: int, name: str, shown: str) -> int:
    """Open directory NAME beneath PARENT_FD, refusing links and anything not a directory."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        refusal = _dir_refusal(exc, shown, parent_fd, name)
        if refusal is None:
            raise
        raise refusal from None


@contextmanager
def opened_root(volumes_dir: str, name: str) -> Iterator[int]:
    """A descriptor for the sandbox folder VOLUMES_DIR/NAME (itself never a link)."""
    try:
        parent = os.open(volumes_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnsafePath(f"sandbox folder missing: {volumes_dir}/{name}") from None
    try:
        fd = open_dir_at(parent, name, f"{volumes_dir}/{name}")
    finally:
        os.close(parent)
    try:
        yield fd
    finally:
        os.close(fd)


class DirWalker:
    """Resolves and creates directories beneath a root descriptor, caching a few it opened.

    Each cached descriptor was reached by O_NOFOLLOW opens from the root (or from another cached
    one, itself so reached), so it names a directory inside the sandbox folder for as long as we
    hold it, whatever the container renames later. The cache keeps the CACHE_SIZE most recently
    used directories (with copy-to's sorted walk: the current directory and its nearest
    ancestors); an evicted one is closed and, when needed again, resolved afresh from its nearest
    cached ancestor or the root. The walk is a loop, so depth costs no stack.
    """

    CACHE_SIZE = 32
    dir_mode = DIR_MODE  # of the folders it creates (copy-from's host side: 0o755)

    def __init__(self, root_fd: int, owner: tuple[int, int] | None = None) -> None:
        self.root_fd = root_fd
        self.owner = owner  # chown what we create when the container runs as another user
        self._cache: OrderedDict[tuple[str, ...], int] = OrderedDict()

    def dir_fd(self, parts: tuple[str, ...], *, create: bool) -> int:
        """Descriptor of directory PARTS (relative to the root), creating it when asked.

        The descriptor belongs to the walker: it stays open until the next dir_fd call or close.
        """
        fd, have = self.root_fd, 0
        if self._cache:
            for depth in range(len(parts), 0, -1):  # the deepest cached ancestor (or PARTS)
                cached = self._cache.get(parts[:depth])
                if cached is not None:
                    self._cache.move_to_end(parts[:depth])
                    fd, have = cached, depth
                    break
        for depth in range(have + 1, len(parts) + 1):
            fd = self._open_child(fd, parts[:depth], create)
        return fd

    def _open_child(self, parent: int, parts: tuple[str, ...], create: bool) -> int:
        """Open (after creating, when asked) the last of PARTS beneath PARENT, and cache it."""
        name = parts[-1]
        if create:
            try:
                os.mkdir(name, self.dir_mode, dir_fd=parent)
                if self.owner is not None:
                    os.chown(name, *self.owner, dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:
                    raise UnsafePath(f"{_show(parts)}: name too long for the file system") from None
                raise
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:  # the message is built only on failure: depth costs no O(n^2)
            refusal = _dir_refusal(exc, _show(parts), parent, name)
            if refusal is None:
                raise
            raise refusal from None
        self._remember(parts, fd)
        return fd

    def _remember(self, parts: tuple[str, ...], fd: int) -> None:
        old = self._cache.pop(parts, None)
        if old is not None:
            os.close(old)
        self._cache[parts] = fd
        while len(self._cache) > self.CACHE_SIZE:
            os.close(self._cache.popitem(last=False)[1])

    def close(self) -> None:
        """Close every descriptor opened (not the root)."""
        while self._cache:
            os.close(self._cache.popitem()[1])

    def __enter__(self) -> DirWalker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_regular_file(dir_fd: int, name: str, shown: str) -> tuple[int, os.stat_result]:
    """Open NAME for reading only if it is a regular file; FIFOs and devices are never opened.

    An O_PATH descriptor pins the inode and is checked first; it is then reopened through
    /proc/self/fd, which reaches that same inode whatever the container does to the name. That
    open is O_NONBLOCK: a lease the container holds on its file (F_SETLEASE) would otherwise make
    us wait the kernel's lease-break time (45 s by default); it is refused at once instead.
    """
    try:
        path_fd = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise UnsafePath(f"{shown}: no such file") from None
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{shown}: refusing to read {_kind(st.st_mode)}")
        try:
            fd = os.open(f"/proc/self/fd/{path_fd}",
                         os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except BlockingIOError:
            raise UnsafePath(f"{shown}: locked by the container (a file lease); "
                             "not read") from None
    finally:
        os.close(path_fd)
    return fd, st


def read_to(root_fd: int, parts: tuple[str, ...], out_fd: int,
            max_size: int = READ_MAX_DEFAULT) -> int:
    """Copy the file at PARTS to OUT_FD in bounded chunks; returns the bytes written.

    A file larger than MAX_SIZE when opened (a sparse `truncate -s 1T` file included) is
    refused before a byte is written. The copy then takes at most the size the file had when
    opened, itself at most MAX_SIZE, so a container that keeps appending cannot keep us reading
    forever nor past the limit. Every copy out of a sandbox should come through here.
    """
    _check_length(parts)
    shown = _show(parts)
    with _refuse_too_long(shown), DirWalker(root_fd) as walker:
        parent = walker.dir_fd(parts[:-1], create=False)
        fd, st = open_regular_file(parent, parts[-1], shown)
    try:
        if st.st_size > max_size:
            raise UnsafePath(f"{shown}: {st.st_size} bytes, over the read limit of "
                             f"{_bytes_text(max_size)} (raise it with --max-size)")
        return _copy_fd(fd, out_fd, min(st.st_size, max_size))
    finally:
        os.close(fd)


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to LIMIT bytes from FD, read in bounded chunks until LIMIT or the end."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _copy_fd(src: int, dst: int, limit: int) -> int:
    """Copy up to LIMIT bytes from SRC to DST, in the kernel where it can."""
    done = 0
    use_sendfile = True
    while done < limit:
        want = min(CHUNK * 8, limit - done)
        if use_sendfile:
            try:
                sent = os.sendfile(dst, src, None, want)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EBADF) and done == 0:
                    use_sendfile = False
                    continue
                raise
        else:
            data = os.read(src, min(CHUNK, want))
            sent = len(data)
            if sent:
                view = memoryview(data)
                while view:
                    view = view[os.write(dst, view):]
        if sent == 0:
            break
        done += sent
    return done


def _new_temp(dir_fd: int, owner: tuple[int, int] | None) -> tuple[int, str]:
    """Create a fresh file in DIR_FD (O_EXCL: never an existing file, link or FIFO)."""
    for _ in range(100):
        tmp = _TMP_PREFIX + os.urandom(8).hex()  # as secrets.token_hex, without its import
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE, dir_fd=dir_fd)
        except FileExistsError:
            continue
        if owner is not None:
            os.fchown(fd, *owner)
        return fd, tmp
    raise UnsafePath("could not create a temporary file")


def _commit(dir_fd: int, tmp: str, name: str, shown: str) -> None:
    """Rename TMP over NAME: replaces a link or hard link by a new file, never writes through."""
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        _unlink_quietly(dir_fd, tmp)
        if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise UnsafePath(f"{shown}: is a directory") from None
        raise


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


@contextmanager
def _refuse_if_removed(shown: str) -> Iterator[None]:
    """ENOENT mid-write means the container removed a directory we hold open, or our temporary
    file, between two of our calls: a refusal (exit code 4), not a crash with a traceback."""
    try:
        yield
    except FileNotFoundError:
        raise UnsafePath(f"{shown}: changed by the container while writing; not written") from None


def write_from(root_fd: int, parts: tuple[str, ...], source: BinaryIO | bytes,
               owner: tuple[int, int] | None = None) -> int:
    """Write SOURCE (bytes, or a stream read in chunks) to PARTS, creating parent folders."""
    _check_length(parts)
    shown = _show(parts)
    with _refuse_too_long(shown), _refuse_if_removed(shown), \
            DirWalker(root_fd, owner) as walker:
        parent = walker.dir_fd(parts[:-1], create=True)
        fd, tmp = _new_temp(parent, owner)
        written = 0
        try:
            if isinstance(source, bytes):
                chunks: Iterable[bytes] = (source,)
            else:
                chunks = iter(lambda: source.read(CHUNK), b"")
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    written += n
        except BaseException:
            os.close(fd)
            _unlink_quietly(parent, tmp)
            raise
        os.close(fd)
        _commit(parent, tmp, parts[-1], shown)
    return written


def copy_file_in(walker: DirWalker, dest_parts: tuple[str, ...], src_fd: int, size: int,
                 mode: int | None = None,
                 tap: Callable[[bytes], None] | None = None) -> os.stat_result | None:
    """Copy an open host file into the sandbox at DEST_PARTS (parents created).

    MODE is the source's st_mode: its permission bits, as shared_mode gives them, go to
    the copy (so an executable stays executable); without it the copy is a plain 0o644 file.
    TAP, when given, sees every byte written (copy-to's manifest hashes them: what it records
    is what was copied); the lstat of the file in place is then returned.
    """
    _check_length(dest_parts)
    shown = _show(dest_parts)
    with _refuse_too_long(shown), _refuse_if_removed(shown):
        parent = walker.dir_fd(dest_parts[:-1], create=True)
        fd, tmp = _new_temp(parent, walker.owner)
        try:
            if tap is None:
                _copy_range(src_fd, fd, size)
            else:
                _copy_tapped(src_fd, fd, size, tap)
            if mode is not None:  # after any fchown (which would clear set-id bits anyway)
                os.fchmod(fd, shared_mode(mode))
            ino = os.fstat(fd).st_ino
        except BaseException:
            os.close(fd)
            _unlink_quietly(parent, tmp)
            raise
        os.close(fd)
        _commit(parent, tmp, dest_parts[-1], shown)
        if tap is None:
            return None
        try:  # after the rename, which changes the ctime a later diff compares
            placed = os.stat(dest_parts[-1], dir_fd=parent, follow_symlinks=False)
        except OSError:
            return None
        return placed if placed.st_ino == ino else None


def write_all(fd: int, data: bytes) -> None:
    """All of DATA to FD (one os.write may take less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_stream(read: Callable[[int], bytes], out_fd: int, size: int) -> int:
    """At most SIZE bytes from READ (a file object's read) to OUT_FD, a chunk at a time, so
    memory stays bounded; returns how many went (fewer when the source ends first)."""
    done = 0
    while done < size:
        chunk = read(min(CHUNK, size - done))
        if not chunk:
            break
        write_all(out_fd, chunk)
        done += len(chunk)
    return done


def _copy_tapped(src: int, dst: int, size: int, tap: Callable[[bytes], None]) -> None:
    """Copy SIZE bytes (fewer if SRC shrinks) through user space, showing each chunk to TAP."""
    done = 0
    while done < size:
        chunk = os.read(src, min(CHUNK, size - done))
        if not chunk:
            break
        tap(chunk)
        write_all(dst, chunk)
        done += len(chunk)


def shared_mode(mode: int) -> int:
    """The permission bits a copy of a file of MODE gets: the source's (no set-id, sticky or
    other-write bits), with the owner's also given to the group, which with the folder's ACLs
    is the sandbox user (acl.py): what you may do to the copy, the code may too."""
    keep = stat.S_IMODE(mode) & 0o755
    return keep | (keep & 0o700) >> 3 | 0o060


def _copy_range(src: int, dst: int, size: int) -> None:
    """File-to-file copy: copy_file_range (reflink/in-kernel) with a sendfile fallback."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done)
        except (OSError, AttributeError):
            _copy_fd(src, dst, size - done)
            return
        if n == 0:
            break
        done += n


# --- removal -------------------------------------------------------------------------------

def _make_accessible(parent_fd: int, name: str) -> None:
    """Give ourselves rwx on directory NAME without following a link (O_PATH + /proc)."""
    fd = os.open(name, _PATH_FLAGS | os.O_DIRECTORY, dir_fd=parent_fd)
    try:
        os.chmod(f"/proc/self/fd/{fd}", 0o700)
    finally:
        os.close(fd)


def _open_for_removal(parent_fd: int, name: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        _make_accessible(parent_fd, name)
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def _unlink_entry(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except PermissionError:
        os.fchmod(dir_fd, 0o700)
        os.unlink(name, dir_fd=dir_fd)


_BATCH = 4096  # subfolder names taken from one scan of a directory
_PENDING_MAX = 1 << 16  # subfolder names held over all levels of the walk at once


class _Level:
    """One directory on the removal path: its name, identity and the subfolders still to go."""

    __slots__ = ("complete", "dev", "ino", "name", "pending")

    def __init__(self, name: str, dev: int, ino: int) -> None:
        self.name, self.dev, self.ino = name, dev, ino
        self.pending: list[str] = []
        self.complete = False  # the last scan reached the end: nothing is left beyond PENDING


def _scan_level(fd: int, level: _Level, room: int, tally: Tally | None = None) -> None:
    """Unlink the non-directories of FD and note up to ROOM (at least one) subfolder names.

    One scan reads each entry once; a directory with more subfolders than ROOM is scanned again
    only after those are gone, so a folder of N subfolders costs N / _BATCH scans, not N.
    """
    room = max(1, room)
    level.complete = True
    found: list[tuple[int, str]] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if len(found) >= room:
                    level.complete = False
                    break
                found.append((entry.inode(), entry.name))
            else:
                if tally is not None:
                    tally.files += 1
                    with suppress(OSError):
                        tally.bytes += entry.stat(follow_symlinks=False).st_size
                _unlink_entry(fd, entry.name)
    # Taken (popped) in inode order, as rm -rf does: neighbouring inodes share disk blocks.
    found.sort(reverse=True)
    level.pending = [name for _, name in found]


def _rmdir_if_empty(dir_fd: int, name: str) -> bool:
    """Remove NAME beneath DIR_FD when it is an empty folder (or unlink it when it turned into
    something else); False when it has entries and must be walked."""
    try:
        os.rmdir(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return True
    except PermissionError:
        os.fchmod(dir_fd, 0o700)
        return _rmdir_if_empty(dir_fd, name)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        if exc.errno == errno.ENOTDIR:  # no longer a folder: remove it as a file
            _unlink_entry(dir_fd, name)
            return True
        raise


def empty_tree(root_fd: int, tally: Tally | None = None) -> None:
    """Delete everything beneath ROOT_FD, which itself stays; a batch of names at a time, so
    a folder a million entries wide costs no more memory than a narrow one."""
    while True:
        with os.scandir(root_fd) as entries:
            names = [entry.name for _, entry in zip(range(_BATCH), entries, strict=False)]
        if not names:
            return
        for name in names:
            remove_tree(root_fd, name, tally)


class Tally:
    """What a removal took away: entries other than folders, and their bytes."""

    __slots__ = ("bytes", "files")

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0


def remove_tree(parent_fd: int, name: str, tally: Tally | None = None) -> None:
    """Delete NAME beneath PARENT_FD and everything in it, never leaving that directory;
    TALLY, when given, counts what went (costing an lstat a file, so only when asked).

    Links are unlinked, never followed. Only one directory descriptor is held at a time and the
    walk is iterative, so a planted tree thousands of levels deep neither exhausts descriptors
    nor the stack; every step back up through '..' is checked against the recorded inode. Each
    subfolder is first tried with rmdir (an empty one costs one call, no descent), and a scan
    notes a batch of subfolder names (bounded per level and overall), so the work is linear in
    the number of entries rather than a rescan of the folder after each subfolder.
    """
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        if tally is not None:
            tally.files, tally.bytes = tally.files + 1, tally.bytes + st.st_size
        _unlink_entry(parent_fd, name)
        return
    current = _open_for_removal(parent_fd, name)
    top = os.fstat(current)
    path = [_Level(name, top.st_dev, top.st_ino)]
    held = 0  # subfolder names pending over all levels
    try:
        while True:
            level = path[-1]
            if not level.pending and not level.complete:
                _scan_level(current, level, min(_BATCH, _PENDING_MAX - held), tally)
                held += len(level.pending)
            child = None
            while level.pending:
                child_name = level.pending.pop()
                held -= 1
                if not _rmdir_if_empty(current, child_name):
                    child = child_name
                    break
            if child is not None:
                try:
                    child_fd = _open_for_removal(current, child)
                except PermissionError:
                    os.fchmod(current, 0o700)
                    child_fd = _open_for_removal(current, child)
                cst = os.fstat(child_fd)
                os.close(current)
                current = child_fd
                path.append(_Level(child, cst.st_dev, cst.st_ino))
                continue
            if not level.complete:
                continue  # more subfolders beyond the last batch: scan again
            done_name = path.pop().name
            if not path:
                os.close(current)
                current = -1
                try:
                    os.rmdir(done_name, dir_fd=parent_fd)
                except PermissionError:
                    os.fchmod(parent_fd, 0o700)
                    os.rmdir(done_name, dir_fd=parent_fd)
                return
            up = os.open("..", _DIR_FLAGS, dir_fd=current)
            ust = os.fstat(up)
            if (ust.st_dev, ust.st_ino) != (path[-1].dev, path[-1].ino):
                os.close(up)
                raise UnsafePath("sandbox folder changed during removal; stopped")
            os.close(current)
            current = up
            try:
                os.rmdir(done_name, dir_fd=current)
            except PermissionError:
                os.fchmod(current, 0o700)
                os.rmdir(done_name, dir_fd=current)
    finally:
        if current >= 0:
            os.close(current)
