"""The JSON state file: a cache of the sandboxes this home started (Docker labels are the truth).

Writers take an exclusive flock, read, modify and atomically replace the file, so parallel
commands (`make -j8`, CI matrices) never lose or corrupt an entry. Readers need no lock: a
replaced file is always whole. Nothing read from disk is trusted: a file that does not parse
(including one nested too deep for the parser) reads as empty and is moved aside by the next
writer; entries with a bad name or a wrongly typed field are dropped; only real JSON booleans
count as true; option values nested deeper than a list of scalars are left out (so saving never
recurses into them).

Each record names its workspace: {"kind": "bind", "path": HOST_FOLDER} or {"kind": "volume",
"path": ENGINE_VOLUME} (workspace.py). A recorded path is used only when it is exactly this
home's volumes/NAME, or the volume name derived from this home's label and NAME; anything else
drops the entry, so a path is never followed out of the home nor a volume of another home's
removed.
Records of the old format (no workspace) derive it from the name, as before.

The home is private to the user and checked before anything in it is read or written: the
home, volumes/, state.json and state.lock must be owned by the user and not links (refused
with one line naming the path and its owner, exit 2), and are tightened to 0700/0600 when an
older version left them wider. Every folder above the home must belong to the user or root and
not be writable by others (unless sticky, as /tmp), so nobody else can swap the home while we
use it. The lock is opened O_NOFOLLOW relative to the home's descriptor and waited for with a
deadline; temporary files are created O_EXCL|O_NOFOLLOW under unpredictable names there too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import stat
import time
from collections.abc import Iterator
from datetime import datetime, timezone

from . import validate
from .errors import EXIT_HOST, InvalidInput, SandboxError

SCHEMA_VERSION = 1
EXPIRY_GRACE_SECONDS = 5  # the container's sleep starts a moment after we record created_at
_SCALARS = (str, int, float, bool, type(None))
# json.loads raises RecursionError (not ValueError) on input nested deeper than it can parse.
_UNPARSABLE = (ValueError, RecursionError)
STATE_MAX_BYTES = 64 << 20  # far above any real state file; bounds what a load may read
LOCK_TIMEOUT_SECONDS = 30.0  # writers hold the lock for milliseconds (no docker call inside)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeHome(InvalidInput):
    """A part of the sandbox home is not the user's own, or is a link: nothing there is used."""


class LockBusy(SandboxError):
    """The state lock stayed taken past its deadline."""

    exit_code = EXIT_HOST


def home_dir() -> str:
    """$SANDBOX_HOME, else $XDG_CACHE_HOME/sandbox-cli, else ~/.cache/sandbox-cli."""
    explicit = os.environ.get("SANDBOX_HOME")
    if explicit:
        return os.path.abspath(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(cache), "sandbox-cli")


def home_label(home: str) -> str:
    """A short id for a home folder, put on containers so homes never purge each other's."""
    return _sha256_hex(os.path.realpath(home).encode())[:16]


def _sha256_hex(data: bytes) -> str:
    """SHA-256 of DATA by CPython's built-in module when there is one (`_sha256`, `_sha2`
    from 3.12): hashlib loads OpenSSL first, ~2.5 ms on every command in a home that holds an
    engine-volume sandbox (its volume's name is checked against this home's label)."""
    for module in ("_sha256", "_sha2"):
        try:
            return str(__import__(module).sha256(data).hexdigest())
        except ImportError:
            continue
    import hashlib

    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    """The current UTC time as ISO 8601 with a Z suffix, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_after(seconds: int) -> str:
    """UTC time SECONDS from now, ISO 8601."""
    moment = datetime.fromtimestamp(time.time() + seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float | None:
    """Epoch seconds of an ISO 8601 UTC time, or None when it is not one."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


class SandboxRecord:
    """What we remember about one sandbox.

    A plain class rather than a dataclass, as are the other records on the path of `exec`,
    `read` and `write`: importing dataclasses (it pulls in inspect) costs every command about
    20 ms before it reaches docker."""

    FIELDS = ("name", "container_id", "image", "created_at", "expires_at", "keep", "network",
              "ports", "env_keys", "user", "options", "workspace")  # the state file's order
    __slots__ = FIELDS

    def __init__(self, name: str, container_id: str, image: str, created_at: str,
                 expires_at: str | None,  # None when kept
                 keep: bool = False, network: bool = False, ports: list[str] | None = None,
                 env_keys: list[str] | None = None, user: str = "",
                 options: dict[str, object] | None = None,
                 workspace: dict[str, str] | None = None,  # {"kind": "bind", "path": FOLDER}
                 ) -> None:
        self.name, self.container_id, self.image = name, container_id, image
        self.created_at, self.expires_at = created_at, expires_at
        self.keep, self.network, self.user = keep, network, user
        self.ports: list[str] = [] if ports is None else ports
        self.env_keys: list[str] = [] if env_keys is None else env_keys
        self.options: dict[str, object] = {} if options is None else options
        self.workspace = workspace

    def to_json(self) -> dict[str, object]:
        """The state file's entry: every field, by name."""
        return {key: getattr(self, key) for key in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SandboxRecord):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass would be

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.to_json().items())
        return f"SandboxRecord({fields})"

    def expired(self, now: float | None = None) -> bool:
        """True once the TTL (plus a small grace) has passed."""
        if self.keep or not self.expires_at:
            return False
        when = parse_iso(self.expires_at)
        return when is not None and (now or time.time()) > when + EXPIRY_GRACE_SECONDS

    @classmethod
    def from_json(cls, data: object) -> SandboxRecord | None:
        """Build a record from untrusted JSON; None when anything is off.

        Strings must be strings and lists lists of strings (else the entry is dropped); keep
        and network are true only for a JSON true (a hand-edited "false" is false, not truthy);
        options keep only values that are scalars or lists of scalars.
        """
        if not isinstance(data, dict):
            return None
        try:
            expires_at = data.get("expires_at")
            record = cls(
                name=validate.name(_text(data["name"])),
                container_id=_text(data.get("container_id", "")),
                image=_text(data.get("image", "")),
                created_at=_text(data.get("created_at", "")),
                expires_at=None if expires_at is None else _text(expires_at),
                keep=data.get("keep") is True,
                network=data.get("network") is True,
                ports=_texts(data.get("ports", [])),
                env_keys=_texts(data.get("env_keys", [])),
                user=_text(data.get("user", "")),
                options=_flat_options(data.get("options", {})),
                workspace=_workspace(data.get("workspace")),
            )
        except (KeyError, TypeError, ValueError, InvalidInput):
            return None
        return record


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _texts(value: object) -> list[str]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return [_text(item) for item in value]


def _workspace(value: object) -> dict[str, str] | None:
    """A workspace entry: None (old format) or an object of exactly kind and path, strings."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"kind", "path"}:
        raise TypeError("expected {kind, path}")
    return {"kind": _text(value["kind"]), "path": _text(value["path"])}


def _flat_options(value: object) -> dict[str, object]:
    """OPTIONS with only the values we write (scalars, lists of scalars): nothing deep."""
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return {str(key): item for key, item in value.items()
            if isinstance(item, _SCALARS)
            or (isinstance(item, list) and all(isinstance(x, _SCALARS) for x in item))}


def lock_timeout() -> float:
    """Seconds to wait for the state lock: $SANDBOX_LOCK_TIMEOUT, else LOCK_TIMEOUT_SECONDS."""
    raw = os.environ.get("SANDBOX_LOCK_TIMEOUT", "")
    if not raw:
        return LOCK_TIMEOUT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 10**6:
        raise InvalidInput(f"SANDBOX_LOCK_TIMEOUT={raw!r}: expected a positive number of seconds")
    return seconds


def _owner(uid: int) -> str:
    """'alice (uid 1001)', or 'uid 1001' for a uid without a name."""
    import pwd  # only on the refusal path

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _refuse(path: str, why: str) -> UnsafeHome:
    return UnsafeHome(f"refusing sandbox home {path}: {why}; nothing there was read or "
                      "written (use a SANDBOX_HOME of your own)")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _check_own(info: os.stat_result, path: str) -> None:
    """Refuse PATH unless the user owns it."""
    if info.st_uid != os.getuid():
        raise _refuse(path, f"it is owned by {_owner(info.st_uid)}, not by you")


def _check_parents(home: str) -> None:
    """Every real folder above HOME belongs to us or root and is not writable by others
    (sticky ones, such as /tmp, excepted): else someone could swap the home under us."""
    here = os.path.realpath(os.path.dirname(home))
    while True:
        try:
            info = os.stat(here)
        except FileNotFoundError:  # not there yet: ensure_dirs makes it, as ours
            here = os.path.dirname(here)
            continue
        if info.st_uid not in (0, os.getuid()):
            raise _refuse(home, f"its parent {here} is owned by {_owner(info.st_uid)}")
        if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
            raise _refuse(home, f"its parent {here} is writable by every user")
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent


def _lock_holder(fd: int) -> str:
    """' (held by pid N, NAME)' from /proc/locks for the lock file FD, or '' when unknown."""
    info = os.fstat(fd)
    key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            lines = handle.read(1 << 20).splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if "->" in parts or key not in parts:  # '->' marks a waiter, not the holder
            continue
        pid = parts[parts.index(key) - 1]
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as handle:
                return f" (held by pid {pid}, {handle.read(64).strip()})"
        except OSError:
            return f" (held by pid {pid})"
    return ""


class StateStore:
    """The state file and the volumes folder of one sandbox home."""

    def __init__(self, home: str | None = None) -> None:
        self.home = os.path.abspath(home or home_dir())
        self.path = os.path.join(self.home, "state.json")
        self.lock_path = os.path.join(self.home, "state.lock")
        self.volumes_dir = os.path.join(self.home, "volumes")
        self.disks_dir = os.path.join(self.home, "disks")  # size-capped folders' images
        self._checked = False  # the home and its parts passed the checks once

    @functools.cached_property
    def label(self) -> str:
        """home_label of this home, computed on first use (exec, read, write never use it)."""
        return home_label(self.home)

    def volume_path(self, name: str) -> str:
        """The host folder a sandbox named NAME gets: volumes/NAME."""
        return os.path.join(self.volumes_dir, validate.name(name))

    def bind_workspace(self, name: str) -> dict[str, str]:
        """The workspace entry of a new sandbox NAME: a bind of volumes/NAME."""
        return {"kind": "bind", "path": self.volume_path(name)}

    def volume_workspace(self, name: str) -> dict[str, str]:
        """The workspace entry of a sandbox NAME whose /app is an engine volume (its path is
        the volume's name, derived from this home's label and NAME)."""
        from .workspace import volume_name

        return {"kind": "volume", "path": volume_name(self.label, validate.name(name))}

    def derived_workspace(self, name: str, kind: str) -> dict[str, str]:
        """The only workspace entry a record of NAME and KIND may hold."""
        return self.volume_workspace(name) if kind == "volume" else self.bind_workspace(name)

    def workspace_path(self, record: SandboxRecord) -> str:
        """RECORD's host folder, or `volume:NAME` for an engine volume, read from its record
        (load() kept only records whose workspace is this home's volumes/NAME or this home's
        volume of NAME, so this never leaves the home)."""
        workspace = record.workspace or self.bind_workspace(record.name)
        if workspace != self.derived_workspace(record.name, workspace.get("kind", "")):
            raise _refuse(workspace.get("path", "?"), "not this home's volumes folder")
        if workspace["kind"] == "volume":
            return f"volume:{workspace['path']}"
        return workspace["path"]

    def ensure_dirs(self) -> None:
        """Create the home and volumes folders (private to the user), checking them."""
        os.close(self._open_home(create=True))

    # --- the checks ---------------------------------------------------------------------

    def _open_home(self, create: bool) -> int:
        """A descriptor of the checked home; FileNotFoundError when it is missing and not
        CREATE. Checks (and tightens) every part the first time; later calls re-check only
        the home itself, which nobody else can change once it is ours and private."""
        if not self._checked:
            _check_parents(self.home)
        if create:
            os.makedirs(os.path.dirname(self.home), exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.home, 0o700)
        fd = self._open_dir(self.home, None)
        try:
            if not self._checked or create:
                self._check_parts(fd, create)
                self._checked = True
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_dir(self, path: str, dir_fd: int | None) -> int:
        """Open the folder PATH (relative to DIR_FD) without following a link, owned by us,
        and make it private (0700) if an older version left it wider."""
        shown = path if dir_fd is None else os.path.join(self.home, path)
        try:
            fd = os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                info = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
                raise _refuse(shown, f"it is {_kind(info.st_mode)}") from None
            raise
        try:
            info = os.fstat(fd)
            _check_own(info, shown)
            if info.st_mode & 0o077:
                os.fchmod(fd, 0o700)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_parts(self, home_fd: int, create: bool) -> None:
        """volumes/, state.json and state.lock, where present: ours, not links, private."""
        try:
            os.close(self._open_dir("volumes", home_fd))
        except FileNotFoundError:
            if create:
                with contextlib.suppress(FileExistsError):  # a parallel first start made it
                    os.mkdir("volumes", 0o700, dir_fd=home_fd)
                os.close(self._open_dir("volumes", home_fd))  # and it is checked as any
        for name in ("state.json", "state.lock"):
            with contextlib.suppress(FileNotFoundError):
                os.close(self._open_file(name, home_fd))

    def _open_file(self, name: str, home_fd: int, flags: int = _FILE_FLAGS) -> int:
        """Open NAME in the home (never through a link, never blocking), checked on the open
        descriptor: a regular file of ours, made 0600 if it was wider."""
        shown = os.path.join(self.home, name)
        try:
            fd = os.open(name, flags, 0o600, dir_fd=home_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse(shown, "it is a symbolic link") from None
            if exc.errno in (errno.EISDIR, errno.ENXIO):  # a folder; a socket
                raise _refuse(shown, "it is not a regular file") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _refuse(shown, f"it is {_kind(info.st_mode)}")
            _check_own(info, shown)
            if info.st_mode & 0o077:
                os.fchmod(fd, 0o600)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # --- reading ------------------------------------------------------------------------

    def _read_state(self, home_fd: int) -> bytes | None:
        """The state file's bytes (at most STATE_MAX_BYTES), or None when there is none."""
        try:
            fd = self._open_file("state.json", home_fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as handle:
            return handle.read(STATE_MAX_BYTES)

    def load(self) -> dict[str, SandboxRecord]:
        """All valid records, without locking (the file is replaced atomically)."""
        try:
            home_fd = self._open_home(create=False)
        except FileNotFoundError:
            return {}
        try:
            raw = self._read_state(home_fd)
        finally:
            os.close(home_fd)
        return {} if raw is None else self._parse(raw)

    def _parse(self, raw: bytes) -> dict[str, SandboxRecord]:
        try:
            data = json.loads(raw)
        except _UNPARSABLE:
            return {}
        entries = data.get("sandboxes", {}) if isinstance(data, dict) else {}
        records: dict[str, SandboxRecord] = {}
        if isinstance(entries, dict):
            for key, value in entries.items():
                record = SandboxRecord.from_json(value)
                if record is None or record.name != key:
                    continue
                if record.workspace is None:  # the old format: derived, as before
                    record.workspace = self.bind_workspace(key)
                elif record.workspace != self.derived_workspace(key, record.workspace["kind"]):
                    continue  # outside volumes/, another home's volume, another kind: refused
                records[key] = record
        return records

    def get(self, name: str) -> SandboxRecord | None:
        """The record of NAME, or None."""
        return self.load().get(name)

    # --- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, SandboxRecord]]:
        """Locked read-modify-write: mutate the yielded dict; it is saved when the block ends."""
        home_fd = self._open_home(create=True)
        try:
            lock = self._open_file("state.lock", home_fd,
                                   os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                                   | os.O_CLOEXEC)
            try:
                self._lock(lock)
                self._keep_unreadable_file(home_fd)
                raw = self._read_state(home_fd)
                records = {} if raw is None else self._parse(raw)
                yield records
                self._save(home_fd, records)
            finally:
                os.close(lock)  # releases the flock
        finally:
            os.close(home_fd)

    def _lock(self, fd: int) -> None:
        """flock FD exclusively, giving up after lock_timeout() seconds with a clear error."""
        seconds = lock_timeout()
        deadline = time.monotonic() + seconds
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise LockBusy(f"the state lock {self.lock_path} is still taken after "
                               f"{seconds:g} s{_lock_holder(fd)}; if that command is stuck, "
                               "end it (SANDBOX_LOCK_TIMEOUT sets the wait)")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _keep_unreadable_file(self, home_fd: int) -> None:
        """Move a state file we cannot parse aside instead of overwriting it (no lost data)."""
        raw = self._read_state(home_fd)
        if raw is None:
            return
        try:
            json.loads(raw)
        except _UNPARSABLE:
            os.replace("state.json", f"state.json.corrupt-{int(time.time())}",
                       src_dir_fd=home_fd, dst_dir_fd=home_fd)

    def _save(self, home_fd: int, records: dict[str, SandboxRecord]) -> None:
        """Write a fresh temporary file (O_EXCL, unpredictable name, in the home's descriptor)
        and rename it over state.json: a planted file or link is never written through."""
        for name, record in records.items():
            if record.workspace is None:
                record.workspace = self.bind_workspace(name)
        payload = {"version": SCHEMA_VERSION,
                   "sandboxes": {name: rec.to_json() for name, rec in sorted(records.items())}}
        tmp = f"state.json.tmp-{os.urandom(8).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=home_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, "state.json", src_dir_fd=home_fd, dst_dir_fd=home_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=home_fd)
            raise
