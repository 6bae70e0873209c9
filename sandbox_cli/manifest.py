"""What copy-to put in a sandbox's /app, for `sandbox diff`.

Kept in the home, never inside /app (where the code could forge it): HOME/manifests/NAME/ holds
`manifest.json` (per path: size, mode, sha256 of the bytes copied, and the inode, mtime and ctime
the copy had in place, for diff's quick check) and `orig/SHA256`, a copy of each copied text file
of at most ORIGINAL_MAX bytes, so diff can show a real unified diff even when the host source has
changed since (rereading the source tree would not be sound). The originals take at most the
sandbox's disk cap in all (1 GiB when unlimited): past either bound a file is still recorded
(its hash, so diff knows whether it changed) but diff names it as binary. The manifest holds at
most FILES_MAX paths (more are left out with a warning) and is read back at most READ_MAX bytes.
It is bound to the sandbox it was made for (its creation time and container id), so a later
sandbox of the same name never sees a stale one; purge removes it with the sandbox's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import validate, volume

if TYPE_CHECKING:
    import hashlib

    from .state import SandboxRecord, StateStore

ORIGINAL_MAX = 1 << 20  # bytes of a text file whose original is kept (and that diff shows)
FILES_MAX = 1 << 18  # paths one manifest records
READ_MAX = 64 << 20  # bytes of manifest.json read back
BINARY_PROBE = 8000  # git's rule: a NUL in the first 8000 bytes makes a file binary
_DEFAULT_BUDGET = 1 << 30
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_binary(data: bytes) -> bool:
    """git's test: a NUL byte in the first BINARY_PROBE bytes."""
    return b"\0" in data[:BINARY_PROBE]


@dataclass
class Item:
    """One recorded file."""

    size: int
    mode: int
    sha: str
    ino: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    kept: bool = False  # its original is in orig/

    def to_json(self) -> list[Any]:
        return [self.size, self.mode, self.sha, self.ino, self.mtime_ns, self.ctime_ns,
                self.kept]

    @classmethod
    def from_json(cls, value: object) -> Item | None:
        if not isinstance(value, list) or len(value) != 7:
            return None
        size, mode, sha, ino, mtime, ctime, kept = value
        if not (all(type(v) is int for v in (size, mode, ino, mtime, ctime))
                and isinstance(sha, str) and len(sha) == 64 and type(kept) is bool):
            return None
        return cls(size, mode, sha, ino, mtime, ctime, kept)


def _identity(record: SandboxRecord) -> str:
    return f"{record.created_at} {record.container_id}"


def _folder(store: StateStore) -> str:
    return os.path.join(store.home, "manifests")


@contextlib.contextmanager
def _opened(store: StateStore, name: str, create: bool) -> Iterator[int | None]:
    """A descriptor of HOME/manifests/NAME (made when CREATE), None when it is missing."""
    top = _folder(store)
    validate.name(name)
    try:
        if create:
            store.ensure_dirs()
            with contextlib.suppress(FileExistsError):
                os.mkdir(top, 0o700)
        parent = os.open(top, _DIR_FLAGS)
    except FileNotFoundError:
        yield None
        return
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            yield None
            return
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def remove(store: StateStore, name: str) -> None:
    """Forget NAME's manifest and originals (purge)."""
    try:
        parent = os.open(_folder(store), _DIR_FLAGS)
    except FileNotFoundError:
        return
    try:
        volume.remove_tree(parent, validate.name(name))
    finally:
        os.close(parent)


def _read(fd: int, record: SandboxRecord) -> dict[str, Any]:
    """manifest.json beneath FD, if it is this sandbox's; else a fresh one."""
    fresh: dict[str, Any] = {"version": 1, "sandbox": _identity(record), "origBytes": 0,
                             "files": {}}
    try:
        src = os.open("manifest.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        return fresh
    try:
        raw = os.read(src, READ_MAX)  # a regular file of ours: one read takes it whole
    finally:
        os.close(src)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return fresh
    if (not isinstance(data, dict) or data.get("sandbox") != _identity(record)
            or not isinstance(data.get("files"), dict)
            or type(data.get("origBytes")) is not int):
        return fresh
    return data


def load(store: StateStore, record: SandboxRecord) -> dict[str, Item]:
    """The recorded files of RECORD's sandbox by path ('a/b.txt' below /app)."""
    with _opened(store, record.name, create=False) as fd:
        if fd is None:
            return {}
        files = _read(fd, record)["files"]
    items = {}
    for path, value in files.items():
        item = Item.from_json(value)
        if item is not None:
            items[path] = item
    return items


def original(store: StateStore, name: str, sha: str) -> bytes | None:
    """The kept original with hash SHA, None when not kept (or no longer readable)."""
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        return None
    with _opened(store, name, create=False) as fd:
        if fd is None:
            return None
        try:
            orig = os.open("orig", _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return None
        try:
            src = os.open(sha, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=orig)
        except FileNotFoundError:
            return None
        finally:
            os.close(orig)
        try:
            return os.read(src, ORIGINAL_MAX + 1)[:ORIGINAL_MAX]
        finally:
            os.close(src)


class Tap:
    """Sees the bytes of one file as copy-to writes them: hashes them and keeps them while
    they fit ORIGINAL_MAX."""

    def __init__(self) -> None:
        import hashlib

        self.hash: hashlib._Hash = hashlib.sha256()
        self.chunks: list[bytes] | None = []
        self.size = 0

    def __call__(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.size += len(chunk)
        if self.chunks is not None:
            if self.size > ORIGINAL_MAX:
                self.chunks = None
            else:
                self.chunks.append(chunk)


class Recorder:
    """Collects what one copy-to wrote, then merges it into the manifest (save). Originals
    wait in memory at most SPILL_BYTES before they are written to orig/."""

    SPILL_BYTES = 8 << 20

    def __init__(self, store: StateStore, record: SandboxRecord) -> None:
        self.store, self.record = store, record
        self.items: dict[str, Item] = {}
        self.blobs: list[tuple[str, bytes]] = []  # originals not yet written
        self.blob_bytes = 0
        self.dropped = 0
        with _opened(store, record.name, create=False) as fd:
            kept = _read(fd, record)["origBytes"] if fd is not None else 0
        self.room = self.budget() - kept  # bytes of originals this copy may still keep

    def add(self, parts: tuple[str, ...], tap: Tap, placed: os.stat_result | None,
            mode: int) -> None:
        """Note one copied file (PLACED: its lstat in /app just after the copy)."""
        path = "/".join(parts)
        if path not in self.items and len(self.items) >= FILES_MAX:
            self.dropped += 1
            return
        sha = tap.hash.hexdigest()
        kept = False
        if tap.chunks is not None:
            data = b"".join(tap.chunks)
            if not is_binary(data) and len(data) <= self.room:
                kept = True
                self.room -= len(data)
                self.blobs.append((sha, data))
                self.blob_bytes += len(data)
        info = placed
        self.items[path] = Item(tap.size, stat.S_IMODE(info.st_mode if info else mode), sha,
                                info.st_ino if info else 0, info.st_mtime_ns if info else 0,
                                info.st_ctime_ns if info else 0, kept)
        if self.blob_bytes > self.SPILL_BYTES:
            self._spill()

    def budget(self) -> int:
        """Bytes of originals this sandbox may keep in all: its disk cap (1 GiB without)."""
        try:
            return int(validate.size_bytes(str(self.record.options.get("disk", ""))))
        except ValueError:  # unlimited (or unreadable): the default
            return _DEFAULT_BUDGET

    def _spill(self) -> None:
        """Write the originals noted so far to orig/ (dropping them from memory)."""
        if not self.blobs:
            return
        with _opened(self.store, self.record.name, create=True) as fd:
            assert fd is not None
            with contextlib.suppress(FileExistsError):
                os.mkdir("orig", 0o700, dir_fd=fd)
            orig = os.open("orig", _DIR_FLAGS, dir_fd=fd)
            try:
                for sha, data in self.blobs:
                    _write_blob(orig, sha, data)
            finally:
                os.close(orig)
        self.blobs, self.blob_bytes = [], 0

    def save(self) -> int:
        """Merge the noted files into manifest.json (under its lock); returns the paths left
        out past FILES_MAX."""
        if not self.items:
            return self.dropped
        self._spill()
        with _opened(self.store, self.record.name, create=True) as fd:
            assert fd is not None
            lock = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                           dir_fd=fd)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                data = _read(fd, self.record)
                files: dict[str, Any] = data["files"]
                for path, item in self.items.items():
                    if path not in files and len(files) >= FILES_MAX:
                        self.dropped += 1
                        continue
                    if item.kept:
                        data["origBytes"] += item.size
                    files[path] = item.to_json()
                _write_json(fd, data)
            finally:
                os.close(lock)
        return self.dropped


def _write_blob(dir_fd: int, name: str, data: bytes) -> None:
    """orig/NAME (content-addressed: an existing one holds the same bytes)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return
    except FileNotFoundError:
        pass
    fd, tmp = volume._new_temp(dir_fd, None)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _write_json(dir_fd: int, data: dict[str, Any]) -> None:
    fd, tmp = volume._new_temp(dir_fd, None)
    try:
        with os.fdopen(os.dup(fd), "w", encoding="utf-8") as out:
            json.dump(data, out, separators=(",", ":"))
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.rename(tmp, "manifest.json", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
