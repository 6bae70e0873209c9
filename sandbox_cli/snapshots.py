"""Snapshots: a sandbox's container and its /app as an image, and sandboxes started from one.

`docker commit` captures the container's own file system, but not /app (a bind mount of the
host folder). So a snapshot is built in two steps: commit the container (image I1), then
`docker build` FROM I1 with one `ADD app.tar /`, where app.tar is the workspace, written by us
from the host folder (ADD unpacks a local tar keeping each entry's owner and mode). The build
also undoes what the sandbox container put into the committed config: the `-e` values (they
may be secrets) go back to the base image's value or to empty, and the entrypoint, command,
user, working directory and our container labels to the base image's; labels then mark the
image as this home's snapshot.

The workspace is hostile: it is walked from directory descriptors, never through a link;
only folders and regular files go in (links, FIFOs, sockets and devices are skipped and
counted); a file is read once, up to its size when opened; set-id bits are dropped; the walk
is bounded in entries and depth; the tar is written to an unlinked file in the home (memory
stays bounded), then streamed to the daemon.

Starting from a snapshot (an image labelled LABEL_SNAPSHOT) seeds the new folder from the
image's /app: `docker cp` out of a created (never started) container, unpacked under the same
rules (folders and regular files only, names checked one component at a time, written from
directory descriptors by rename, owned by the new sandbox's user).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from . import docker, validate, volume
from .errors import DockerError, ImageError, InvalidInput, SandboxError, UnsafePath
from .state import StateStore, now_iso

if TYPE_CHECKING:
    from .tree import TarTree

LABEL_SNAPSHOT = f"{docker.LABEL_PREFIX}.snapshot"
LABEL_SNAPSHOT_OF = f"{docker.LABEL_PREFIX}.snapshot-of"  # the sandbox it was taken of
LABEL_SNAPSHOT_AT = f"{docker.LABEL_PREFIX}.snapshot-at"
MAX_ENTRIES = 1_000_000  # folders and files in one snapshot (a 1 GiB /app holds 65,536)
MAX_DEPTH = 256  # folders deeper than this are skipped (each level holds a descriptor)
# Bytes of file data one snapshot takes, by default: the build context is a file in the home
# (not sparse), so a sparse terabyte in /app must not become a terabyte on the host's disk.
TOTAL_MAX_DEFAULT = 4 << 30
# The labels a sandbox container carries that must not mark the image (a container run from
# it with docker would otherwise pass for one of ours).
_CONTAINER_LABELS = (docker.LABEL_MANAGED, docker.LABEL_NAME, docker.LABEL_KEEP,
                     docker.LABEL_EXPIRES, docker.LABEL_ATTEMPT)


class Walked:
    """What went into (or came out of) a workspace tar. (Plain classes here, not dataclasses:
    every start loads this module for its snapshot check; see state.SandboxRecord.)"""

    __slots__ = ("bytes", "dirs", "files", "max_bytes", "skipped")

    def __init__(self, max_bytes: int | None = None) -> None:
        self.files = self.dirs = self.bytes = 0
        self.skipped: dict[str, int] = {}
        self.max_bytes = max_bytes  # refuse (UnsafePath) past this much file data

    def take(self, path: str, size: int) -> None:
        """Count SIZE more bytes of file data, or refuse the snapshot past max_bytes."""
        if self.max_bytes is not None and size > self.max_bytes - self.bytes:
            raise UnsafePath(f"{path}: not snapshot, /app holds more than "
                             f"{volume.bytes_text(self.max_bytes)} of file data "
                             "(raise it with --max-total)")
        self.bytes += size

    def skip(self, kind: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1


# --- the workspace as a tar ----------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "link"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"),
                       (stat.S_ISBLK, "device")):
        if test(mode):
            return kind
    return "other"


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    return _member(name, st.st_uid, st.st_gid, st.st_mtime, st.st_mode, kind)


def _member(name: str, uid: int, gid: int, mtime: float, mode: int,
            kind: bytes) -> tarfile.TarInfo:
    """A member of the snapshot's app.tar: owner and mode kept, set-id bits dropped (the one
    place both workspace kinds make their members)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.uid, info.gid = uid, gid
    info.mtime = int(mtime)
    info.mode = stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID)
    return info


def _copy_exact(read: Callable[[int], bytes], out: Any, size: int) -> None:
    """SIZE bytes of READ to OUT: a file that shrank meanwhile is padded with zeros, one that
    grew is cut at SIZE (the tar header already holds the size)."""
    left = size
    while left:
        chunk = read(min(left, 1 << 20))
        if not chunk:
            out.write(b"\0" * left)
            return
        out.write(chunk)
        left -= len(chunk)


def _put_file(tar: tarfile.TarFile, info: tarfile.TarInfo, size: int,
              read: Callable[[int], bytes], walked: Walked) -> None:
    """Regular file INFO of SIZE bytes (what READ gives, cut or padded to SIZE) into TAR."""
    walked.take(info.name, size)  # before a byte is written
    info.size = size
    tar.addfile(info)
    assert tar.fileobj is not None
    _copy_exact(read, tar.fileobj, size)
    blocks, rest = divmod(size, tarfile.BLOCKSIZE)
    if rest:
        tar.fileobj.write(tarfile.NUL * (tarfile.BLOCKSIZE - rest))
        blocks += 1
    tar.offset += blocks * tarfile.BLOCKSIZE
    walked.files += 1


def write_workspace_tar(root_fd: int, out: IO[bytes], prefix: str = "app",
                        max_bytes: int | None = None) -> Walked:
    """The tree below ROOT_FD as a tar stream on OUT, its entries under PREFIX/, of at most
    MAX_BYTES of file data."""
    walked = Walked(max_bytes=max_bytes)
    stack: list[tuple[str, int, Iterator[str]]] = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        try:
            _walk_into(tar, root_fd, prefix, walked, stack)
        finally:
            for _, dir_fd, _ in stack:
                os.close(dir_fd)
    return walked


def _walk_into(tar: tarfile.TarFile, root_fd: int, prefix: str, walked: Walked,
               stack: list[tuple[str, int, Iterator[str]]]) -> None:
    """Depth first, one descriptor a level (STACK holds them; the caller closes what is
    left), names sorted."""
    tar.addfile(_info(prefix, os.fstat(root_fd), tarfile.DIRTYPE))
    stack.append((prefix, os.dup(root_fd), iter(sorted(os.listdir(root_fd)))))
    while stack:
        path, dir_fd, names = stack[-1]
        name = next(names, None)
        if name is None:
            os.close(dir_fd)
            stack.pop()
            continue
        if walked.files + walked.dirs >= MAX_ENTRIES:
            raise UnsafePath(f"/app holds more than {MAX_ENTRIES:,} entries: not snapshot")
        child = _add_entry(tar, dir_fd, f"{path}/{name}", name, walked, len(stack))
        if child is not None:
            stack.append(child)


def _add_entry(tar: tarfile.TarFile, dir_fd: int, path: str, name: str, walked: Walked,
               depth: int) -> tuple[str, int, Iterator[str]] | None:
    """Add one entry; returns (path, fd, names) for a folder to descend into."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        walked.skip("vanished")
        return None
    if stat.S_ISDIR(st.st_mode):
        if depth >= MAX_DEPTH:
            walked.skip("too deep")
            return None
        try:
            fd = volume.open_dir_at(dir_fd, name, path)
        except (UnsafePath, OSError):
            walked.skip("vanished")
            return None
        try:
            opened = os.fstat(fd)
            tar.addfile(_info(path, opened, tarfile.DIRTYPE))
            names = iter(sorted(os.listdir(fd)))
        except BaseException:
            os.close(fd)
            raise
        walked.dirs += 1
        return path, fd, names
    if not stat.S_ISREG(st.st_mode):
        walked.skip(_kind(st.st_mode))
        return None
    try:
        fd, opened = volume.open_regular_file(dir_fd, name, path)
    except UnsafePath:  # swapped for something else, or leased: not ours to wait for
        walked.skip("changed")
        return None
    try:
        _put_file(tar, _info(path, opened, tarfile.REGTYPE), opened.st_size,
                  lambda n: os.read(fd, n), walked)
    finally:
        os.close(fd)
    return None


def write_stream_tar(source: TarTree, out: IO[bytes], prefix: str = "app",
                     max_bytes: int | None = None) -> Walked:
    """An engine volume's /app (SOURCE, the tar stream of `cp`) as the snapshot's app.tar on
    OUT, under the rules of write_workspace_tar: folders and regular files only (what else
    the stream holds is skipped and counted), set-id bits dropped, bounded in entries and
    depth; each file's bytes pass through in chunks."""
    from .tree import Skipped

    walked = Walked(max_bytes=max_bytes)
    skipped = Skipped()

    def everything(rel: tuple[str, ...], is_dir: bool, inherited: bool) -> tuple[bool, bool]:
        return True, True

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for rel, entry, _ in source.items(everything, skipped, dirs=True):
            if walked.files + walked.dirs >= MAX_ENTRIES:
                raise UnsafePath(f"/app holds more than {MAX_ENTRIES:,} entries: not snapshot")
            path = "/".join((prefix, *rel))
            if len(rel) > MAX_DEPTH:
                if len(rel) == MAX_DEPTH + 1:  # once, as the host walk counts it
                    walked.skip("too deep")
            elif not rel or entry.is_dir:
                tar.addfile(_member(path, entry.uid, entry.gid, entry.mtime_ns / 1e9,
                                    entry.mode, tarfile.DIRTYPE))
                walked.dirs += 1 if rel else 0
            elif entry.is_file:
                try:
                    data = source.open(rel)
                except UnsafePath:
                    walked.skip("changed")
                    continue
                _put_file(tar, _member(path, entry.uid, entry.gid, entry.mtime_ns / 1e9,
                                       entry.mode, tarfile.REGTYPE), data.size, data.read,
                          walked)
            else:
                walked.skip(entry.kind)
    for kind, count in skipped.counts.items():
        walked.skipped[kind] = walked.skipped.get(kind, 0) + count
    return walked


# --- snapshot ------------------------------------------------------------------------------

def _image_config(ref: str) -> dict[str, Any]:
    """An image's Config (labels, env, entrypoint, ...), {} when it has none."""
    argv = [docker.docker_binary(), "image", "inspect", "--format", "{{json .Config}}", ref]
    proc = docker.run_docker(argv, check=False)
    if proc.returncode != 0:
        return {}
    try:
        value = json.loads(proc.stdout or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _labels(config: dict[str, Any]) -> dict[str, str]:
    labels = config.get("Labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _quote(value: str) -> str:
    """VALUE as a Dockerfile double-quoted word: no expansion of $, no line breaks."""
    if "\n" in value or "\r" in value:
        raise InvalidInput("a value with a line break cannot go into a snapshot's config")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _base_env(config: dict[str, Any]) -> dict[str, str]:
    env = config.get("Env") if isinstance(config.get("Env"), list) else []
    pairs = (str(item).partition("=") for item in env or [])
    return {key: value for key, _, value in pairs}


def _env_lines(base: dict[str, Any], env_keys: list[str]) -> list[str]:
    """ENV lines putting each -e key (its value may be a secret) back to the base image's
    value, or to empty when the base has none (a Dockerfile cannot unset a variable)."""
    base_env = _base_env(base)
    return [f"ENV {key}={_quote(base_env.get(key, ''))}" for key in sorted(set(env_keys))
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)]


def dockerfile(base_image_id: str, base: dict[str, Any], env_keys: list[str],
               labels: dict[str, str]) -> str:
    """The snapshot's Dockerfile: FROM the committed container, /app added, and the config
    the sandbox container imposed put back to the base image's (BASE: its Config)."""
    lines = [f"FROM {base_image_id}", "ADD app.tar /", *_env_lines(base, env_keys)]
    for key in ("Entrypoint", "Cmd"):
        value = base.get(key)
        words = [str(v) for v in value] if isinstance(value, list) else []
        lines.append(f"{key.upper()} {json.dumps(words)}")
    user = str(base.get("User") or "0")
    workdir = str(base.get("WorkingDir") or "/")
    lines += [f"USER {_quote(user)}", f"WORKDIR {_quote(workdir)}"]
    marks = {key: "" for key in _CONTAINER_LABELS} | labels
    lines.append("LABEL " + " ".join(f"{_quote(k)}={_quote(v)}" for k, v in marks.items()))
    return "\n".join(lines) + "\n"


def default_tag(name: str) -> str:
    """sandbox-snapshot/NAME:YYYYMMDD-HHMMSS (NAME made a valid repository component)."""
    repo = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "box"
    return f"sandbox-snapshot/{repo}:{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _check_tag(store: StateStore, tag: str) -> None:
    """Refuse a tag that names an image other than one of this home's snapshots: the build
    would take the tag away from it."""
    validate.image(tag)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*", tag) or tag.endswith(":"):
        raise InvalidInput(f"invalid tag {tag!r}: lower-case letters, digits, '.', '_', '-', "
                           "'/' and one ':' before the tag")
    labels = _labels(_image_config(tag))
    if not labels and not _image_config(tag):
        return
    if labels.get(LABEL_SNAPSHOT) != "1" or labels.get(docker.LABEL_HOME) != store.label:
        raise InvalidInput(f"the tag {tag!r} names an image that is not a snapshot of this "
                           "SANDBOX_HOME: choose another --tag")


class Snapshot(NamedTuple):
    """What `sandbox snapshot` made."""

    tag: str
    image_id: str
    source: str
    walked: Walked

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "id": self.image_id, "source": self.source,
                "files": self.walked.files, "dirs": self.walked.dirs,
                "bytes": self.walked.bytes, "skipped": dict(self.walked.skipped)}


def snapshot(store: StateStore, name: str, tag: str | None = None,
             max_total: int = TOTAL_MAX_DEFAULT) -> Snapshot:
    """Commit NAME's container and add its /app (at most MAX_TOTAL bytes of file data): a new
    image tagged TAG."""
    from .sandbox import container_ref, require

    record = require(store, name)
    chosen = tag or default_tag(name)
    _check_tag(store, chosen)
    base = _image_config(record.image)
    # The -e values are reset in the commit itself too: not even the intermediate image
    # (the parent of the snapshot, kept by the engine) holds them.
    # So are the egress proxy's variables: the snapshot's sandboxes have a proxy of their own
    # or none (a stale HTTP_PROXY would send every request to a closed port).
    reset_keys = list(record.env_keys)
    from . import egress

    if egress.uses_egress(record):
        reset_keys += egress.sandbox_env()
    resets = [arg for line in _env_lines(base, reset_keys) for arg in ("--change", line)]
    argv = [docker.docker_binary(), "commit", *resets, container_ref(record)]
    committed = docker.run_docker(argv, timeout=docker.DEADLINE_CREATE).stdout.strip()
    if not re.fullmatch(r"(sha256:)?[0-9a-f]{64}", committed):
        raise DockerError(f"docker commit gave no image id: {committed[:80]!r}", argv)
    try:
        labels = {LABEL_SNAPSHOT: "1", docker.LABEL_HOME: store.label,
                  docker.LABEL_HOME_DIR: os.path.realpath(store.home),
                  LABEL_SNAPSHOT_OF: name, LABEL_SNAPSHOT_AT: now_iso()}
        text = dockerfile(committed, base, reset_keys, labels)
        import tempfile  # here: ~20 ms to import, and every start loads this module

        with tempfile.TemporaryFile(dir=store.home) as context:
            walked = _app_into(store, record, context, text, max_total)
            image_id = _build(context, chosen)
    except BaseException:
        _remove_image_quietly(committed)  # only the intermediate; the build made nothing
        raise
    return Snapshot(chosen, image_id, name, walked)


def _app_into(store: StateStore, record: Any, context: IO[bytes], text: str,
              max_total: int) -> Walked:
    """The build context with RECORD's /app: from its host folder (a walk from descriptors)
    or, for an engine volume (which `docker commit` leaves out), from its `cp` tar stream."""
    from .sandbox import workspace_of
    from .workspace import EngineVolume

    place = workspace_of(store, record)
    if isinstance(place, EngineVolume):
        # Every byte of the stream is taken: the stream's budget is the snapshot's.
        with place.tree(max_total, " (raise it with --max-total)") as source:
            return _write_context(
                context, lambda out: write_stream_tar(source, out, max_bytes=max_total), text)
    with volume.opened_root(store.volumes_dir, record.name) as root:
        return _write_context(
            context, lambda out: write_workspace_tar(root, out, max_bytes=max_total), text)


def _write_context(out: IO[bytes], write_app: Callable[[IO[bytes]], Walked],
                   text: str) -> Walked:
    """The build context, a tar of Dockerfile and app.tar, written to OUT (a seekable
    file): app.tar's header is written last, once its size is known."""
    data = text.encode()
    info = tarfile.TarInfo("Dockerfile")
    info.size, info.mode = len(data), 0o644
    out.write(info.tobuf(tarfile.USTAR_FORMAT))
    out.write(data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
    header_at = out.tell()
    out.write(b"\0" * tarfile.BLOCKSIZE)  # app.tar's header, filled in below
    walked = write_app(out)
    size = out.tell() - header_at - tarfile.BLOCKSIZE
    rest = size % tarfile.BLOCKSIZE
    if rest:
        out.write(b"\0" * (tarfile.BLOCKSIZE - rest))
    out.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # the end of the outer archive
    inner = tarfile.TarInfo("app.tar")
    inner.size, inner.mode = size, 0o600
    out.seek(header_at)
    out.write(inner.tobuf(tarfile.GNU_FORMAT))  # GNU: sizes over 8 GiB too, one block
    out.seek(0)
    return walked


def _build(context: IO[bytes], tag: str) -> str:
    """`docker build -q -t TAG -` of CONTEXT (a tar on stdin); returns the image id."""
    argv = [docker.docker_binary(), "build", "--quiet", "--network", "none", "--tag", tag, "-"]
    proc = docker.popen_docker(argv, stdin=context, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=docker.DEADLINE_BUILD)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise docker.timed_out(argv, docker.DEADLINE_BUILD, tag) from None
    if proc.returncode != 0:
        failure = docker.classify_failure(argv, proc.returncode, err.decode(errors="replace"))
        raise ImageError(f"snapshot build failed: {failure.message}")
    return out.decode(errors="replace").strip().splitlines()[-1] if out.strip() else ""


def _remove_image_quietly(ref: str) -> None:
    with contextlib.suppress(SandboxError):
        docker.run_docker([docker.docker_binary(), "rmi", ref], check=False)


# --- listing and removal -------------------------------------------------------------------

def list_snapshots(store: StateStore) -> list[dict[str, Any]]:
    """This home's snapshot images: the daemon filters by label (exact values), and the
    labels are checked again as a map from `docker image inspect`."""
    argv = [docker.docker_binary(), "images", "-q", "--no-trunc",
            "--filter", f"label={LABEL_SNAPSHOT}=1",
            "--filter", f"label={docker.LABEL_HOME}={store.label}"]
    ids = list(dict.fromkeys(line.strip() for line in docker.run_docker(argv).stdout.split()
                             if re.fullmatch(r"sha256:[0-9a-f]{64}", line.strip())))
    if not ids:
        return []
    proc = docker.run_docker([docker.docker_binary(), "image", "inspect", *ids], check=False)
    try:
        items = json.loads(proc.stdout or "[]")
    except ValueError:
        items = []
    rows = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        config = item.get("Config") if isinstance(item.get("Config"), dict) else {}
        labels = _labels(config or {})
        if labels.get(LABEL_SNAPSHOT) != "1" or labels.get(docker.LABEL_HOME) != store.label:
            continue
        tags = item.get("RepoTags") if isinstance(item.get("RepoTags"), list) else []
        rows.append({"id": str(item.get("Id", "")), "tags": [str(t) for t in tags or []],
                     "source": labels.get(LABEL_SNAPSHOT_OF, ""),
                     "created_at": labels.get(LABEL_SNAPSHOT_AT, ""),
                     "size": item.get("Size") if isinstance(item.get("Size"), int) else 0})
    return sorted(rows, key=lambda row: (row["created_at"], row["id"]))


def purge_snapshots(store: StateStore, report: Any = None) -> list[str]:
    """Remove this home's snapshot images (never another image): each tag, then the image.
    One still used by a container is kept, with a warning. Returns what was removed."""
    removed = []
    for row in list_snapshots(store):
        for ref in row["tags"] or [row["id"]]:
            argv = [docker.docker_binary(), "rmi", ref]
            proc = docker.run_docker(argv, check=False)
            if proc.returncode == 0:
                removed.append(ref)
            elif report is not None:
                first = next((ln for ln in proc.stderr.splitlines() if ln.strip()), "")
                report(f"warning: kept snapshot {ref}: "
                       f"{first.removeprefix('Error response from daemon: ')}")
    return removed


# --- starting from a snapshot --------------------------------------------------------------

def is_snapshot(image: str) -> bool:
    """True when IMAGE (present locally) is labelled as a snapshot."""
    return _labels(_image_config(image)).get(LABEL_SNAPSHOT) == "1"


class SnapshotCheck:
    """is_snapshot(IMAGE) begun in the background, so that its docker call (15 ms on a quiet
    machine, 45 ms under load) overlaps the rest of a start (folder, container) instead of
    adding to it. `answer()` waits for it within the query deadline; `cancel()` ends it when
    the start fails first. A failed inspect (a missing image: pulled later, never seeded, as
    before) answers False, as is_snapshot does."""

    def __init__(self, image: str) -> None:
        self._argv = [docker.docker_binary(), "image", "inspect", "--format",
                      "{{json .Config}}", image]
        self._proc: subprocess.Popen[bytes] | None = docker.popen_docker(
            self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)

    def answer(self) -> bool:
        """True when the image is labelled as a snapshot."""
        proc, self._proc = self._proc, None
        if proc is None:
            return False
        try:
            out, _ = proc.communicate(timeout=docker.deadline_for(self._argv))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise docker.timed_out(self._argv, docker.deadline_for(self._argv)) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            return False
        try:
            config = json.loads(out or b"{}")
        except ValueError:
            return False
        return isinstance(config, dict) and _labels(config).get(LABEL_SNAPSHOT) == "1"

    def cancel(self) -> None:
        """End the check unanswered (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.communicate()


def seed(store: StateStore, image: str, name: str, owner: tuple[int, int] | None) -> Walked:
    """Fill NAME's new folder with IMAGE's /app: `docker cp` out of a created container of
    IMAGE (never started), unpacked as hostile input."""
    helper = f"{name}-seed-{os.urandom(3).hex()}"
    # Labelled as this home's, so that a seed killed midway leaves nothing purge misses.
    create = [docker.docker_binary(), "create", "--pull", "never", "--name", helper,
              "--label", f"{docker.LABEL_MANAGED}=1",
              "--label", f"{docker.LABEL_HOME}={store.label}",
              "--label", f"{docker.LABEL_NAME}={helper}",
              "--network", "none", "--entrypoint", "true", image]
    cid = docker.run_docker(create).stdout.strip()
    try:
        argv = [docker.docker_binary(), "cp", f"{cid}:{docker.WORKDIR}", "-"]
        proc = docker.popen_docker(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            with volume.opened_root(store.volumes_dir, name) as root, \
                    volume.DirWalker(root, owner) as walker:
                walked = _unpack(proc.stdout, walker)
            proc.stdout.close()
            err = proc.stderr.read() if proc.stderr else b""
            code = docker.wait_docker(proc, argv, timeout=docker.DEADLINE_CREATE)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            raise docker.classify_failure(argv, code, err.decode(errors="replace"))
    finally:
        docker.run_docker(docker.remove_argv([cid]), check=False)
    return walked


def _member_parts(name: str) -> tuple[str, ...] | None:
    """The path below /app of a tar member named app/..., or None when it is not one."""
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts or parts[0] != "app" or any(p == ".." or "\0" in p for p in parts):
        return None
    return parts[1:]


def _unpack(stream: IO[bytes], walker: volume.DirWalker) -> Walked:
    """Folders and regular files of the tar STREAM into WALKER's tree; the rest skipped."""
    walked = Walked()
    with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8",
                      errors="surrogateescape") as tar:
        for member in tar:
            if walked.files + walked.dirs >= MAX_ENTRIES:
                raise UnsafePath(f"the snapshot's /app holds more than {MAX_ENTRIES:,} entries")
            parts = _member_parts(member.name)
            if parts is None:
                walked.skip("outside /app")
                continue
            if member.isdir():
                if parts:
                    fd = walker.dir_fd(parts, create=True)
                    if walker.owner is not None:  # its owner is the sandbox user: exact mode
                        os.fchmod(fd, stat.S_IMODE(member.mode) & 0o777 | 0o700)
                    walked.dirs += 1
                continue
            if not member.isreg() or not parts:
                walked.skip("link" if member.issym() or member.islnk() else "other")
                continue
            source = tar.extractfile(member)
            assert source is not None
            _write_member(walker, parts, source, member.size, member.mode)
            walked.files += 1
            walked.bytes += member.size
    return walked


def _write_member(walker: volume.DirWalker, parts: tuple[str, ...], source: IO[bytes],
                  size: int, mode: int) -> None:
    """One file into the tree: a new temporary file, renamed into place."""
    shown = "/".join(parts)
    parent = walker.dir_fd(parts[:-1], create=True)
    fd, tmp = volume._new_temp(parent, walker.owner)
    try:
        volume.copy_stream(source.read, fd, size)
        # As root the file is the sandbox user's own: its mode as it was (no set-id bits);
        # otherwise the shared mode of copy-to (the sandbox user reaches it through the group).
        os.fchmod(fd, stat.S_IMODE(mode) & 0o777 if walker.owner is not None
                  else volume.shared_mode(mode))
    except BaseException:
        os.close(fd)
        volume._unlink_quietly(parent, tmp)
        raise
    os.close(fd)
    volume._commit(parent, tmp, parts[-1], shown)
