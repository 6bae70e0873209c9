"""The operations behind each command: start, read, write, copy-to, disconnect, purge, ls,
build-repo. No printing and no typer here: results are returned, failures raised.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from . import docker, validate, volume
from .errors import DockerError, ImageError, InvalidInput, NameInUse, SandboxNotFound
from .state import SandboxRecord, StateStore, iso_after, now_iso

if TYPE_CHECKING:  # an annotation only: exec, read and write need not import config
    from .config import StartOptions

NOBODY = (65534, 65534)
ORPHAN_MIN_AGE_SECONDS = 60  # a folder this young may belong to a start still in progress

Progress = Callable[[str], None]


def container_user() -> tuple[int, int]:
    """The uid:gid the container runs as: the host user's, or nobody when the host user is root.

    Either way the host user can read and delete everything the container leaves behind.
    """
    uid, gid = os.getuid(), os.getgid()
    return NOBODY if uid == 0 else (uid, gid)


def file_owner(record: SandboxRecord) -> tuple[int, int] | None:
    """Who should own files we put in RECORD's folder: None means 'us' (the same user)."""
    return file_owner_of(record.user)


def file_owner_of(user: str) -> tuple[int, int] | None:
    """file_owner for a container user UID:GID."""
    if os.getuid() != 0:
        return None
    uid, _, gid = user.partition(":")
    if uid.isdigit() and gid.isdigit() and (int(uid), int(gid)) != (0, 0):
        return int(uid), int(gid)
    return None


def generate_name() -> str:
    """A fresh sandbox name such as box-3f9a2c1d."""
    return f"box-{os.urandom(4).hex()}"  # as secrets.token_hex, without its ~4 ms import


def forget_expired(store: StateStore) -> list[str]:
    """Drop state entries whose TTL has passed, and their containers and folders. Docker has
    normally removed the container already; one that stopped its own sleep has not, so it is
    removed here, before its folder (nothing may write while we delete). Returns the names."""
    if not any(rec.expired() for rec in store.load().values()):
        return []
    with store.transaction() as records:
        gone = {name: rec for name, rec in records.items() if rec.expired()}
        for name in gone:
            del records[name]
    _remove_containers([container_ref(rec) for rec in gone.values()])
    _end_egress(store, gone)
    _remove_folders(store, gone)
    return list(gone)


def _end_egress(store: StateStore, records: Mapping[str, SandboxRecord | None]) -> None:
    """Remove the egress proxy, network and log of those of RECORDS that have (or, unknown,
    may have) one; their containers are gone already."""
    names = [name for name, rec in records.items()
             if rec is None or "egress_network" in rec.options]  # as egress.uses_egress
    if names:
        from . import egress  # only then: run's cleanup should not pay for its import

        egress.remove(store, names)


def container_ref(record: SandboxRecord) -> str:
    """The record's container id when it looks like one (the file is untrusted), else its
    name: the id cannot point at a newer container that reused the name."""
    cid = record.container_id
    return cid if re.fullmatch(r"[0-9a-f]{12,64}", cid) else record.name


def _remove_folders(store: StateStore, names: Iterable[str]) -> None:
    names = list(names)
    if not names or not os.path.isdir(store.volumes_dir):
        return
    parent = os.open(store.volumes_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            volume.remove_tree(parent, validate.name(name))
    finally:
        os.close(parent)


def require(store: StateStore, name: str) -> SandboxRecord:
    """The live record of NAME, or SandboxNotFound."""
    validate.name(name)
    forget_expired(store)
    record = store.get(name)
    if record is None:
        raise SandboxNotFound(f"no sandbox named {name!r} (see `sandbox ls`)")
    return record


# --- start ---------------------------------------------------------------------------------

@dataclass
class _Prepared:
    """A sandbox about to be created: its folder exists, its container not yet."""

    name: str
    spec: docker.RunSpec
    env: dict[str, str]  # -e values: they reach docker through a private env file
    egress: Any = None  # an egress.Plan with --allow-host


def _prepare(store: StateStore, options: StartOptions, name: str | None,
             ttl_seconds: int | None) -> _Prepared:
    """Validate, claim the name and make the folder (owned by the container's user)."""
    if name is not None:
        validate.name(name)
    name = name or generate_name()
    if options.ports and not options.network:
        raise InvalidInput("publishing ports needs --network (the network is off by default)")
    plan = _egress_plan(store, name, options, ttl_seconds)
    forget_expired(store)
    store.ensure_dirs()
    if store.get(name) is not None:
        raise NameInUse(f"a sandbox named {name!r} already exists")
    folder = store.volume_path(name)
    uid, gid = container_user()
    try:
        os.mkdir(folder, 0o755 if os.getuid() == 0 else 0o700)
    except FileExistsError:
        raise NameInUse(
            f"the name {name!r} is taken (a sandbox by that name exists or is starting)"
        ) from None
    if os.getuid() == 0:
        os.chown(folder, uid, gid)
    spec = docker.RunSpec(
        name=name, image=options.image, volume=folder, user=f"{uid}:{gid}",
        home_label=store.label, ttl_seconds=ttl_seconds,
        network=options.network, ports=list(options.ports),
        memory=options.memory, cpus=options.cpus, pids_limit=options.pids,
        read_only=options.read_only, tmpfs_size=options.tmpfs_size, runtime=options.runtime,
        cap_add=list(options.cap_add), keep=ttl_seconds is None and options.keep,
        default_home="HOME" not in options.env,
    )
    if plan is None:
        return _Prepared(name, spec, dict(options.env))
    from . import egress

    spec = replace(spec, network_options=egress.sandbox_network_options(plan))
    return _Prepared(name, spec, {**egress.sandbox_env(), **options.env}, plan)


def _egress_plan(store: StateStore, name: str, options: StartOptions,
                 ttl_seconds: int | None) -> Any:
    """The egress plan of a sandbox started with --allow-host, else None."""
    if not options.allow_hosts:
        return None
    from . import egress

    egress.check_options(options)
    uid, gid = container_user()
    return egress.new_plan(store, name, options, f"{uid}:{gid}", ttl_seconds)


def _create(store: StateStore, options: StartOptions, prepared: _Prepared,
            build: Callable[[docker.RunSpec], list[str]],
            progress: Progress | None) -> SandboxRecord:
    """Run BUILD(spec) (docker run -d / docker create), pulling the image once if it is
    missing, and record the sandbox; on any failure or signal nothing is left behind."""
    name = prepared.name
    try:
        with docker.env_file(prepared.env) as env_path, _egress_started(prepared, progress):
            container_id, spec = _create_container(prepared, env_path, build, progress)
    except BaseException:
        # Killed mid-call, the docker client may still have had its container made.
        docker.run_docker(docker.remove_argv([name]), check=False)
        if prepared.egress is not None:
            _end_egress(store, {name: None})
        _remove_folders(store, [name])
        raise
    record = SandboxRecord(
        name=name, container_id=container_id, image=options.image,
        created_at=now_iso(), expires_at=spec.expires_at or None,
        keep=spec.keep, network=options.network,
        ports=list(options.ports), env_keys=sorted(options.env), user=spec.user,
        options={"memory": options.memory, "cpus": options.cpus, "pids": options.pids,
                 "read_only": options.read_only, "runtime": options.runtime,
                 "cap_add": list(options.cap_add), **_egress_record(prepared)},
    )
    try:
        with store.transaction() as records:
            records[name] = record
    except BaseException:
        docker.run_docker(docker.remove_argv([name]), check=False)
        if prepared.egress is not None:
            _end_egress(store, {name: None})
        _remove_folders(store, [name])
        raise
    return record


def _egress_started(prepared: _Prepared, progress: Progress | None) -> Any:
    """A context: the egress network made and its proxy starting beside the sandbox (nothing
    without --allow-host)."""
    from contextlib import nullcontext

    if prepared.egress is None:
        return nullcontext()
    from . import egress

    return egress.provisioned(prepared.egress, file_owner_of(prepared.spec.user),
                              lambda image: pull_image(image, progress))


def _egress_record(prepared: _Prepared) -> dict[str, Any]:
    if prepared.egress is None:
        return {}
    from . import egress

    return egress.record_options(prepared.egress)


def _create_container(prepared: _Prepared, env_path: str | None,
                      build: Callable[[docker.RunSpec], list[str]],
                      progress: Progress | None) -> tuple[str, docker.RunSpec]:
    """(container id, the spec used). The expiry is stamped just before each attempt, so a
    slow pull never leaves a record that expires before its container does."""
    pulled = False
    while True:
        ttl = prepared.spec.ttl_seconds
        spec = replace(prepared.spec, env_file=env_path,
                       expires_at="" if ttl is None else iso_after(ttl))
        try:
            return docker.run_docker(build(spec)).stdout.strip(), spec
        except ImageError:
            if pulled:
                raise
        pull_image(spec.image, progress)  # not present locally: pull it once, then retry
        pulled = True


def start(store: StateStore, options: StartOptions, name: str | None = None,
          progress: Progress | None = None) -> SandboxRecord:
    """Create and start a locked-down container with the sandbox folder mounted at /app."""
    ttl_seconds = None if options.keep else validate.duration(options.ttl)
    prepared = _prepare(store, options, name, ttl_seconds)
    return _create(store, options, prepared, docker.run_argv, progress)


def create_one_shot(store: StateStore, options: StartOptions, command: Sequence[str], *,
                    name: str | None = None, workdir: str | None = None, stdin: bool = False,
                    tty: bool = False, progress: Progress | None = None) -> SandboxRecord:
    """`run`'s sandbox: a created, not yet started, container whose main process is COMMAND
    (start it with docker.start_attached_argv; remove it with discard). One container run
    instead of run + exec + rm: the command ends when the container does."""
    if not command or not command[0]:
        raise InvalidInput("no command given")
    prepared = _prepare(store, options, name, ttl_seconds=None)

    def build(spec: docker.RunSpec) -> list[str]:
        return docker.create_argv(spec, command, workdir=workdir, stdin=stdin, tty=tty)

    return _create(store, options, prepared, build, progress)


def discard(store: StateStore, name: str, *, container_gone: bool = False) -> None:
    """Remove one sandbox we know (run's cleanup): container unless already gone, folder,
    entry. No listing of containers, unlike purge."""
    if not container_gone:
        remove_container(name)
    _end_egress(store, {name: store.get(name)})
    _remove_folders(store, [name])
    with store.transaction() as records:
        records.pop(name, None)


def pull_image(image: str, progress: Progress | None = None) -> None:
    """`docker pull` with its progress on our stderr; a failure becomes one ImageError line."""
    if progress:
        progress(f"pulling image {image} ...")
    proc = docker.popen_docker(docker.pull_argv(image), stdin=subprocess.DEVNULL,
                               stdout=sys.stderr.fileno(), stderr=subprocess.PIPE)
    _, err = proc.communicate()
    if proc.returncode != 0:
        failure = docker.classify_failure(docker.pull_argv(image), proc.returncode,
                                          err.decode(errors="replace"))
        if isinstance(failure, (ImageError, DockerError)):
            raise ImageError(f"could not pull image {image!r}: {failure.message}")
        raise failure


# --- files ---------------------------------------------------------------------------------

def write_file(store: StateStore, name: str, path: str, source: BinaryIO | bytes) -> int:
    """Write SOURCE to PATH (relative to /app) on the host folder; returns the bytes written."""
    parts = validate.sandbox_path(path)
    record = require(store, name)
    with volume.opened_root(store.volumes_dir, name) as root:
        return volume.write_from(root, parts, source, file_owner(record))


def read_file(store: StateStore, name: str, path: str, out_fd: int) -> int:
    """Copy the file at PATH to OUT_FD; returns the bytes copied."""
    parts = validate.sandbox_path(path)
    require(store, name)
    with volume.opened_root(store.volumes_dir, name) as root:
        return volume.read_to(root, parts, out_fd)


class CopyProgress(Protocol):
    """Told how many files a copy will take, then of each file copied."""

    def begin(self, files: int) -> None: ...

    def advance(self, size: int) -> None: ...


@dataclass
class CopySummary:
    """What copy-to did."""

    files: int
    bytes: int
    destination: str
    skipped_links: int


def copy_to(store: StateStore, name: str, patterns: Sequence[str], dest: str = ".",
            excludes: Sequence[str] = (), use_gitignore: bool = True,
            source_root: str | None = None, progress: CopyProgress | None = None,
            ) -> CopySummary:
    """Copy host files matching PATTERNS (below SOURCE_ROOT, default cwd) into DEST."""
    from .selection import select_files  # imports pathspec: only this command needs it

    dest_parts = validate.sandbox_path(dest, allow_root=True)
    for pattern in (*patterns, *excludes):
        validate.glob(pattern)
    record = require(store, name)
    root = os.path.abspath(source_root or os.getcwd())
    selection = select_files(root, patterns, excludes, use_gitignore)
    if progress:
        progress.begin(len(selection.files))
    total = 0
    with volume.opened_root(store.volumes_dir, name) as root_fd, \
            volume.DirWalker(root_fd, file_owner(record)) as walker:
        for rel in selection.files:
            src = os.open(os.path.join(root, *rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                info = os.fstat(src)
                size = info.st_size
                volume.copy_file_in(walker, dest_parts + rel, src, size, info.st_mode)
            finally:
                os.close(src)
            total += size
            if progress:
                progress.advance(size)
    return CopySummary(len(selection.files), total, "/app/" + "/".join(dest_parts),
                       selection.skipped_links)


# --- network -------------------------------------------------------------------------------

def disconnect(store: StateStore, name: str) -> list[str]:
    """Detach the container from every network (loopback stays); returns the networks left."""
    require(store, name)
    raw = docker.run_docker(docker.networks_argv(name)).stdout.strip()
    try:
        networks = json.loads(raw) or {}
    except ValueError:
        networks = {}
    left = [net for net in networks if net != "none"]
    for net in left:
        docker.run_docker(docker.network_disconnect_argv(net, name))
    _end_egress_of(store, name)
    with store.transaction() as records:
        if name in records:
            records[name].network = False
            records[name].ports = []
            records[name].options.pop("allow_hosts", None)  # the proxy is gone: nothing left
    return left


def _end_egress_of(store: StateStore, name: str) -> None:
    """disconnect: stop NAME's egress proxy and remove its network (its log stays)."""
    from . import egress

    record = store.get(name)
    if record is not None and egress.uses_egress(record):
        egress.end(store, name)


# --- listing and purge ---------------------------------------------------------------------

def _labelled_containers(store: StateStore) -> dict[str, dict[str, Any]]:
    """This home's containers by sandbox name, from Docker's labels."""
    out = docker.run_docker(docker.list_argv(store.label)).stdout
    found: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        labels = dict(part.split("=", 1) for part in str(row.get("Labels", "")).split(",")
                      if "=" in part)
        label_name = labels.get(docker.LABEL_NAME, "")
        try:
            validate.name(label_name)
        except InvalidInput:
            continue
        row["labels"] = labels
        found[label_name] = row
    return found


def list_sandboxes(store: StateStore) -> list[dict[str, Any]]:
    """Every sandbox of this home, merging the state file with Docker's view."""
    forget_expired(store)
    records = store.load()
    containers = _labelled_containers(store)
    rows = []
    for name in sorted(set(records) | set(containers)):
        rec, box = records.get(name), containers.get(name)
        labels = box["labels"] if box else {}
        rows.append({
            "name": name,
            "container_id": rec.container_id if rec else str(box.get("ID", "")) if box else "",
            "image": rec.image if rec else str(box.get("Image", "")) if box else "",
            "status": str(box.get("State", "unknown")) if box else "missing",
            "volume": store.volume_path(name),
            "network": rec.network if rec else False,
            "ports": rec.ports if rec else [],
            "keep": rec.keep if rec else labels.get(docker.LABEL_KEEP) == "1",
            "created_at": rec.created_at if rec else "",
            "expires_at": rec.expires_at if rec else (labels.get(docker.LABEL_EXPIRES) or None),
            "allow_hosts": allowed_hosts(rec),
            "tracked": rec is not None,
        })
    return rows


def allowed_hosts(record: SandboxRecord | None) -> list[str]:
    """The allow-list of RECORD ([] without one; the state file is untrusted)."""
    hosts = record.options.get("allow_hosts") if record else None
    return [h for h in hosts if isinstance(h, str)] if isinstance(hosts, list) else []


def _old_enough(box: dict[str, Any]) -> bool:
    """True when a listed container was created ORPHAN_MIN_AGE_SECONDS ago or more."""
    from datetime import datetime

    created = str(box.get("CreatedAt", ""))  # e.g. "2026-11-26 15:13:40 +0000 UTC"
    try:
        when = datetime.strptime(created[:25], "%Y-%m-%d %H:%M:%S %z").timestamp()
    except ValueError:
        return True  # unknown age: treat as a leftover, as before
    return time.time() - when >= ORPHAN_MIN_AGE_SECONDS


def _orphan_folders(store: StateStore, known: set[str]) -> list[str]:
    """Folders in volumes/ with neither a record nor a container, old enough to be leftovers."""
    try:
        entries = list(os.scandir(store.volumes_dir))
    except FileNotFoundError:
        return []
    cutoff = time.time() - ORPHAN_MIN_AGE_SECONDS
    orphans = []
    for entry in entries:
        if entry.name in known:
            continue
        try:
            validate.name(entry.name)
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                orphans.append(entry.name)
        except (InvalidInput, OSError):
            continue
    return orphans


def purge(store: StateStore, names: Sequence[str] = (), everything: bool = False) -> list[str]:
    """Remove sandboxes: container first (so it cannot race us), then folder, then entry.

    NAMES: those. None: every sandbox not started with --keep. EVERYTHING: all of them.
    Finds containers by label, so a lost state file strands nothing. Returns the names removed.
    """
    for name in names:
        validate.name(name)
    expired = forget_expired(store)  # already gone: purging them again is not an error
    records = store.load()
    containers = _labelled_containers(store)
    if names:
        missing = [n for n in names if n not in records and n not in containers
                   and n not in expired and not os.path.isdir(store.volume_path(n))]
        targets = [n for n in dict.fromkeys(names) if n not in missing]
    else:
        missing = []
        # Without --all, a container with no record yet may belong to a `start` still in
        # progress: it is left alone until old enough to be a leftover (as orphan folders are).
        candidates = set(records) | {n for n, box in containers.items()
                                     if everything or n in records or _old_enough(box)}
        if everything:
            targets = sorted(candidates)
        else:
            targets = sorted(
                n for n in candidates
                if not (records[n].keep if n in records
                        else containers[n]["labels"].get(docker.LABEL_KEEP) == "1")
            )
        targets += _orphan_folders(store, set(records) | set(containers))
    live = [n for n in targets if n in containers]
    if live:
        _remove_containers(live)
    _end_egress(store, {n: records.get(n) for n in targets})
    if not names:
        _sweep_egress(store, everything, (set(records) | set(containers)) - set(targets))
    _remove_folders(store, targets)
    if any(n in records for n in targets):
        with store.transaction() as current:
            for name in targets:
                current.pop(name, None)
    if missing:
        raise SandboxNotFound(
            f"no sandbox named {', '.join(repr(m) for m in missing)}"
            + (f" (removed {', '.join(targets)})" if targets else "")
        )
    return targets


def _sweep_egress(store: StateStore, everything: bool, live: set[str]) -> None:
    """A bare purge also removes egress pieces of this home whose sandbox is gone."""
    from . import egress

    egress.sweep(store, sorted(live), everything=everything)


def remove_container(name: str) -> None:
    """Stop and remove one container now (`docker rm -f`); gone already is fine."""
    _remove_containers([name])


def _remove_containers(names: list[str]) -> None:
    proc = docker.run_docker(docker.remove_argv(names), check=False)
    if proc.returncode != 0:
        problems = [line for line in proc.stderr.splitlines() if line.strip()
                    and "no such container" not in line.lower()
                    and "already in progress" not in line.lower()]  # --rm got there first
        if problems:
            raise docker.classify_failure(docker.remove_argv(names), proc.returncode,
                                          "\n".join(problems))


# --- images --------------------------------------------------------------------------------

def repo_build_target(repo: str, branch: str | None, subdir: str | None,
                      tag: str | None) -> tuple[str, str]:
    """(tag, context URL) for building REPO: owner/name on GitHub, or any git URL."""

    if not repo or repo.startswith("-") or any(c.isspace() for c in repo) or "#" in repo:
        raise InvalidInput(f"invalid repository {repo!r}: expected owner/name or a git URL")
    for label, value in (("branch", branch), ("dir", subdir)):
        if value is not None and (not value or value.startswith("-") or "#" in value
                                  or ":" in value or any(c.isspace() for c in value)):
            raise InvalidInput(f"invalid {label} {value!r}")
    if subdir is not None and ".." in subdir.split("/"):
        raise InvalidInput(f"invalid dir {subdir!r}: '..' is not allowed")
    if re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
        url = f"https://github.com/{repo}.git"
        default_tag = repo.lower()
    elif re.match(r"(https?|git|ssh)://[^\s]+\Z", repo) or re.match(r"git@[^\s:]+:[^\s]+\Z", repo):
        url = repo
        path = re.sub(r"\.git$", "", re.split(r"[:/]", repo.rstrip("/"))[-1])  # last segment
        default_tag = re.sub(r"[^a-z0-9_.-]+", "-", path.lower()).strip("-.") or "image"
    else:
        raise InvalidInput(f"invalid repository {repo!r}: expected owner/name or a git URL")
    fragment = ""
    if branch or subdir:
        fragment = f"#{branch or ''}" + (f":{subdir}" if subdir else "")
    chosen = validate.image(tag or default_tag)
    return chosen, url + fragment


def _build_failure_line(text: str) -> str:
    """The most telling line of a failed build's output."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for needle in ("fatal:", "error:", "ERROR", "returned a non-zero code"):
        for line in reversed(lines):
            if needle in line:
                return line[line.find(needle):] if needle == "fatal:" else line
    return lines[-1] if lines else "no output"


def build_repo(repo: str, branch: str | None = None, subdir: str | None = None,
               tag: str | None = None, live: bool = False) -> str:
    """`docker build -t TAG URL#BRANCH:DIR` with its output on stderr; returns the tag.

    LIVE (a terminal): docker draws its own progress on our stderr. Otherwise (CI, pipes):
    plain lines, passed through as they come, the last ones kept for the error message.
    """
    chosen, url = repo_build_target(repo, branch, subdir, tag)
    argv = docker.build_argv(chosen, url)
    from .ui import mask_url  # messages may be logged: never show a token

    shown = mask_url(url)
    if live:
        code = docker.stream_to_stderr(argv)
        if code != 0:
            raise ImageError(f"build of {shown} failed (docker build exit code {code})")
        return chosen
    env = {**os.environ, "BUILDKIT_PROGRESS": "plain"}
    proc = docker.popen_docker(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                               stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    tail: list[bytes] = []
    for line in proc.stderr:  # stream it through, keeping the end for the error message
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
        tail = [*tail[-19:], line]
    proc.wait()
    if proc.returncode != 0:
        text = b"".join(tail).decode(errors="replace")
        failure = docker.classify_failure(argv, proc.returncode, text)
        if isinstance(failure, DockerError) and type(failure) is DockerError:
            raise ImageError(f"build of {shown} failed: {mask_url(_build_failure_line(text))}")
        raise failure
    return chosen
