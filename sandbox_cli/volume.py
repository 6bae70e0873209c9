"""Safe host-side access to a sandbox's folder, which the container may rewrite at any moment.

Every path is resolved one component at a time from a directory descriptor with O_NOFOLLOW, so
no symlink (final, intermediate or dangling) leads out, even when the container swaps a directory
for a link while we walk. Files are checked through an O_PATH descriptor before they are opened,
so a FIFO, socket or device is never opened at all; writes go to a fresh file that is renamed
into place, so nothing is ever written through a hard link.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from .errors import UnsafePath

CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_PREFIX = ".sandbox-tmp-"


def _show(parts: Iterable[str]) -> str:
    return "/app/" + "/".join(parts)


def _kind(mode: int) -> str:
    for test, label in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                        (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return label
    return "not a regular file"


def open_dir_at(parent_fd: int, name: str, shown: str) -> int:
    """Open directory NAME beneath PARENT_FD, refusing links and anything not a directory."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        raise UnsafePath(f"{shown}: no such directory") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{shown}: refusing to follow, not a directory") from None
        if exc.errno == errno.EACCES:
            raise UnsafePath(f"{shown}: permission denied") from None
        raise


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
    """Resolves and creates directories beneath a root descriptor, caching what it opened.

    Each cached descriptor was reached by O_NOFOLLOW opens from the root, so it names a directory
    inside the sandbox folder for as long as we hold it, whatever the container renames later.
    """

    def __init__(self, root_fd: int, owner: tuple[int, int] | None = None) -> None:
        self.root_fd = root_fd
        self.owner = owner  # chown what we create when the container runs as another user
        self._cache: dict[tuple[str, ...], int] = {(): root_fd}

    def dir_fd(self, parts: tuple[str, ...], *, create: bool) -> int:
        """Descriptor of directory PARTS (relative to the root), creating it when asked."""
        cached = self._cache.get(parts)
        if cached is not None:
            return cached
        parent = self.dir_fd(parts[:-1], create=create)
        name = parts[-1]
        if create:
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
                if self.owner is not None:
                    os.chown(name, *self.owner, dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                pass
        fd = open_dir_at(parent, name, _show(parts))
        self._cache[parts] = fd
        return fd

    def close(self) -> None:
        """Close every descriptor opened (not the root)."""
        for parts, fd in self._cache.items():
            if parts:
                os.close(fd)
        self._cache = {(): self.root_fd}

    def __enter__(self) -> DirWalker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_regular_file(dir_fd: int, name: str, shown: str) -> tuple[int, os.stat_result]:
    """Open NAME for reading only if it is a regular file; FIFOs and devices are never opened.

    An O_PATH descriptor pins the inode and is checked first; it is then reopened through
    /proc/self/fd, which reaches that same inode whatever the container does to the name.
    """
    try:
        path_fd = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise UnsafePath(f"{shown}: no such file") from None
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{shown}: refusing to read {_kind(st.st_mode)}")
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(path_fd)
    return fd, st


def read_to(root_fd: int, parts: tuple[str, ...], out_fd: int) -> int:
    """Copy the file at PARTS to OUT_FD in bounded chunks; returns the bytes written.

    Reads at most the size the file had when opened, so a container that keeps appending
    cannot keep us reading forever.
    """
    with DirWalker(root_fd) as walker:
        parent = walker.dir_fd(parts[:-1], create=False)
        fd, st = open_regular_file(parent, parts[-1], _show(parts))
    try:
        return _copy_fd(fd, out_fd, st.st_size)
    finally:
        os.close(fd)


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
                         0o644, dir_fd=dir_fd)
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
    shown = _show(parts)
    with _refuse_if_removed(shown), DirWalker(root_fd, owner) as walker:
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


def copy_file_in(walker: DirWalker, dest_parts: tuple[str, ...], src_fd: int, size: int) -> None:
    """Copy an open host file into the sandbox at DEST_PARTS (parents created)."""
    shown = _show(dest_parts)
    with _refuse_if_removed(shown):
        parent = walker.dir_fd(dest_parts[:-1], create=True)
        fd, tmp = _new_temp(parent, walker.owner)
        try:
            _copy_range(src_fd, fd, size)
        except BaseException:
            os.close(fd)
            _unlink_quietly(parent, tmp)
            raise
        os.close(fd)
        _commit(parent, tmp, dest_parts[-1], shown)


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


def remove_tree(parent_fd: int, name: str) -> None:
    """Delete NAME beneath PARENT_FD and everything in it, never leaving that directory.

    Links are unlinked, never followed. Only one directory descriptor is held at a time and the
    walk is iterative, so a planted tree thousands of levels deep neither exhausts descriptors
    nor the stack; every step back up through '..' is checked against the recorded inode.
    """
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink_entry(parent_fd, name)
        return
    current = _open_for_removal(parent_fd, name)
    top = os.fstat(current)
    path: list[tuple[str, int, int]] = [(name, top.st_dev, top.st_ino)]
    try:
        while True:
            child_name = None
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        child_name = entry.name
                        break
                    _unlink_entry(current, entry.name)
            if child_name is not None:
                try:
                    child = _open_for_removal(current, child_name)
                except PermissionError:
                    os.fchmod(current, 0o700)
                    child = _open_for_removal(current, child_name)
                cst = os.fstat(child)
                os.close(current)
                current = child
                path.append((child_name, cst.st_dev, cst.st_ino))
                continue
            done_name = path.pop()[0]
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
            if (ust.st_dev, ust.st_ino) != path[-1][1:]:
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
