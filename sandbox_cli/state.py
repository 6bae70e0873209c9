"""The JSON state file: a cache of the sandboxes this home started (Docker labels are the truth).

Writers take an exclusive flock, read, modify and atomically replace the file, so parallel
commands (`make -j8`, CI matrices) never lose or corrupt an entry. Readers need no lock: a
replaced file is always whole. Nothing read from disk is trusted: a file that does not parse
(including one nested too deep for the parser) reads as empty and is moved aside by the next
writer; entries with a bad name or a wrongly typed field are dropped; only real JSON booleans
count as true; option values nested deeper than a list of scalars are left out (so saving never
recurses into them); and volume paths are always derived from the name, never taken from the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from . import validate
from .errors import InvalidInput

SCHEMA_VERSION = 1
EXPIRY_GRACE_SECONDS = 5  # the container's sleep starts a moment after we record created_at
_SCALARS = (str, int, float, bool, type(None))
# json.loads raises RecursionError (not ValueError) on input nested deeper than it can parse.
_UNPARSABLE = (ValueError, RecursionError)


def home_dir() -> str:
    """$SANDBOX_HOME, else $XDG_CACHE_HOME/sandbox-cli, else ~/.cache/sandbox-cli."""
    explicit = os.environ.get("SANDBOX_HOME")
    if explicit:
        return os.path.abspath(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(cache), "sandbox-cli")


def home_label(home: str) -> str:
    """A short id for a home folder, put on containers so homes never purge each other's."""
    import hashlib  # here: loading OpenSSL costs ~2 ms, and only start, ls and purge need it

    return hashlib.sha256(os.path.realpath(home).encode()).hexdigest()[:16]


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


@dataclass
class SandboxRecord:
    """What we remember about one sandbox."""

    name: str
    container_id: str
    image: str
    created_at: str
    expires_at: str | None  # None when kept
    keep: bool = False
    network: bool = False
    ports: list[str] = field(default_factory=list)
    env_keys: list[str] = field(default_factory=list)
    user: str = ""
    options: dict[str, object] = field(default_factory=dict)

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


def _flat_options(value: object) -> dict[str, object]:
    """OPTIONS with only the values we write (scalars, lists of scalars): nothing deep."""
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return {str(key): item for key, item in value.items()
            if isinstance(item, _SCALARS)
            or (isinstance(item, list) and all(isinstance(x, _SCALARS) for x in item))}


class StateStore:
    """The state file and the volumes folder of one sandbox home."""

    def __init__(self, home: str | None = None) -> None:
        self.home = home or home_dir()
        self.path = os.path.join(self.home, "state.json")
        self.lock_path = os.path.join(self.home, "state.lock")
        self.volumes_dir = os.path.join(self.home, "volumes")
        self.disks_dir = os.path.join(self.home, "disks")  # size-capped folders' images

    @functools.cached_property
    def label(self) -> str:
        """home_label of this home, computed on first use (exec, read, write never use it)."""
        return home_label(self.home)

    def volume_path(self, name: str) -> str:
        """The host folder of sandbox NAME (derived, never read from the file)."""
        return os.path.join(self.volumes_dir, validate.name(name))

    def ensure_dirs(self) -> None:
        """Create the home and volumes folders (private to the user)."""
        os.makedirs(self.volumes_dir, mode=0o700, exist_ok=True)

    def load(self) -> dict[str, SandboxRecord]:
        """All valid records, without locking (the file is replaced atomically)."""
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
        except _UNPARSABLE:
            return {}
        entries = data.get("sandboxes", {}) if isinstance(data, dict) else {}
        records: dict[str, SandboxRecord] = {}
        if isinstance(entries, dict):
            for key, value in entries.items():
                record = SandboxRecord.from_json(value)
                if record is not None and record.name == key:
                    records[key] = record
        return records

    def get(self, name: str) -> SandboxRecord | None:
        """The record of NAME, or None."""
        return self.load().get(name)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, SandboxRecord]]:
        """Locked read-modify-write: mutate the yielded dict; it is saved when the block ends."""
        self.ensure_dirs()
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self._keep_unreadable_file()
                records = self.load()
                yield records
                self._save(records)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _keep_unreadable_file(self) -> None:
        """Move a state file we cannot parse aside instead of overwriting it (no lost data)."""
        try:
            with open(self.path, "rb") as handle:
                json.loads(handle.read())
        except FileNotFoundError:
            return
        except _UNPARSABLE:
            os.replace(self.path, f"{self.path}.corrupt-{int(time.time())}")

    def _save(self, records: dict[str, SandboxRecord]) -> None:
        payload = {"version": SCHEMA_VERSION,
                   "sandboxes": {name: asdict(rec) for name, rec in sorted(records.items())}}
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
