"""The operations behind each command: start, read, write, copy-to, disconnect, purge, ls,
build-repo. No printing and no typer here: results are returned, failures raised.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext, suppress
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, Protocol

from . import acl, disk, docker, engine, validate, volume
from .errors import (
    DockerError,
    DockerUnavailable,
    ImageError,
    InvalidInput,
    NameInUse,
    SandboxError,
    SandboxNotFound,
    UnsafePath,
)
from .state import SandboxRecord, StateStore, iso_after, now_iso, parse_iso
from .ui import human_bytes
from .workspace import BIND, VOLUME, EngineVolume, HostFolder, Workspace, volume_name

if TYPE_CHECKING:  # an annotation only: exec, read and write need not import config
    from .config import StartOptions

# Each sandbox's code runs as a uid of its own, never yours and never another sandbox's: per-
# user kernel quotas (inotify instances and watches, processes, pending signals, pipe buffers,
# message queues) are counted by uid, so a shared one would let a sandbox spend yours or its
# neighbours'. Picked at random from a range that real accounts, `nobody` and the usual
# subordinate-uid blocks stay below, and small enough for tar's octal uid field (docker cp).
SANDBOX_UID_BASE = 1_100_000
SANDBOX_UID_SPAN = 900_000
OLD_DEFAULT_USER = (65534, 65534)  # records of older versions that name no valid user


def new_sandbox_user() -> tuple[int, int]:
    """A fresh uid (and the same number as gid) for one sandbox's code."""
    uid = SANDBOX_UID_BASE + int.from_bytes(os.urandom(4), "big") % SANDBOX_UID_SPAN
    return uid, uid


def _user_of(text: str) -> tuple[int, int] | None:
    """UID:GID from a record or a label (untrusted text), or None."""
    uid, _, gid = text.partition(":")
    return (int(uid), int(gid)) if uid.isdigit() and gid.isdigit() else None
ORPHAN_MIN_AGE_SECONDS = 60  # a folder this young may belong to a start still in progress
# An expired sandbox's container goes at once; its folder stays this long after the expiry, so
# that `read` still gets what the code produced (README "ls"), then ls, start or purge remove it.
EXPIRED_FILES_SECONDS = 24 * 3600
_ENDED = "container_removed"  # in a record's options: its expired container is gone already

Progress = Callable[[str], None]
Report = Callable[[str], None]  # one line of talk for stderr (the CLI passes ui.info)


def iso_at(when: float) -> str:
    """Epoch seconds WHEN as ISO 8601 UTC."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _make_folder(store: StateStore, name: str, disk_size: str, report: Report | None,
                 later: list[_PendingCap] | None = None) -> tuple[int, int]:
    """Create NAME's folder; returns the uid:gid the code will run as (new_sandbox_user).

    As root, the folder is handed to that uid and size-capped; as another user, it is shared
    between you and that uid through ACLs (acl.py), and only on a file system without ACLs
    does the code run as you (said on stderr). With LATER, a cap that can be made is made on
    a thread instead, appended there (see _PendingCap)."""
    folder = store.volume_path(name)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        raise NameInUse(
            f"the name {name!r} is taken (a sandbox by that name exists or is starting)"
        ) from None
    user = new_sandbox_user()
    if os.getuid() == 0:
        os.chown(folder, *user)
        os.chmod(folder, 0o755)
        if later is not None and disk_size != validate.UNLIMITED and disk.supported() is None:
            # disk.attach alone: on failure the folder stays until _undo_start removes it,
            # since a folder gone meanwhile would read as an engine refusing the bind.
            size = int(validate.size_bytes(disk_size))
            later.append(_PendingCap(
                lambda: disk.attach(store.disks_dir, folder, name, size, user)))
        else:
            _cap_folder(store, name, folder, disk_size, user, report)
        return user
    _cap_folder(store, name, folder, disk_size, user, report)  # says why it is not capped
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        acl.share(fd, [os.getuid(), user[0]])
        return user
    except OSError as exc:
        if report:
            report(f"warning: the code runs as your own uid: {store.volumes_dir} has no ACLs "
                   f"({exc.strerror})")
        return os.getuid(), os.getgid()
    finally:
        os.close(fd)


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


def sweep(store: StateStore, report: Report | None = None) -> list[str]:
    """Housekeeping of ls, start and purge (never of commands about one sandbox, so a wedged
    sandbox cannot hang those): end the containers of expired sandboxes (Docker has normally
    removed them already; one that stopped its own sleep has not), then remove the folders and
    entries of those expired more than EXPIRED_FILES_SECONDS ago, each announced through
    REPORT. A failure is reported and the sweep goes on. Returns the names removed.
    Only sandboxes on the environment's engine: one on another engine is left to `purge`
    (which asks each engine, within a deadline) or to a sweep run where the environment
    points at its engine. A sweep so never waits on another engine, nor acts on the wrong
    one (whose "no such container" would have dropped a record and left its volume)."""
    now = time.time()
    records = store.load()
    here = engine.environment()
    expired = {name: rec for name, rec in records.items()
               if rec.expired(now) and _on_engine(rec, here)}
    if not expired:
        return []
    ended = _end_expired_containers(store, expired, report)
    due = [name for name, rec in expired.items() if name in ended and _files_due(rec, now)]
    if not due:
        return []
    with store.transaction() as current:  # claim them, so a parallel sweep cannot race us
        claimed = [name for name in due if name in current and current[name].expired(now)]
        for name in claimed:
            del current[name]
    _end_egress_logs(store, {name: expired[name] for name in claimed})
    for name in claimed:
        tally = volume.Tally()
        try:
            _remove_volumes(store, [expired[name]])
            _remove_folders(store, [name], {name: Owner(expired[name].image, expired[name].user)},
                            tally)
        except (OSError, SandboxError) as exc:
            _say(report, f"warning: could not remove the folder of expired {name}: "
                 f"{getattr(exc, 'message', None) or exc} (`sandbox purge` retries)")
            continue
        files = tally.files
        _say(report, f"expired {name} removed (its folder, {files} file{'s' * (files != 1)}, "
             f"{human_bytes(tally.bytes)})")
    return claimed


def _on_engine(record: SandboxRecord, here: engine.Engine) -> bool:
    """RECORD's sandbox lives on the engine HERE reaches (a record of an older version, with
    no engine, is taken to be the environment's)."""
    recorded = engine.from_options(record.options)
    return recorded is None or engine.same_daemon(recorded, here)


def _end_expired_containers(store: StateStore, expired: dict[str, SandboxRecord],
                            report: Report | None) -> set[str]:
    """Remove the containers of EXPIRED not yet marked removed; returns the names whose
    container is gone. The mark saves a docker call on every later sweep."""
    pending = {name: rec for name, rec in expired.items() if not rec.options.get(_ENDED)}
    done = set(expired) - set(pending)
    if not pending:
        return done
    try:
        _remove_containers([container_ref(rec) for rec in pending.values()])
    except SandboxError as exc:
        _say(report, f"warning: could not end the containers of expired "
             f"{', '.join(sorted(pending))}: {exc.message}")
        return done
    try:  # its proxy has ended on its own (same TTL); its network has not
        _end_egress(store, pending, keep_logs=True)
    except SandboxError as exc:
        _say(report, f"warning: could not end the egress of expired "
             f"{', '.join(sorted(pending))}: {exc.message} (`sandbox purge` retries)")
    with store.transaction() as current:
        for name in pending:
            if name in current:
                current[name].options[_ENDED] = True
    return done | set(pending)


def _files_due(record: SandboxRecord, now: float) -> bool:
    """True once RECORD's files have outlived their time after expiry."""
    when = parse_iso(record.expires_at or "")
    return when is not None and now > when + EXPIRED_FILES_SECONDS


def files_until(record: SandboxRecord) -> str:
    """Until when an expired RECORD's files are kept (ISO), '' when it never expires."""
    when = parse_iso(record.expires_at or "")
    return "" if when is None else iso_at(when + EXPIRED_FILES_SECONDS)


def _say(report: Report | None, message: str) -> None:
    if report is not None:
        report(message)


def _egress_names(records: Mapping[str, SandboxRecord | None]) -> list[str]:
    """Those of RECORDS that have (or, unknown, may have) egress pieces (as egress.uses_egress,
    without its import)."""
    return [name for name, rec in records.items()
            if rec is None or "egress_network" in rec.options]


def _end_egress(store: StateStore, records: Mapping[str, SandboxRecord | None], *,
                keep_logs: bool = False) -> None:
    """Remove the egress proxy and (unless KEEP_LOGS: an expired sandbox's log stays
    with its files) log of those of RECORDS that have one; their containers are gone already.
    One sandbox's pieces are found by a listing of its own (no other sandbox's wait)."""
    names = _egress_names(records)
    if names:
        from . import egress  # only then: run's cleanup should not pay for its import

        if keep_logs:
            egress.end_all(store, names)
        else:
            egress.remove(store, names)


def _end_egress_logs(store: StateStore, records: Mapping[str, SandboxRecord]) -> None:
    """The sweep: the attempt logs of expired sandboxes go with their folders."""
    names = _egress_names(records)
    if names:
        from . import egress

        egress.remove_logs(store, names)


def container_ref(record: SandboxRecord) -> str:
    """The record's container id when it looks like one (the file is untrusted), else its
    name: the id cannot point at a newer container that reused the name."""
    cid = record.container_id
    return cid if re.fullmatch(r"[0-9a-f]{12,64}", cid) else record.name


class Owner(NamedTuple):
    """A sandbox's image and its code's uid:gid: what _unlock needs."""

    image: str
    user: str


def _remove_folders(store: StateStore, names: Iterable[str],
                    owners: Mapping[str, Owner] | None = None,
                    tally: volume.Tally | None = None) -> None:
    """Unmount and delete the folders of NAMES (their containers are gone). OWNERS tells each
    sandbox's image and user, for a folder whose code locked you out of its files (_unlock)."""
    names = list(names)
    if not names or not os.path.isdir(store.volumes_dir):
        return
    parent = os.open(store.volumes_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            folder = store.volume_path(name)
            if tally is not None and disk.mounted(store.disks_dir, folder, name):
                with volume.opened_root(store.volumes_dir, name) as root:  # to count what goes
                    volume.empty_tree(root, tally)
            disk.detach(store.disks_dir, folder, name)
            try:
                volume.remove_tree(parent, validate.name(name), tally)
            except PermissionError:
                _unlock(store, name, (owners or {}).get(name))
                try:
                    volume.remove_tree(parent, name, tally)
                except PermissionError as exc:  # one line naming the folder, not a bare errno
                    raise UnsafePath(f"cannot remove {store.volume_path(name)}: {exc.strerror} "
                                     f"even after unlocking it; as root: rm -rf "
                                     f"{store.volume_path(name)}") from None
            from .manifest import remove as remove_manifest  # copy-to's record, for diff

            remove_manifest(store, name)
            _remove_logs(store, name)
    finally:
        os.close(parent)


def _remove_logs(store: StateStore, name: str) -> None:
    """The logs of NAME's detached processes (background.py), when it has any."""
    if os.path.isdir(os.path.join(store.home, "logs", name)):
        from . import background

        background.remove_logs(store, name)


UNLOCK_SECONDS = 300  # a tree of a million folders takes a while to chmod, one at a time


def _unlock(store: StateStore, name: str, owner: Owner | None) -> None:
    """Make a folder removable again whose code (not you, see _make_folder) took your access
    to its own folders away: chmod them, as their owner, in a throwaway container of the
    sandbox's image that sees the folder alone (no network, no capabilities, read-only). Only
    folders: removing a file needs nothing of the file's own mode."""
    folder = store.volume_path(name)
    failure = f"cannot remove {folder}: the sandbox's code locked its files; as root: rm -rf"
    user = _user_of(owner.user) if owner else None
    if os.getuid() == 0 or owner is None or not owner.image or user is None or user[0] == 0:
        raise UnsafePath(f"{failure} {folder}")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:  # a chmod of ours during the first attempt may have cut the sandbox user out
        acl.share(fd, [os.getuid(), user[0]])
    finally:
        os.close(fd)
    # Not `managed`: no listing takes it for a sandbox, and --rm removes it when done.
    spec = docker.RunSpec(name=f"{name}-unlock-{os.urandom(3).hex()}", image=owner.image,
                          volume=folder, user=f"{user[0]}:{user[1]}", home_label=store.label,
                          ttl_seconds=None, memory="128m", pids_limit=16, managed=False)
    # find visits a folder before it reads it (chmod -R gives up at a folder it cannot read),
    # and /app itself is yours, so only what is below it. The sticky bit goes too: in a
    # sticky folder of the sandbox user's, only that user may remove what others made.
    argv = docker.create_argv(spec, ["find", docker.WORKDIR, "-mindepth", "1", "-type", "d",
                                     "-exec", "chmod", "a+rwx,a-t", "{}", ";"])
    argv[argv.index("create")] = "run"
    try:
        proc = docker.run_docker(argv, check=False, timeout=UNLOCK_SECONDS)
    except SandboxError:
        docker.run_docker(docker.remove_argv([spec.name]), check=False)
        raise UnsafePath(f"{failure} {folder} (unlocking it took too long)") from None
    if proc.returncode != 0:
        raise UnsafePath(f"{failure} {folder} (the image's find/chmod failed)")


def require(store: StateStore, name: str, *, expired_ok: bool = False) -> SandboxRecord:
    """The record of NAME, or SandboxNotFound; an expired one only when EXPIRED_OK (read:
    its files outlive its container). Looks at NAME alone: no sweep, no other sandbox."""
    validate.name(name)
    record = store.get(name)
    if record is None:
        raise SandboxNotFound(f"no sandbox named {name!r} (see `sandbox ls`)")
    if not expired_ok and record.expired():
        raise SandboxNotFound(
            f"sandbox {name!r} expired at {record.expires_at}: its container is gone; "
            f"`sandbox read {name} PATH` gets its files until {files_until(record)}, "
            f"`sandbox purge {name}` removes them")
    engine.use(record.options)  # the engine it was started on, whatever the environment says
    return record


# --- start ---------------------------------------------------------------------------------

class _Prepared:
    """A sandbox about to be created: its folder exists, its container not yet."""

    __slots__ = ("cap", "egress", "env", "name", "spec")

    def __init__(self, name: str, spec: docker.RunSpec,
                 env: dict[str, str],  # -e values: they reach docker through a private env file
                 egress: Any = None,  # an egress.Plan with --allow-host
                 cap: _PendingCap | None = None,  # the folder's cap, still being made (run's)
                 ) -> None:
        self.name, self.spec, self.env, self.egress, self.cap = name, spec, env, egress, cap


class _PendingCap:
    """A folder's size cap (disk.attach: mkfs and a loop mount, 10 to 30 ms) made on a thread
    while `run`'s container is created: `docker create` only checks that the bind source
    exists, and the mount is looked up at `docker start`. So `wait()` must return (and did
    not raise) before the container starts and before anything is written to the folder;
    `settle()` waits without raising, before an undo removes the folder (never under a mount
    still being made)."""

    def __init__(self, work: Callable[[], object]) -> None:
        import threading

        self._error: BaseException | None = None
        self._thread = threading.Thread(target=engine.carry(self._run), args=(work,),
                                        daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], object]) -> None:
        try:
            work()
        except BaseException as exc:  # handed to wait(), in the thread that started us
            self._error = exc

    def wait(self) -> None:
        """Until the cap is made; raises what making it raised."""
        self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def settle(self) -> None:
        """Until the thread is done, whatever came of it (mkfs and mount have deadlines)."""
        self._thread.join()


def _cap_folder(store: StateStore, name: str, folder: str, size: str,
                owner: tuple[int, int], report: Report | None) -> None:
    """Make FOLDER a file system of SIZE (see disk.py), or say why it stays uncapped."""
    if size == validate.UNLIMITED:
        return
    reason = disk.supported()
    if reason is not None:
        if report:
            report(f"warning: /app is not capped at {size}: {reason} "
                   "(set disk: unlimited to accept)")
        return
    try:
        disk.attach(store.disks_dir, folder, name, int(validate.size_bytes(size)), owner)
    except BaseException:
        os.rmdir(folder)
        raise


EGRESS_NEEDS_FILES = ("--allow-host needs an engine that sees this machine's files (the egress "
                      "proxy and the sandbox's handoff are mounted from here); this one does "
                      "not: start it on a local engine")
UNCAPPED_ROOT = ("the container's own file system is not capped (--writable-root): docker "
                 "caps it only on overlay over xfs with pquota")


def _prepare(store: StateStore, options: StartOptions, name: str | None,
             ttl_seconds: int | None, report: Report | None = None,
             validated: Callable[[], None] | None = None,
             cap_later: bool = False) -> _Prepared:
    """Validate, claim the name and make the folder (owned by the container's user).
    VALIDATED is called once the input is found good, before any docker call of ours. With
    CAP_LATER, the folder's cap may still be in the making (_Prepared.cap)."""
    if name is not None:
        validate.name(name)
    name = name or generate_name()
    if options.ports and not options.network:
        raise InvalidInput("publishing ports needs --network (the network is off by default)")
    plan = _egress_plan(store, name, options, ttl_seconds)
    if validated is not None:
        validated()
    sweep(store, report)
    store.ensure_dirs()
    if store.get(name) is not None:
        raise NameInUse(f"a sandbox named {name!r} already exists")
    eng = engine.current()
    if plan is not None and not eng.local:
        raise InvalidInput(EGRESS_NEEDS_FILES)
    storage = options.storage if options.storage != "auto" else BIND if eng.local else VOLUME
    later: list[_PendingCap] = []
    if storage == BIND:
        uid, gid = _make_folder(store, name, options.disk, report,
                                later if cap_later else None)
        source = store.volume_path(name)
    else:  # the folder stays empty: it only claims the name, as for a bind
        _claim_name(store, name)
        uid, gid = new_sandbox_user()
        source = volume_name(store.label, name)
    if not options.read_only and report:
        report(f"warning: {UNCAPPED_ROOT}")
    if options.ports and (storage == VOLUME or not eng.local) and report:
        report("note: on a remote engine, ports bind the loopback of the engine's host, not "
               "this one: publish 0.0.0.0:PORT:PORT (docker:dind) or forward with ssh -L "
               "(README, \"Remote engines\")")
    spec = docker.RunSpec(
        name=name, image=options.image, volume=source, user=f"{uid}:{gid}", storage=storage,
        home_label=store.label, home_dir=os.path.realpath(store.home), ttl_seconds=ttl_seconds,
        network=options.network, ports=list(options.ports),
        memory=options.memory, cpus=options.cpus, pids_limit=options.pids,
        read_only=options.read_only, tmpfs_size=options.tmpfs_size,
        runtime=_runtime_for(eng, options.runtime, options.network),
        cap_add=list(options.cap_add), keep=ttl_seconds is None and options.keep,
        default_home="HOME" not in options.env,
    )
    cap = later[0] if later else None
    if plan is None:
        return _Prepared(name, spec, dict(options.env), cap=cap)
    from . import egress

    plan.user = spec.user  # the proxy runs as the sandbox's user (never root, never you)
    # No network (--network none, as ever): the handoff gives the proxy a port on loopback,
    # as the sandbox's first process, or in a port holder whose network the sandbox joins.
    if not egress.uses_holder(plan):
        spec = spec._replace(mounts=egress.sandbox_mounts(plan),
                             main_prefix=egress.sandbox_main_prefix())
    # The proxy variables are in the container's own environment (the --env-file of docker
    # run/create), so every exec inherits them, as run's command does; the user's -e wins.
    # Last: the proxy is made while start goes on; every failure from here on goes through
    # _undo_egress.
    prepared = _Prepared(name, spec, {**egress.sandbox_env(), **options.env}, plan, cap)
    try:
        egress.begin(plan, file_owner_of(spec.user))
    except BaseException:
        if cap is not None:  # the folder's cap may still be in the making
            cap.settle()
        _undo_egress(store, prepared)
        _remove_folders(store, [name])
        raise
    return prepared


def _egress_plan(store: StateStore, name: str, options: StartOptions,
                 ttl_seconds: int | None) -> Any:
    """The egress plan of a sandbox started with --allow-host, else None."""
    if not options.allow_hosts:
        return None
    from . import egress

    egress.check_options(options)
    return egress.new_plan(store, name, options, "", ttl_seconds)  # user: once the folder is


def _claim_name(store: StateStore, name: str) -> None:
    """Create NAME's (empty) folder exclusively: parallel starts of one name cannot both go
    on, whatever the workspace (an engine's `volume create` is idempotent)."""
    try:
        os.mkdir(store.volume_path(name), 0o700)
    except FileExistsError:
        raise NameInUse(
            f"the name {name!r} is taken (a sandbox by that name exists or is starting)"
        ) from None


def _runtime_for(eng: engine.Engine, runtime: str | None, network: bool) -> str | None:
    """RUNTIME, except that gVisor's `runsc` registered with --network=none (its own network
    cannot run here) gives way to a `runsc-net` entry, when the engine has one, for a
    sandbox with a network (README, "gVisor")."""
    if runtime != "runsc" or not network:
        return runtime
    return "runsc-net" if "runsc-net" in eng.runtimes() else runtime


def _create(store: StateStore, options: StartOptions, prepared: _Prepared,
            build: Callable[[docker.RunSpec], list[str]],
            progress: Progress | None, pull_output: bool = True,
            seed: Callable[[_Prepared], None] | None = None) -> SandboxRecord:
    """Run BUILD(spec) (docker run -d / docker create), pulling the image once if it is
    missing, SEED the new sandbox's /app (a snapshot's) and record the sandbox; on any failure
    or signal nothing is left behind."""
    name = prepared.name
    # A nonce on this attempt's container: cleanup finds what we made, never a same-named
    # container of the user's or of another SANDBOX_HOME (their names clash in one engine).
    prepared.spec = prepared.spec._replace(attempt=os.urandom(8).hex())
    container_id = ""
    try:
        if prepared.spec.storage == VOLUME:
            _make_volume(store, prepared.spec)
        with docker.env_file(prepared.env) as env_path:
            if _uses_holder(prepared):
                container_id, spec = _create_behind_holder(prepared, env_path, build,
                                                           progress, pull_output)
            else:
                with _egress_started(prepared, progress):
                    container_id, spec = _create_container(prepared, env_path, build,
                                                           progress, pull_output)
                if prepared.egress is not None and build is docker.run_argv:
                    _egress_ready(prepared, container_id)  # (`run`'s command waits itself)
        if spec.storage == VOLUME:
            _ready_volume(spec, container_id)
        ports = _bound_ports(container_id) if options.ports and build is docker.run_argv \
            else list(options.ports)
        if prepared.cap is not None:  # made while docker created the container
            prepared.cap.wait()
        if seed is not None:
            seed(prepared)
    except NameInUse:
        _undo_start(store, prepared, "")
        raise _name_clash(store, name) from None
    except BaseException:
        # Killed mid-call, the docker client may still have had its container made.
        _undo_start(store, prepared, container_id)
        raise
    record = SandboxRecord(
        name=name, container_id=container_id, image=options.image,
        created_at=now_iso(), expires_at=spec.expires_at or None,
        keep=spec.keep, network=options.network,
        ports=ports, env_keys=sorted(options.env), user=spec.user,
        options={"memory": options.memory, "cpus": options.cpus, "pids": options.pids,
                 "read_only": options.read_only, "disk": options.disk,
                 "runtime": spec.runtime, "storage": spec.storage,
                 "cap_add": list(options.cap_add), **engine.to_options(engine.current()),
                 **_egress_record(prepared)},
        workspace=store.derived_workspace(name, spec.storage),
    )
    try:
        with store.transaction() as records:
            records[name] = record
    except BaseException:
        _undo_start(store, prepared, container_id)
        raise
    return record


def _undo_start(store: StateStore, prepared: _Prepared, container_id: str) -> None:
    """Remove what this start made: its container by the id docker gave back or, without
    one (killed mid-`docker run`), by this attempt's nonce label; then its folder (which
    _prepare created exclusively). Never by name. Cleanup failures leave the original error
    in charge: purge finds a leftover by its labels."""
    if prepared.cap is not None:
        prepared.cap.settle()
    try:
        refs = [container_id] if container_id else _attempt_containers(store, prepared.spec)
        if refs:
            docker.run_docker(docker.remove_argv(refs), check=False)
    except SandboxError:
        pass
    if prepared.spec.storage == VOLUME:
        _remove_volume_quietly(prepared.spec.volume)
    _undo_egress(store, prepared)
    _remove_folders(store, [prepared.name])


def _undo_egress(store: StateStore, prepared: _Prepared) -> None:
    """Remove the egress proxy this start made (egress.begin), if any. Best
    effort, like the rest of the undo: the original error stays in charge."""
    if prepared.egress is not None:
        from . import egress

        with suppress(SandboxError, OSError):
            egress.undo(store, prepared.egress)


def _make_volume(store: StateStore, spec: docker.RunSpec) -> None:
    """`volume create` of SPEC's engine volume, labelled like its container."""
    labels = {docker.LABEL_MANAGED: "1", docker.LABEL_HOME: store.label,
              docker.LABEL_NAME: spec.name, docker.LABEL_ATTEMPT: spec.attempt}
    docker.run_docker(docker.volume_create_argv(spec.volume, labels))


def _ready_volume(spec: docker.RunSpec, container_id: str) -> None:
    """Hand a new engine volume's root (root's, 0755) to the sandbox user before the code
    first runs. Podman: a `cp --archive=false` of a tar whose `.` is the user's. Docker keeps
    the root's owner through cp, so a short-lived helper of the sandbox's image, with CAP_CHOWN
    (and CAP_DAC_OVERRIDE, to go into a snapshot's private folders) alone, no network and
    a read-only root, runs `chown -R` on it."""
    from .workspace import feed, root_tar

    uid = int(spec.user.partition(":")[0])
    eng = engine.current()
    if eng.podman:
        feed(eng.cp_in_argv(container_id, docker.WORKDIR), root_tar(uid))
        return
    helper = spec._replace(name=f"{spec.name}-init-{os.urandom(3).hex()}", ports=[],
                           network=False, cap_add=["CHOWN", "DAC_OVERRIDE"], runtime=None,
                           env_file=None, memory="64m", pids_limit=16, keep=False,
                           ttl_seconds=None)
    # -R: what the engine copied up from the image's /app (a snapshot's files, owned by the
    # sandbox it was taken of) becomes this sandbox user's too; no code has run there yet.
    argv = docker.create_argv(helper, ["chown", "-R", f"{uid}:{uid}", docker.WORKDIR])
    argv[argv.index("create")] = "run"
    argv[argv.index("--user") + 1] = docker.MAIN_USER
    proc = docker.run_docker(argv, check=False)
    if proc.returncode != 0:
        raise docker.classify_failure(argv, proc.returncode, proc.stderr or
                                      "chown of the engine volume's root failed (the image "
                                      "needs chown for --storage volume)")


def _remove_volume_quietly(name: str) -> None:
    with suppress(SandboxError):
        docker.run_docker(docker.volume_remove_argv([name]), check=False)


def _remove_volumes(store: StateStore, records: Iterable[SandboxRecord],
                    untracked: Iterable[str] = ()) -> None:
    """Remove the engine volumes of RECORDS that have one, and those UNTRACKED names may
    have (a lost state file: the volume, if any, is found by its derived name)."""
    names = [(rec.workspace or {}).get("path", "") for rec in records
             if (rec.workspace or {}).get("kind") == VOLUME]
    names += [volume_name(store.label, name) for name in untracked]
    if not names:
        return
    argv = docker.volume_remove_argv(names)
    proc = docker.run_docker(argv, check=False)
    problems = [line for line in proc.stderr.splitlines() if line.strip()
                and "no such volume" not in line.lower()]
    if proc.returncode != 0 and problems:
        raise docker.classify_failure(argv, proc.returncode, "\n".join(problems))


def _attempt_containers(store: StateStore, spec: docker.RunSpec) -> list[str]:
    """Ids of the containers of this home carrying SPEC's attempt nonce."""
    out = docker.run_docker(docker.list_argv(store.label, spec.attempt), check=False).stdout
    return [line.strip() for line in out.splitlines()
            if re.fullmatch(r"[0-9a-f]{64}", line.strip())]


def _name_clash(store: StateStore, name: str) -> NameInUse:
    """The error for a docker name held by a container that is not this start's: which
    owner (another SANDBOX_HOME, this home's leftover, or not sandbox's at all). Exit 2."""
    found = _inspect([name])
    box = found[0] if found else None
    labels = box.labels if box else {}
    ours = labels.get(docker.LABEL_MANAGED) == "1" and labels.get(docker.LABEL_NAME) == name
    if ours and labels.get(docker.LABEL_HOME) == store.label:
        return NameInUse(f"the name {name!r} is taken by a leftover container of this home: "
                         f"`sandbox purge {name}` removes it")
    if ours and labels.get(docker.LABEL_HOME):
        owner = labels.get(docker.LABEL_HOME_DIR) or f"home id {labels[docker.LABEL_HOME]}"
        return NameInUse(f"the name {name!r} is taken by a sandbox of another SANDBOX_HOME "
                         f"({owner}): choose another --name")
    ident = f" (id {box.id[:12]})" if box else ""
    return NameInUse(f"the name {name!r} is taken by a container that sandbox did not "
                     f"create{ident}: choose another --name (it was left alone)")


def _bound_ports(container_id: str) -> list[str]:
    """The ports the engine bound, as `127.0.0.1:49153->8000/tcp` (`docker port` says
    `8000/tcp -> 127.0.0.1:49153`): -p 8000 picks a random host port."""
    out = docker.run_docker(docker.port_argv(container_id), check=False).stdout
    bound = []
    for line in out.splitlines():
        inner, sep, host = line.partition(" -> ")
        if sep and inner.strip() and host.strip():
            bound.append(f"{host.strip()}->{inner.strip()}")
    return bound


def _egress_started(prepared: _Prepared, progress: Progress | None) -> Any:
    """A context: the egress proxy starting beside the sandbox (nothing without
    --allow-host)."""
    from contextlib import nullcontext

    if prepared.egress is None:
        return nullcontext()
    from . import egress

    return egress.provisioned(prepared.egress, lambda image: pull_image(image, progress))


def _uses_holder(prepared: _Prepared) -> bool:
    """Whether the sandbox's handoff runs in a port holder (egress.uses_holder)."""
    if prepared.egress is None:
        return False
    from . import egress

    return egress.uses_holder(prepared.egress)


def _create_behind_holder(prepared: _Prepared, env_path: str | None,
                          build: Callable[[docker.RunSpec], list[str]],
                          progress: Progress | None,
                          pull_output: bool) -> tuple[str, docker.RunSpec]:
    """_create_container for a sandbox that joins its port holder's loopback: the holder
    starts beside the proxy, and the sandbox once the proxy holds the port."""
    from . import egress

    def pull(image: str) -> None:
        pull_image(image, progress, pull_output)

    with _egress_started(prepared, progress):
        # The sandbox's image first: the holder's lifetime runs from its start, and the
        # sandbox joins it only after a pull of its own image.
        if docker.run_docker(docker.image_inspect_argv(prepared.spec.image),
                             check=False).returncode != 0:
            pull(prepared.spec.image)
        holder_id = egress.start_holder(prepared.egress, pull)
    _egress_ready(prepared, holder_id)
    prepared.spec = prepared.spec._replace(network_mode=f"container:{holder_id}")
    return _create_container(prepared, env_path, build, progress, pull_output)


def _egress_ready(prepared: _Prepared, container_id: str) -> None:
    """Until the started sandbox has handed its proxy its port: `start` must not return a
    sandbox whose first connection would be refused."""
    from . import egress

    egress.wait_ready(prepared.egress, container_id)


def _egress_record(prepared: _Prepared) -> dict[str, Any]:
    if prepared.egress is None:
        return {}
    from . import egress

    return egress.record_options(prepared.egress)


def _create_container(prepared: _Prepared, env_path: str | None,
                      build: Callable[[docker.RunSpec], list[str]],
                      progress: Progress | None,
                      pull_output: bool = True) -> tuple[str, docker.RunSpec]:
    """(container id, the spec used). The expiry is stamped just before each attempt, so a
    slow pull never leaves a record that expires before its container does."""
    pulled = False
    while True:
        ttl = prepared.spec.ttl_seconds
        spec = prepared.spec._replace(env_file=env_path,
                                      expires_at="" if ttl is None else iso_after(ttl))
        try:
            return docker.run_docker(build(spec)).stdout.strip(), spec
        except ImageError:
            if pulled:
                raise
        pull_image(spec.image, progress, pull_output)  # not present: pull it once, retry
        pulled = True


def start(store: StateStore, options: StartOptions, name: str | None = None,
          progress: Progress | None = None, report: Report | None = None,
          pull_output: bool = True) -> SandboxRecord:
    """Create and start a locked-down container with the sandbox folder mounted at /app.
    PULL_OUTPUT: docker pull's own progress goes to our stderr (the CLI), else nowhere
    (the API and the MCP server never print)."""
    ttl_seconds = None if options.keep else validate.duration(options.ttl)
    return _create_auto(store, options, name, ttl_seconds, docker.run_argv, progress, report,
                        pull_output)


def _create_auto(store: StateStore, options: StartOptions, name: str | None,
                 ttl_seconds: int | None, build: Callable[[docker.RunSpec], list[str]],
                 progress: Progress | None, report: Report | None,
                 pull_output: bool = True) -> SandboxRecord:
    """Prepare and create; with storage `auto`, an engine that refuses the bind (it cannot
    see the client's files: docker:dind, another mount namespace) gets an engine volume."""
    from . import snapshots

    # Is the image a snapshot (whose /app seeds the folder)? Asked at once, in the background:
    # the answer is needed only once the container exists and before the code can run in it
    # (`start`'s sleeps; `run`'s is created, not started), so the call costs no wall time.
    # (Bad input is still refused before any docker call: the check begins once it is good.)
    checks: list[snapshots.SnapshotCheck] = []
    try:
        # `run`'s container is created, not started: its folder's cap is made meanwhile.
        prepared = _prepare(store, options, name, ttl_seconds, report,
                            lambda: checks.append(snapshots.SnapshotCheck(options.image)),
                            cap_later=build is not docker.run_argv)

        def seed(made: _Prepared) -> None:
            if made.spec.storage == BIND and checks and checks[0].answer():
                _seed_from_snapshot(store, options.image, made, report)

        try:
            return _create(store, options, prepared, build, progress, pull_output, seed)
        except DockerError as exc:
            if options.allow_hosts and engine.bind_refused(exc.stderr):
                raise InvalidInput(EGRESS_NEEDS_FILES) from None
            if (options.storage != "auto" or prepared.spec.storage != BIND
                    or not engine.bind_refused(exc.stderr)):
                raise
    finally:
        for check in checks:
            check.cancel()
    # _create has undone the folder; the next try cannot meet the same refusal
    volume_options = options._replace(storage=VOLUME)
    return _create(store, options, _prepare(store, volume_options, prepared.name, ttl_seconds,
                                            None), build, progress, pull_output)


def _seed_from_snapshot(store: StateStore, image: str, prepared: _Prepared,
                        report: Report | None) -> None:
    """Fill the new folder with the /app of IMAGE, a snapshot (snapshots.py). Called by
    _create once the container exists and before the code runs in it: on any failure,
    _create undoes the start (container and folder)."""
    from . import snapshots

    try:
        uid, _, gid = prepared.spec.user.partition(":")
        owner = (int(uid), int(gid)) if os.getuid() == 0 and uid.isdigit() and gid.isdigit() \
            else None
        walked = snapshots.seed(store, image, prepared.name, owner)
    except OSError as exc:  # a full --disk cap above all: say which step, exit 1
        raise OSError(exc.errno, f"could not fill /app from snapshot {image}: "
                      f"{exc.strerror or exc}" + (" (a larger --disk?)"
                                                  if exc.errno == errno.ENOSPC else "")) from None
    _say(report, f"/app seeded from snapshot {image} ({walked.files} "
         f"file{'s' * (walked.files != 1)}, {human_bytes(walked.bytes)})")


def create_one_shot(store: StateStore, options: StartOptions, command: Sequence[str], *,
                    name: str | None = None, workdir: str | None = None, stdin: bool = False,
                    tty: bool = False, progress: Progress | None = None,
                    report: Report | None = None) -> SandboxRecord:
    """`run`'s sandbox: a created, not yet started, container whose main process is COMMAND
    (start it with docker.start_attached_argv; remove it with discard). One container run
    instead of run + exec + rm: the command ends when the container does, and the container
    at its TTL (docker.TTL_SCRIPT), so a killed client strands nothing past it."""
    if not command or not command[0]:
        raise InvalidInput("no command given")

    def build(spec: docker.RunSpec) -> list[str]:
        return docker.create_argv(spec, command, workdir=workdir, stdin=stdin, tty=tty)

    return _create_auto(store, options, name, validate.duration(options.ttl), build, progress,
                        report)


def discard(store: StateStore, record: SandboxRecord, *, container_gone: bool = False) -> None:
    """Remove one sandbox we know (run's cleanup): container (by id) unless already gone,
    folder, entry. No listing of containers, unlike purge."""
    name = record.name
    if not container_gone:
        remove_container(container_ref(record))
    _remove_volumes(store, [record])
    _end_egress(store, {name: record})
    _remove_folders(store, [name])
    with store.transaction() as records:
        records.pop(name, None)


def pull_image(image: str, progress: Progress | None = None, output: bool = True) -> None:
    """`docker pull` with its progress on our stderr (unless not OUTPUT); a failure becomes
    one ImageError line."""
    if progress:
        progress(f"pulling image {image} ...")
    proc = docker.popen_docker(docker.pull_argv(image), stdin=subprocess.DEVNULL,
                               stdout=sys.stderr.fileno() if output else subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=docker.DEADLINE_PULL)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise docker.timed_out(docker.pull_argv(image), docker.DEADLINE_PULL, image) from None
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
    return workspace_of(store, record).write(parts, source)


def read_file(store: StateStore, name: str, path: str, out_fd: int,
              max_size: int = volume.READ_MAX_DEFAULT) -> int:
    """Copy the file at PATH to OUT_FD (refused when over MAX_SIZE bytes); returns the bytes
    copied."""
    parts = validate.sandbox_path(path)
    record = require(store, name, expired_ok=True)  # its files outlive its container
    return workspace_of(store, record).read(parts, out_fd, max_size)


def workspace_of(store: StateStore, record: SandboxRecord, helper: bool = False) -> Workspace:
    """RECORD's workspace: its host folder, or its engine volume reached through its
    container (or, once that has expired or when HELPER, a helper container made for the
    copy)."""
    kind = (record.workspace or {}).get("kind", BIND)
    if kind != VOLUME:
        return HostFolder(store.volumes_dir, record.name, file_owner(record))
    path = store.workspace_path(record).removeprefix("volume:")

    def container() -> Iterator[str]:
        if not record.expired() and not helper:
            yield container_ref(record)
            return
        made = _volume_helper(store, record, path)
        try:
            yield made
        finally:
            _remove_containers([made])

    return EngineVolume(path, container, (_user_of(record.user) or OLD_DEFAULT_USER)[0])


def _volume_helper(store: StateStore, record: SandboxRecord, volume: str) -> str:
    """A created, never started container of RECORD's image with its volume at /app, for
    `cp` once the sandbox's own container has gone (expired)."""
    spec = docker.RunSpec(name=f"{record.name}-files-{os.urandom(3).hex()}",
                          image=record.image, volume=volume, storage=VOLUME,
                          user="{}:{}".format(*(_user_of(record.user) or OLD_DEFAULT_USER)),
                          home_label=store.label, ttl_seconds=None, memory="64m",
                          pids_limit=16)
    return docker.run_docker(docker.create_argv(spec, ["true"])).stdout.strip()


class CopyProgress(Protocol):
    """Told how many files a copy will take, then of each file copied."""

    def begin(self, files: int) -> None: ...

    def advance(self, size: int) -> None: ...


class CopySummary(NamedTuple):
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
    from .selection import check_dest, pattern, select_files  # only this command needs them

    dest_parts = validate.sandbox_path(dest, allow_root=True)
    for text in (*patterns, *excludes):
        pattern(text)
    record = require(store, name)
    root = os.path.abspath(source_root or os.getcwd())
    check_dest(root, patterns, dest)
    selection = select_files(root, patterns, excludes, use_gitignore)
    if progress:
        progress.begin(len(selection.files))
    from .manifest import Recorder  # what `sandbox diff` compares with

    recorder = Recorder(store, record)
    try:
        total = workspace_of(store, record).copy_in(root, list(selection.files), dest_parts,
                                                    progress.advance if progress else None,
                                                    recorder)
    finally:
        recorder.save()  # what was copied before a failure is recorded too
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
    """disconnect: remove NAME's egress proxy, the one holder of its port (its log stays)."""
    from . import egress

    record = store.get(name)
    if record is not None and egress.uses_egress(record):
        egress.end(store, name)


# --- listing and purge ---------------------------------------------------------------------

class Container(NamedTuple):
    """One container as `docker ps` rows or `docker inspect` describe it (labels as a map,
    never a string)."""

    id: str
    docker_name: str
    state: str
    image: str
    created: str  # ISO 8601, e.g. 2026-11-26T15:13:40Z (inspect adds nanoseconds)
    labels: dict[str, str]
    ports: list[str]  # bound: 127.0.0.1:49153->8000/tcp


def _inspect(refs: Sequence[str]) -> list[Container]:
    """Containers REFS as structured data; one gone meanwhile is left out (docker inspect
    still prints the others). Fields of the wrong type (image metadata is hostile) read empty."""
    if not refs:
        return []
    proc = docker.run_docker(docker.inspect_argv(refs), check=False)
    try:
        data = json.loads(proc.stdout or "[]")
    except ValueError:
        data = []
    if proc.returncode != 0 and not data:
        failure = docker.classify_failure(docker.inspect_argv(refs), proc.returncode, proc.stderr)
        if not isinstance(failure, SandboxNotFound):
            raise failure
    found = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        config = _mapping(item.get("Config"))
        labels = {str(k): str(v) for k, v in _mapping(config.get("Labels")).items()}
        found.append(Container(
            id=str(item.get("Id", "")), docker_name=str(item.get("Name", "")).lstrip("/"),
            state=str(_mapping(item.get("State")).get("Status", "unknown")),
            image=str(config.get("Image", "")), created=str(item.get("Created", ""))[:19] + "Z",
            labels=labels, ports=_inspected_ports(item),
        ))
    return found


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _inspected_ports(item: dict[str, Any]) -> list[str]:
    """NetworkSettings.Ports as `IP:HOST->CONTAINER/PROTO`, bound ones only."""
    ports = []
    for inner, bindings in _mapping(_mapping(item.get("NetworkSettings")).get("Ports")).items():
        for bind in bindings if isinstance(bindings, list) else []:
            bind = _mapping(bind)
            if bind.get("HostPort"):
                ports.append(f"{bind.get('HostIp') or '0.0.0.0'}:{bind['HostPort']}->{inner}")
    return ports


def _labelled_containers(store: StateStore, timeout: float | None = None
                         ) -> dict[str, Container]:
    """This home's containers by sandbox name, from `docker ps` rows whose labels are read by
    key (docker.rows_argv: exact values, no container lock). A container counts only when
    its docker name is the name its label gives."""
    out = docker.run_docker(docker.rows_argv(store.label), timeout=timeout).stdout
    found: dict[str, Container] = {}
    for text in engine.current().parse_rows(out, docker.LISTED_LABELS):
        labels = {key: text.get(key, "") for key in docker.LISTED_LABELS}
        label_name = labels[docker.LABEL_NAME]
        try:
            validate.name(label_name)
        except InvalidInput:
            continue
        if text.get("names") != label_name or labels[docker.LABEL_HOME] != store.label:
            continue
        found[label_name] = Container(
            id=text.get("id", ""), docker_name=label_name, state=text.get("state", "unknown"),
            image=text.get("image", ""), created=_ps_time(text.get("created", "")),
            labels=labels, ports=[p for p in text.get("ports", "").split(", ") if "->" in p])
    return found


def _ps_time(text: str) -> str:
    """`docker ps`'s CreatedAt (2026-11-26 15:13:40 +0000 UTC) as ISO 8601, '' if not one."""
    from datetime import datetime, timezone

    try:
        when = datetime.strptime(text[:25], "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        return ""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


OTHER_ENGINE_DEADLINE = 15.0  # ls/purge ask each other engine once, within this


class _Seen(NamedTuple):
    """The containers of this home on every engine its records name."""

    containers: dict[str, Container]
    engines: dict[str, engine.Engine]  # the engine of each record not on the current one
    unreachable: dict[str, str]  # records whose engine did not answer: name -> where


def _engine_of(record: SandboxRecord) -> engine.Engine:
    return engine.from_options(record.options) or engine.current()


def _containers_everywhere(store: StateStore, records: Mapping[str, SandboxRecord]) -> _Seen:
    """This home's containers on the current engine (an error there is raised, as ever) and
    on each other engine the RECORDS name, asked once each within OTHER_ENGINE_DEADLINE:
    one that does not answer leaves its sandboxes unreachable, not missing. A record's
    own engine decides its container (a namesake on the current one is not it)."""
    here = engine.current()
    containers = _labelled_containers(store)
    others: dict[engine.Engine, list[str]] = {}
    for name, rec in records.items():
        eng = _engine_of(rec)
        if eng != here:
            others.setdefault(eng, []).append(name)
    engines: dict[str, engine.Engine] = {}
    unreachable: dict[str, str] = {}
    for eng, names in others.items():
        try:
            with engine.using(eng):
                found = _labelled_containers(store, timeout=OTHER_ENGINE_DEADLINE)
        except SandboxError:
            unreachable.update((name, eng.where) for name in names)
            found = {}
        for name in names:
            containers.pop(name, None)
            if name not in unreachable:
                engines[name] = eng
                if name in found:
                    containers[name] = found[name]
    return _Seen(containers, engines, unreachable)


def list_sandboxes(store: StateStore, report: Report | None = None,
                   processes: bool = True) -> list[dict[str, Any]]:
    """Every sandbox of this home, merging the state file with Docker's view. An expired
    sandbox (its folder kept for `read`) has status `expired`. PROCESSES: each row lists its
    running detached processes (`exec --detach`; costs a look at each one's log folder)."""
    sweep(store, report)
    records = store.load()
    seen = _containers_everywhere(store, records)
    containers = seen.containers
    rows = []
    for name in sorted(set(records) | set(containers)):
        rec, box = records.get(name), containers.get(name)
        labels = box.labels if box else {}
        expired = rec is not None and rec.expired()
        status = ("unreachable" if name in seen.unreachable else "expired" if expired
                  else box.state if box else "missing")
        other = seen.engines.get(name)
        rows.append({
            "name": name,
            "container_id": rec.container_id if rec else box.id if box else "",
            "image": rec.image if rec else box.image if box else "",
            "status": status,
            "volume": store.workspace_path(rec) if rec else store.volume_path(name),
            "storage": (rec.workspace or {}).get("kind", BIND) if rec else "",
            "network": rec.network if rec else False,
            "ports": box.ports if box and box.state == "running" else rec.ports if rec else [],
            "keep": rec.keep if rec else labels.get(docker.LABEL_KEEP) == "1",
            "created_at": rec.created_at if rec else box.created if box else "",
            "expires_at": rec.expires_at if rec else (labels.get(docker.LABEL_EXPIRES) or None),
            "files_until": files_until(rec) if rec and rec.expired() else None,
            "allow_hosts": allowed_hosts(rec),
            # Only for a sandbox on another engine than the environment's (its own, recorded).
            "engine": seen.unreachable.get(name) or (other.where if other else None),
            "tracked": rec is not None,
        })
    if processes:
        from . import background

        for row in rows:
            row["processes"] = background.listed(store, str(row["name"]))
    return rows


def allowed_hosts(record: SandboxRecord | None) -> list[str]:
    """The allow-list of RECORD ([] without one; the state file is untrusted)."""
    hosts = record.options.get("allow_hosts") if record else None
    return [h for h in hosts if isinstance(h, str)] if isinstance(hosts, list) else []


def _old_enough(box: Container) -> bool:
    """True when a listed container was created ORPHAN_MIN_AGE_SECONDS ago or more."""
    when = parse_iso(box.created)
    if when is None:
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


def purge(store: StateStore, names: Sequence[str] = (), everything: bool = False,
          report: Report | None = None) -> list[str]:
    """Remove sandboxes: container first (so it cannot race us), then folder, then entry.

    NAMES: those. None: every sandbox not started with --keep. EVERYTHING: all of them.
    Finds containers by label, so a lost state file strands nothing. Returns the names removed.
    """
    for name in names:
        validate.name(name)
    expired = sweep(store, report)  # already gone: purging them again is not an error
    records = store.load()
    seen = _containers_everywhere(store, records)
    containers = seen.containers
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
                        else containers[n].labels.get(docker.LABEL_KEEP) == "1")
            )
        targets += _orphan_folders(store, set(records) | set(containers))
    kept = [n for n in targets if n in seen.unreachable]
    for name in kept if not names else ():  # named ones: an error at the end
        # its container and volume may live on: its record stays, to retry
        _say(report, f"warning: {name} was not purged: its engine, "
             f"{seen.unreachable[name]}, did not answer (purge again when it does)")
    targets = [n for n in targets if n not in seen.unreachable]
    for eng, group in _by_engine(targets, seen.engines).items():
        with engine.using(eng) if eng is not None else nullcontext():
            live = [containers[n].id for n in group if n in containers]  # by id: no namesake
            if live:
                _remove_containers(live)
            _end_egress(store, {n: records.get(n) for n in group})
            _remove_volumes(store, [records[n] for n in group if n in records],
                            [n for n in group if n not in records])
    if not names:
        _sweep_egress(store, everything,
                      (set(records) | set(containers)) - set(targets) - set(kept))
    owners = {n: Owner(box.image, box.labels.get(docker.LABEL_USER, ""))
              for n, box in containers.items()}
    owners.update({n: Owner(rec.image, rec.user) for n, rec in records.items()})
    _remove_folders(store, targets, owners)
    if any(n in records for n in targets):
        with store.transaction() as current:
            for name in targets:
                current.pop(name, None)
    if missing:
        raise SandboxNotFound(
            f"no sandbox named {', '.join(repr(m) for m in missing)}"
            + (f" (removed {', '.join(targets)})" if targets else "")
        )
    if names and kept:
        unanswered = ", ".join(f"{n} (its engine, {seen.unreachable[n]}, did not answer)"
                               for n in kept)
        raise DockerUnavailable(
            f"not purged: {unanswered}"
            + (f"; removed {', '.join(targets)}" if targets else ""),
            "purge again when it answers")
    return targets


def _by_engine(names: Sequence[str], engines: Mapping[str, engine.Engine]
               ) -> dict[engine.Engine | None, list[str]]:
    """NAMES grouped by the engine they live on (None: the current one), that one first."""
    groups: dict[engine.Engine | None, list[str]] = {None: []}
    for name in names:
        groups.setdefault(engines.get(name), []).append(name)
    return groups


def _sweep_egress(store: StateStore, everything: bool, live: set[str]) -> None:
    """A bare purge also removes egress pieces of this home whose sandbox is gone."""
    from . import egress

    egress.sweep(store, sorted(live), everything=everything)



def remove_container(ref: str) -> None:
    """Stop and remove one container (REF: its id, see container_ref) now (`docker rm -f`);
    gone already is fine."""
    _remove_containers([ref])


def _remove_containers(names: list[str]) -> None:
    """`docker rm -f NAMES`, within its deadline. A container whose engine is wedged (an exec
    frozen in `runc init` holds its lock: rm, kill and inspect hang) is killed from the host
    through its cgroup, where this host runs it and we may (root), then removed again."""
    argv = docker.remove_argv(names)
    try:
        proc = docker.run_docker(argv, check=False)
    except docker.EngineTimeout as stuck:
        _remove_wedged(names, stuck)
        return
    _check_removed(argv, proc)


def _check_removed(argv: list[str], proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        problems = [line for line in proc.stderr.splitlines() if line.strip()
                    and "no such container" not in line.lower()
                    and "already in progress" not in line.lower()]  # --rm got there first
        if problems:
            raise docker.classify_failure(argv, proc.returncode, "\n".join(problems))


def _remove_wedged(names: list[str], stuck: docker.EngineTimeout) -> None:
    """Kill the processes of NAMES' containers from the host (SIGKILL through the cgroup:
    stopped and frozen tasks die too, and with them the exec that wedged the engine), then
    `docker rm -f` again. Where the host cannot (not root, a remote engine), one line says
    what the user can do."""
    from . import hostkill

    ids = _full_ids(names)
    refused = []
    local = engine.current().local
    for name in names:
        cid = ids.get(name, "")
        if not local or os.geteuid() != 0 or hostkill.kill_container(cid) is not True:
            refused.append(name)
    if refused:
        raise docker.EngineTimeout(_wedged_advice(refused, ids), stuck.argv, -1, "")
    argv = docker.remove_argv(names)
    _check_removed(argv, docker.run_docker(argv, check=False))
    _wait_removed([ids[name] for name in names if name in ids])


def _wait_removed(ids: list[str], seconds: float = 10.0) -> None:
    """Wait (bounded) until the daemon has finished removing IDS: the `rm -f` that missed its
    deadline goes on in the daemon once the container's processes are dead."""
    end = time.monotonic() + seconds
    while ids and time.monotonic() < end:
        argv = [docker.docker_binary(), "ps", "-a", "-q", "--no-trunc",
                *(arg for cid in ids for arg in ("--filter", f"id={cid}"))]
        if not docker.run_docker(argv).stdout.strip():
            return
        time.sleep(0.2)


def _wedged_advice(refused: list[str], ids: dict[str, str]) -> str:
    """One line: which containers are stuck, and what the user can do about them."""
    from . import hostkill

    local = all(hostkill.cgroup_dirs(ids.get(name, "")) for name in refused)
    if local and os.geteuid() != 0:
        remedy = "as root, `sudo sandbox purge` kills it through its cgroup"
    elif local:
        remedy = "its processes would not die: restart the Docker daemon"
    else:
        remedy = ("its engine runs on another host (or kernel): there, as root, SIGKILL the "
                  "processes listed in the container's cgroup.procs, or restart the daemon")
    return (f"docker rm -f {', '.join(refused)} did not finish within "
            f"{docker.DEADLINE_REMOVE:g}s: the engine is stuck on that container (a process "
            f"in it froze a docker exec); {remedy}")


def _full_ids(names: list[str]) -> dict[str, str]:
    """Full container ids of NAMES (names or ids), from `docker ps`, which reads the
    daemon's in-memory view and does not wait for a wedged container's lock."""
    argv = [docker.docker_binary(), "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]
    ids: dict[str, str] = {}
    for line in docker.run_docker(argv).stdout.splitlines():
        cid, _, listed = line.partition(" ")
        for name in names:
            if name in listed.split(",") or (len(name) >= 12 and cid.startswith(name)):
                ids[name] = cid
    return ids


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
    import threading

    watchdog = threading.Timer(docker.DEADLINE_BUILD, proc.kill)  # no build hangs forever
    watchdog.daemon = True
    watchdog.start()
    try:
        for line in proc.stderr:  # stream it through, keeping the end for the error message
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
            tail = [*tail[-19:], line]
    finally:
        watchdog.cancel()
    docker.wait_docker(proc, argv)
    if proc.returncode != 0:
        text = b"".join(tail).decode(errors="replace")
        failure = docker.classify_failure(argv, proc.returncode, text)
        if isinstance(failure, DockerError) and type(failure) is DockerError:
            raise ImageError(f"build of {shown} failed: {mask_url(_build_failure_line(text))}")
        raise failure
    return chosen
