"""The workspace seam: where a sandbox's /app lives, and the one interface every file command
goes through (write a file, read a file, copy a selection in, remove everything, describe).

Two kinds, recorded per sandbox in its state entry:
- `HostFolder` (kind `bind`): a folder of the sandbox home bind-mounted at /app (volume.py
  does the hostile-safe host-side access; as root it is a size-capped image, disk.py). The
  fastest, for an engine that sees the client's files.
- `EngineVolume` (kind `volume`): a named volume in the engine, labelled like the container,
  reached only through the engine: `write` and `copy-to` are one tar stream into
  `cp - NAME:/app`, `read` is `cp NAME:/app/F -`, of which exactly one regular file is
  accepted and streamed out in bounded chunks (a link, FIFO, device or directory in the
  stream is refused; Podman's cp follows a final link, so the member's name must be the one
  asked for too). For engines on another host (docker:dind, ssh://, a context) or in another
  mount namespace: nothing is needed in the image but `chown` for the volume's root (Docker).

The container is hostile in both: it may swap, link or grow anything at any moment.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol, cast

from . import docker, volume
from .errors import DockerError, SandboxError, UnsafePath

BIND, VOLUME = "bind", "volume"
STORAGES = ("auto", BIND, VOLUME)
SANDBOX_UID = 65534  # the user the code runs as (nobody); files we put there are theirs
_CHUNK = 1 << 20
_SMALL_FILE = 256 << 10  # files up to this are copied with the headers; larger: sendfile
_SPOOL_MAX = 8 << 20  # stdin of unknown size is spooled (beyond this, to a temporary file)
DEADLINE_COPY = 3600.0  # a tar stream of a large tree over a slow link


if TYPE_CHECKING:
    import tarfile  # imported where used, after the docker client is spawned (see _TarOut)

    from .manifest import Recorder
    from .tree import Fetch, TarTree


class Workspace(Protocol):
    """What the file commands need of a sandbox's /app."""

    kind: str

    def write(self, parts: tuple[str, ...], source: BinaryIO | bytes) -> int: ...

    def read(self, parts: tuple[str, ...], out_fd: int, max_size: int) -> int: ...

    def copy_in(self, root: str, files: Sequence[tuple[str, ...]], dest: tuple[str, ...],
                advance: Callable[[int], None] | None,
                recorder: Recorder | None = None) -> int: ...

    def describe(self) -> str: ...


class HostFolder:
    """/app as a host folder (bind mount), through volume.py."""

    kind = BIND

    def __init__(self, volumes_dir: str, name: str, owner: tuple[int, int] | None) -> None:
        self.volumes_dir, self.name, self.owner = volumes_dir, name, owner

    def write(self, parts: tuple[str, ...], source: BinaryIO | bytes) -> int:
        with volume.opened_root(self.volumes_dir, self.name) as root:
            return volume.write_from(root, parts, source, self.owner)

    def read(self, parts: tuple[str, ...], out_fd: int, max_size: int) -> int:
        with volume.opened_root(self.volumes_dir, self.name) as root:
            return volume.read_to(root, parts, out_fd, max_size)

    def copy_in(self, root: str, files: Sequence[tuple[str, ...]], dest: tuple[str, ...],
                advance: Callable[[int], None] | None,
                recorder: Recorder | None = None) -> int:
        """Copy FILES (below ROOT) to DEST; RECORDER, when given, notes each for diff."""
        from .manifest import Tap

        total = 0
        with volume.opened_root(self.volumes_dir, self.name) as root_fd, \
                volume.DirWalker(root_fd, self.owner) as walker:
            for rel in files:
                src = _open_source(root, rel)
                try:
                    info = os.fstat(src)
                    tap = Tap() if recorder is not None else None
                    placed = volume.copy_file_in(walker, dest + rel, src, info.st_size,
                                                 info.st_mode, tap=tap)
                    if recorder is not None and tap is not None:
                        recorder.add(dest + rel, tap, placed, info.st_mode)
                finally:
                    os.close(src)
                total += info.st_size
                if advance:
                    advance(info.st_size)
        return total

    def describe(self) -> str:
        return os.path.join(self.volumes_dir, self.name)


def _open_source(root: str, rel: tuple[str, ...]) -> int:
    return os.open(os.path.join(root, *rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def volume_name(home_label: str, name: str) -> str:
    """The engine volume of sandbox NAME of the home labelled HOME_LABEL."""
    return f"sandbox-{home_label}-{name}"


class EngineVolume:
    """/app as an engine volume, through tar streams of `cp` into and out of a container
    (REF: the sandbox's container, or a helper made for an expired one)."""

    kind = VOLUME

    def __init__(self, volume_name: str, container: Callable[[], Iterator[str]],
                 uid: int = SANDBOX_UID) -> None:
        self.volume = volume_name
        self._container = contextmanager(container)
        self.uid = uid

    def describe(self) -> str:
        return f"volume:{self.volume}"

    # --- in -------------------------------------------------------------------------------

    def _dir(self, name: str) -> tarfile.TarInfo:
        import tarfile

        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, volume.DIR_MODE, int(time.time())
        info.uid = info.gid = self.uid
        return info

    def _file(self, name: str, size: int, mode: int = volume.FILE_MODE,
              mtime: float | None = None) -> tarfile.TarInfo:
        import tarfile

        info = tarfile.TarInfo(name)
        info.size, info.mode = size, mode
        info.mtime = int(time.time() if mtime is None else mtime)
        info.uid = info.gid = self.uid
        return info

    def _stream_in(self, shown: str, fill: Callable[[_TarOut], None]) -> None:
        """Run `cp - REF:/app` with the tar stream FILL writes. Folders come as entries of
        their own before their files: an engine unpacking the stream replaces whatever
        non-folder (a link the code planted) stands where a folder goes, and a file entry
        replaces a link rather than writing through it."""
        from . import engine

        with self._container() as ref:
            argv = engine.current().cp_in_argv(ref, docker.WORKDIR)
            proc = docker.popen_docker(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
            assert proc.stdin is not None and proc.stderr is not None
            err = _collect(proc.stderr)
            try:
                tar = _TarOut(proc.stdin.fileno())
                fill(tar)
                tar.close()
                proc.stdin.close()
            except BrokenPipeError:  # the client gave up: its stderr says why
                pass
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            code = docker.wait_docker(proc, argv, DEADLINE_COPY)
            if code != 0:
                raise _cp_failure(argv, code, err(), shown)

    def write(self, parts: tuple[str, ...], source: BinaryIO | bytes) -> int:
        volume.check_length(parts)
        shown = "/app/" + "/".join(parts)
        data, size, regular = _sized(source)
        try:
            def fill(tar: _TarOut) -> None:
                for depth in range(1, len(parts)):
                    tar.add(self._dir("/".join(parts[:depth])))
                tar.add(self._file("/".join(parts), size), data, regular)

            self._stream_in(shown, fill)
        finally:
            data.close()
        return size

    def copy_in(self, root: str, files: Sequence[tuple[str, ...]], dest: tuple[str, ...],
                advance: Callable[[int], None] | None,
                recorder: Recorder | None = None) -> int:
        """One tar stream into the container; RECORDER, when given, notes each file for
        diff from the bytes as they go into the stream."""
        total = [0]

        def fill(tar: _TarOut) -> None:
            made: set[tuple[str, ...]] = set()
            for rel in files:
                target = dest + rel
                volume.check_length(target)
                for depth in range(1, len(target)):
                    if target[:depth] not in made:
                        made.add(target[:depth])
                        tar.add(self._dir("/".join(target[:depth])))
                src = _open_source(root, rel)
                with os.fdopen(src, "rb") as handle:
                    info = os.fstat(src)
                    info_ = self._file("/".join(target), info.st_size,
                                       volume.shared_mode(info.st_mode), info.st_mtime)
                    if recorder is None:  # the bytes go by sendfile, never through Python
                        tar.add(info_, handle, regular=stat.S_ISREG(info.st_mode))
                    else:  # diff's manifest: each byte is hashed on its way into the stream
                        tapped = _Tapped(handle, recorder, target,
                                         volume.shared_mode(info.st_mode))
                        tar.add(info_, tapped)  # type: ignore[arg-type]
                        tapped.done()
                total[0] += info.st_size
                if advance:
                    advance(info.st_size)

        self._stream_in("/app/" + "/".join(dest), fill)
        return total[0]

    # --- out ------------------------------------------------------------------------------

    def read(self, parts: tuple[str, ...], out_fd: int, max_size: int) -> int:
        """Stream the one regular file PARTS names out of `cp REF:/app/PATH -`, refusing
        anything else the stream holds first (bounded memory: chunks of the member)."""
        from . import engine

        volume.check_length(parts)
        shown = "/app/" + "/".join(parts)
        with self._container() as ref:
            argv = engine.current().cp_out_argv(ref, shown)
            proc = docker.popen_docker(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            assert proc.stdout is not None and proc.stderr is not None
            err = _collect(proc.stderr)
            try:
                written = _one_file(proc.stdout, parts[-1], shown, out_fd, max_size)
            finally:
                proc.stdout.close()
                if proc.poll() is None:
                    proc.kill()  # we took what we wanted (or refused it): stop the stream
                proc.wait()
            if written < 0:
                raise _cp_failure(argv, proc.returncode or 1, err(), shown)
            return written


    @contextmanager
    def tree(self, budget: int, limit_hint: str = "") -> Iterator[TarTree]:
        """/app as a tree.Source: the one tar stream of `cp REF:/app/. -` (the engine reads
        the volume, nothing runs in the image), of at most BUDGET bytes of file data, read
        once as the caller walks it. A stream cut short or refused is the cp's error."""
        import tarfile

        from . import engine
        from .tree import TarTree

        with self._container() as ref:
            argv = engine.current().cp_out_argv(ref, docker.WORKDIR + "/.")
            proc = docker.popen_docker(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            assert proc.stdout is not None and proc.stderr is not None
            stdout = proc.stdout
            err = _collect(proc.stderr)
            ended = [False]

            def finish(broken: bool = False) -> None:
                """End the cp: read to its end and wait for it (BROKEN: kill it); its
                failure raised. TarTree calls it at the archive's end, before it fetches a
                hard link's second name: Docker holds the container's lock until a cp's
                stream is read to its end, so a second cp started before would wait forever."""
                if ended[0]:
                    return
                ended[0] = True
                if not broken:
                    _drain(stdout)
                stdout.close()
                code = _stop(proc) if broken else docker.wait_docker(proc, argv, DEADLINE_COPY)
                if broken or code != 0:
                    raise _cp_failure(argv, code or 1, err(), docker.WORKDIR)

            fetch = _fetcher(ref) if engine.current().cp_keeps_owners else None
            try:
                yield TarTree(stdout, budget, limit_hint, fetch, finish)
            except tarfile.TarError:
                if ended[0]:  # the main stream was whole: a second name's own cp broke
                    raise UnsafePath("/app: a hard-linked file changed while it was copied; "
                                     "what was done so far is complete") from None
                finish(broken=True)
            except BaseException:
                _stop(proc)
                raise
            else:
                finish()


def _fetcher(ref: str) -> Fetch:
    """tree.Fetch for the container REF: the one regular file at a path, streamed from its
    own `cp REF:/app/PATH -` (a hard link's second name: the big stream holds no bytes for
    it), taken only if it is still the file the link's header describes (owner, group, mode,
    mtime): `cp` follows links in the path's folders inside the container, so a folder the
    container swapped for a link to /etc would otherwise hand over a file its user cannot
    read. Anything else there, or a member named otherwise (Podman follows a final link), is
    None. Each fetch has the copy deadline."""
    import tarfile
    import threading

    from . import engine
    from .tree import Opened

    def fetch(parts: tuple[str, ...], want: tuple[int, int, int, int]
              ) -> tuple[Opened, Callable[[], None]] | None:
        argv = engine.current().cp_out_argv(ref, docker.WORKDIR + "/" + "/".join(parts))
        proc = docker.popen_docker(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        out = proc.stdout
        deadline = threading.Timer(DEADLINE_COPY, proc.kill)
        deadline.daemon = True
        deadline.start()

        def close() -> None:
            deadline.cancel()
            out.close()
            _stop(proc)

        try:
            tar = tarfile.open(fileobj=out, mode="r|", bufsize=_CHUNK)  # noqa: SIM115 (close)
            member = tar.next()
            if (member is None or not member.isreg() or member.issparse()
                    or member.name.removeprefix("./").rstrip("/") != parts[-1]
                    or (member.uid, member.gid, stat.S_IMODE(member.mode)) != want[:3]
                    or abs(int(member.mtime) - want[3]) > 1):
                close()
                return None
            handle = tar.extractfile(member)
        except tarfile.TarError:
            close()
            return None
        except BaseException:
            close()
            raise
        if handle is None:
            close()
            return None
        return Opened(member.size, stat.S_IFREG | stat.S_IMODE(member.mode), stream=handle), close

    return fetch


class _Tapped:
    """A source file as tarfile reads it into a copy-to stream, its bytes shown to a
    manifest Tap on the way (none without a RECORDER); done() notes the file."""

    def __init__(self, handle: BinaryIO, recorder: Recorder | None, parts: tuple[str, ...],
                 mode: int) -> None:
        from .manifest import Tap

        self.handle, self.recorder, self.parts, self.mode = handle, recorder, parts, mode
        self.tap = Tap() if recorder is not None else None

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        if self.tap is not None:
            self.tap(chunk)
        return chunk

    def done(self) -> None:
        if self.recorder is not None and self.tap is not None:
            self.recorder.add(self.parts, self.tap, None, self.mode)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """Kill a `cp` client we no longer read (we took what we wanted, or refused it)."""
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def _drain(stream: IO[bytes], limit: int = 1 << 20) -> None:
    """Read what follows a tar's end (its record's padding) so the client ends cleanly."""
    left = limit
    while left > 0:
        chunk = stream.read(min(left, 1 << 16))
        if not chunk:
            return
        left -= len(chunk)


class _TarOut:
    """A tar stream (PAX headers, as tarfile writes them) onto the pipe FD, without
    tarfile's per-member copies: headers, small files and padding are gathered into one
    buffer of up to _CHUNK, a large regular file goes from its descriptor to the pipe by
    sendfile(2). A source that ends before its size raises OSError, as tarfile does."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    # tarfile (about 14 ms to import) is imported in these methods, not at the top of the
    # module: they run once the docker client is spawned, so the import overlaps its start-up,
    # and the bind-mode commands never load it.

    def add(self, info: tarfile.TarInfo, data: IO[bytes] | None = None,
            regular: bool = False) -> None:
        """Append INFO's header and, for a file, INFO.size bytes of DATA (REGULAR: DATA is
        a regular file at its offset, which sendfile may read)."""
        import tarfile

        self.buf += info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        if data is None or info.size == 0:
            return
        if regular and info.size > _SMALL_FILE:
            self._flush()
            self._sendfile(data, info.size)
        else:
            self._copy(data, info.size)
        self.buf += bytes(-info.size % tarfile.BLOCKSIZE)
        if len(self.buf) >= _CHUNK:
            self._flush()

    def _copy(self, data: IO[bytes], size: int) -> None:
        left = size
        while left > 0:
            chunk = data.read(min(_CHUNK, left))
            if not chunk:
                raise OSError("unexpected end of data")  # the file shrank while copied
            self.buf += chunk
            left -= len(chunk)
            if len(self.buf) >= _CHUNK:
                self._flush()

    def _sendfile(self, data: IO[bytes], size: int) -> None:
        src, offset = data.fileno(), data.tell()
        end = offset + size
        while offset < end:
            sent = os.sendfile(self.fd, src, offset, min(_CHUNK * 8, end - offset))
            if sent == 0:
                raise OSError("unexpected end of data")  # the file shrank while copied
            offset += sent

    def _flush(self) -> None:
        view = memoryview(self.buf)
        while view:
            view = view[os.write(self.fd, view):]
        view.release()
        self.buf.clear()

    def close(self) -> None:
        """The end-of-archive marker (two zero blocks), and everything still held."""
        import tarfile

        self.buf += bytes(2 * tarfile.BLOCKSIZE)
        self._flush()


def _one_file(stream: IO[bytes], name: str, shown: str, out_fd: int, max_size: int) -> int:
    """Copy the first member of the tar STREAM to OUT_FD when it is a regular file named
    NAME of at most MAX_SIZE bytes; -1 when the stream holds no member or breaks off (cp
    failed: its stderr says why).

    tarfile reads only the headers, through _Exact (512-byte blocks, never beyond them), so
    the member's bytes start at the pipe's read position and go through the kernel
    (splice(2)) rather than through tarfile's 10 KB buffer and Python's copies."""
    import tarfile  # here: after the docker client is spawned (see _TarOut)

    exact = _Exact(stream.fileno())
    try:
        with tarfile.open(fileobj=cast("IO[bytes]", exact), mode="r|",
                          bufsize=tarfile.BLOCKSIZE) as tar:
            member = tar.next()
            if member is None:
                return -1
            if member.name.removeprefix("./").rstrip("/") != name:
                # Podman's cp follows a final link and names the member after its target.
                raise UnsafePath(f"{shown}: is a symbolic link; refusing to follow it")
            if not member.isreg():
                raise UnsafePath(f"{shown}: refusing to read {_member_kind(member)}")
            if member.size > max_size:
                raise UnsafePath(f"{shown}: {member.size} bytes, over the read limit of "
                                 f"{volume.bytes_text(max_size)} (raise it with --max-size)")
            if exact.taken != member.offset_data:  # tarfile read past the header
                return -1
            done = _pass_on(exact.fd, out_fd, member.size)
    except tarfile.TarError:
        return -1
    # the stream ended inside the file: the client failed or was cut off
    return done if done == member.size else -1


class _Exact:
    """A pipe as the file object tarfile reads headers from: each read returns exactly the
    bytes asked for (or fewer at the end), so nothing past the headers is consumed."""

    def __init__(self, fd: int) -> None:
        self.fd, self.taken = fd, 0

    def read(self, size: int) -> bytes:
        parts: list[bytes] = []
        left = size
        while left > 0:
            chunk = os.read(self.fd, left)
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        data = b"".join(parts)
        self.taken += len(data)
        return data


def _pass_on(source: int, target: int, count: int) -> int:
    """Move COUNT bytes from the pipe SOURCE to TARGET: splice(2) where TARGET takes it,
    else read and write in bounded chunks. Returns the bytes moved (fewer at an early end);
    a reader that has gone raises BrokenPipeError, as a write would."""
    done = 0
    splice = getattr(os, "splice", None)
    while splice is not None and done < count:
        try:
            moved = splice(source, target, min(_CHUNK, count - done))
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EAGAIN):
                break  # TARGET is not spliceable (a terminal) or non-blocking: copy below
            raise
        if moved == 0:
            return done
        done += moved
    while done < count:
        chunk = os.read(source, min(_CHUNK, count - done))
        if not chunk:
            return done
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view):]
        done += len(chunk)
    return done


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return "a symbolic link" if member.issym() else "a hard link"
    if member.isfifo():
        return "a FIFO"
    if member.isdev():
        return "a device"
    if member.isdir():
        return "a directory"
    return "not a regular file"


def _sized(source: BinaryIO | bytes) -> tuple[BinaryIO, int, bool]:
    """SOURCE as a readable file of known size (a tar header comes before the data), and
    whether it is a regular file (sendfile may read it): bytes as they are, a regular file
    by its size, a pipe spooled (memory up to _SPOOL_MAX, then a temporary file)."""
    import io

    if isinstance(source, bytes):
        return io.BytesIO(source), len(source), False
    try:
        info = os.fstat(source.fileno())
        if stat.S_ISREG(info.st_mode):
            handle = os.fdopen(os.dup(source.fileno()), "rb")
            return handle, info.st_size - handle.tell(), True
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
    import tempfile

    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX)  # noqa: SIM115 (closed by caller)
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        spool.write(chunk)
    size = spool.tell()
    spool.seek(0)
    return spool, size, False  # type: ignore[return-value]


def _collect(stream: IO[bytes]) -> Callable[[], str]:
    """Read STREAM (a client's stderr) in a thread, bounded; returns what it said."""
    kept = bytearray()

    def drain() -> None:
        for chunk in iter(lambda: stream.read(1 << 16), b""):
            if len(kept) < 1 << 16:
                kept.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def text() -> str:
        reader.join(timeout=5)
        return kept.decode(errors="replace")

    return text


def _cp_failure(argv: Sequence[str], code: int, text: str, shown: str) -> SandboxError:
    """The error for a failed `cp` about SHOWN: a missing file or folder, or something the
    engine refused, is a file refusal (exit 4); a missing container or engine is not."""
    from . import engine

    low = text.lower()
    failure = docker.classify_failure(argv, code, text)
    if "could not find the file" in low or "could not be found on container" in low:
        return UnsafePath(f"{shown}: no such file")
    if type(failure) is DockerError:
        line = engine.error_line(text).removeprefix("Error response from daemon: ")
        return UnsafePath(f"{shown}: {line.removeprefix('Error: ') or f'exit code {code}'}")
    return failure


def root_tar(uid: int) -> bytes:
    """A tar of the one entry `.`: a folder owned by UID (Podman's `cp --archive=false` so
    hands an engine volume's root to the sandbox user)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(".")
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, uid
        info.mtime = int(time.time())
        tar.addfile(info)
    return out.getvalue()


def feed(argv: Sequence[str], data: bytes) -> None:
    """Run a docker call with DATA (a small tar) on its stdin, within its deadline."""
    proc = docker.popen_docker(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(data, timeout=docker.DEADLINE_CHANGE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise docker.timed_out(argv, docker.DEADLINE_CHANGE) from None
    if proc.returncode != 0:
        raise docker.classify_failure(argv, proc.returncode, err.decode(errors="replace"))
