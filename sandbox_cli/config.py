"""Start options and where they come from.

Precedence, lowest first: built-in defaults < user file (~/.config/sandbox-cli/config.yaml) <
project file (sandbox.yaml in the current directory or a parent) < SANDBOX_* environment
variables < command-line flags. PyYAML is imported only when a file exists.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from . import validate
from .errors import ConfigError, InvalidInput

DEFAULT_IMAGE = "python:alpine"
DEFAULT_TTL = "1h"
PROJECT_FILE = "sandbox.yaml"


class StartOptions(NamedTuple):
    """Every setting of `sandbox start`, with the locked-down defaults. A NamedTuple, not a
    dataclass (see state.SandboxRecord): `options._replace(...)` makes a changed copy, and
    the lists and the dict are never changed in place (the defaults are shared)."""

    image: str = DEFAULT_IMAGE
    network: bool = False
    ports: list[str] = []  # noqa: RUF012 (never changed in place: see the docstring)
    env: dict[str, str] = {}  # noqa: RUF012
    ttl: str = DEFAULT_TTL
    keep: bool = False
    memory: str = "1g"
    cpus: float = 1.0
    pids: int = 256
    read_only: bool = True
    tmpfs_size: str = "256m"
    disk: str = "1g"
    runtime: str | None = None
    cap_add: list[str] = []  # noqa: RUF012
    storage: str = "auto"  # where /app lives: auto, bind (a host folder), volume (the engine's)
    allow_hosts: list[str] = []  # noqa: RUF012  # egress by allow-list (egress.py)
    egress_network: str | None = None
    proxy_image: str | None = None


def _as_storage(value: Any) -> str:
    text = _as_str(value).lower()
    if text not in ("auto", "bind", "volume"):
        raise ValueError("expected auto, bind or volume")
    return text


def _egress() -> Any:
    from . import egress  # only when an egress setting is given

    return egress


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("expected a string")
    return str(value)


def _as_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return [_as_str(v) for v in value]


def _as_env(value: Any) -> dict[str, str]:
    pairs: dict[str, str] = {}
    if isinstance(value, Mapping):
        items = [(str(k), "" if v is None else _as_str(v)) for k, v in value.items()]
    elif isinstance(value, list):
        items = [validate.env_pair(_as_str(v), {}) for v in value]
    else:
        raise ValueError("expected a mapping of NAME: value")
    for key, val in items:
        key, val = validate.env_pair(f"{key}={val}", {})
        pairs[key] = val
    return pairs


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    return float(value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("expected a whole number")
    return int(value)


def _check_ttl(value: Any) -> str:
    text = _as_str(value)
    validate.duration(text)
    return text


# key -> converter; every converter raises ValueError/InvalidInput on bad values.
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "image": lambda v: validate.image(_as_str(v)),
    "network": _as_bool,
    "ports": lambda v: validate.distinct_ports([validate.port(p) for p in _as_str_list(v)]),
    "env": _as_env,
    "ttl": _check_ttl,
    "keep": _as_bool,
    "memory": lambda v: validate.memory(_as_str(v)),
    "cpus": lambda v: validate.host_cpus(validate.cpus(_as_float(v))),
    "pids": lambda v: validate.pids(_as_int(v)),
    "read_only": _as_bool,
    "tmpfs_size": lambda v: validate.tmpfs_size(_as_str(v)),
    "disk": lambda v: validate.disk(_as_str(v)),
    "runtime": lambda v: None if v is None else validate.runtime(_as_str(v)),
    "cap_add": lambda v: [validate.capability(c) for c in _as_str_list(v)],
    "storage": _as_storage,
    "allow_hosts": lambda v: _egress().allow_hosts(_as_str_list(v)),
    "egress_network": lambda v: None if v is None else _egress().network(_as_str(v)),
    "proxy_image": lambda v: None if v is None else validate.image(_as_str(v)),
}
assert set(_CONVERTERS) == set(StartOptions._fields)

def _size_bytes(text: str) -> float:
    return float("inf") if text == validate.UNLIMITED else validate.size_bytes(text)


def loosenings(lower: StartOptions, project: Mapping[str, Any]) -> list[str]:
    """The settings of a project file that loosen what the layers below it chose: more
    network, capabilities, ports, lifetime or resources, a hardening undone, or another image
    (it may come from `build-repo` of an untrusted repository). A project file comes with the
    code you run, so these are announced rather than taken silently."""
    def looser(key: str, value: Any) -> bool:
        old = getattr(lower, key)
        if key == "image":
            return bool(value != old)
        if key in ("network", "keep"):
            return bool(value) and not old
        if key in ("ports", "cap_add", "allow_hosts"):
            return bool(set(value) - set(old))
        if key == "read_only":
            return bool(old) and not value
        if key in ("egress_network", "proxy_image"):  # another route out, another proxy
            return value is not None and value != old
        if key == "runtime":  # choosing one (e.g. runsc) hardens; dropping or swapping one not
            return old is not None and value != old
        if key in ("memory", "tmpfs_size", "disk"):
            return _size_bytes(value) > _size_bytes(old)
        if key in ("cpus", "pids"):
            return bool(value > old)
        if key == "ttl":
            return validate.duration(value) > validate.duration(old)
        return False

    return [key for key, value in project.items() if looser(key, value)]


_WORDS = {"read_only": "read-only root", "cap_add": "capabilities", "pids": "process limit",
          "tmpfs_size": "tmpfs size"}


def describe(key: str, value: Any) -> str:
    """KEY=VALUE in plain words for a message: 'network on', 'memory 4g', 'ports 8080:80'."""
    word = _WORDS.get(key, key.replace("_", " "))
    if isinstance(value, bool):
        return f"{word} {'on' if value else 'off'}"
    if value is None:
        return f"{word} none"
    if isinstance(value, list):
        return f"{word} {' '.join(str(v) for v in value) or 'none'}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{word} {value}"


def user_config_path() -> str:
    """~/.config/sandbox-cli/config.yaml (or under $XDG_CONFIG_HOME)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "sandbox-cli", "config.yaml")


def find_project_file(start: str | None = None) -> str | None:
    """sandbox.yaml in START (default: the current directory) or the nearest parent."""
    here = os.path.abspath(start or os.getcwd())
    while True:
        candidate = os.path.join(here, PROJECT_FILE)
        if os.path.lexists(candidate):  # whatever it is: read_file refuses all but a file
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


CONFIG_MAX_BYTES = 1 << 20  # a settings file is a few lines; bounds what a hostile one costs
_NONBLOCKING = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def _read_text(path: str, *, follow: bool, ours_only: bool) -> str | None:
    """The text of the regular file PATH, at most CONFIG_MAX_BYTES, opened without blocking
    (a FIFO or a device never hangs us) and checked on the open descriptor.
    Without FOLLOW a link at PATH is refused. With OURS_ONLY, None when the file is not
    owned by us or root."""
    try:
        if ours_only and os.lstat(path).st_uid not in (os.getuid(), 0):
            return None  # another user's entry (a link, a FIFO...): ignored, not an error
        fd = os.open(path, _NONBLOCKING | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path}: is a symbolic link; a project file must be a "
                              "regular file") from None
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    info = os.fstat(fd)
    if ours_only and info.st_uid not in (os.getuid(), 0):  # swapped since the lstat
        os.close(fd)
        return None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > CONFIG_MAX_BYTES:
            raise ConfigError(f"{path}: larger than {CONFIG_MAX_BYTES >> 20} MiB; "
                              "not a settings file")
        try:
            # At most the size it had when opened: /proc and /sys files (such as /proc/kmsg,
            # whose reads consume the kernel's log) say 0 and are never read at all.
            data = handle.read(info.st_size) if info.st_size else b""
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def read_file(path: str, *, ours_only: bool = False) -> dict[str, Any] | None:
    """Parse and check one YAML config file; errors name the file and the line.

    OURS_ONLY marks a project file: it must not be a link, and None comes back when it is not
    owned by us or root (checked on the open file, so a swap cannot slip another user's file
    in). A user file may be a link (dotfile managers make them), to a regular file only.
    """
    text = _read_text(path, follow=not ours_only, ours_only=ours_only)
    if text is None:
        return None
    try:
        return _parse(path, text)
    except RecursionError:  # PyYAML's composer and constructor recurse once per level
        raise ConfigError(f"{path}: nested too deeply to be a settings file") from None


def _parse(path: str, text: str) -> dict[str, Any]:
    import yaml  # only when a config file exists: keeps it off the hot path

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected a mapping of settings")
    settings: dict[str, Any] = {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        key = str(key_node.value).replace("-", "_")
        if key not in _CONVERTERS:
            known = ", ".join(sorted(_CONVERTERS))
            raise ConfigError(f"{path}:{line}: unknown setting {key_node.value!r} (known: {known})")
        value = yaml.SafeLoader(yaml.serialize(value_node)).get_single_data()
        try:
            settings[key] = _CONVERTERS[key](value)
        except (ValueError, TypeError, InvalidInput) as exc:
            detail = exc.message if isinstance(exc, InvalidInput) else str(exc)
            raise ConfigError(f"{path}:{line}: {key_node.value}: {detail}") from None
    return settings


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from SANDBOX_IMAGE, SANDBOX_NETWORK, SANDBOX_TTL, ... (env itself excluded)."""
    settings: dict[str, Any] = {}
    for key, convert in _CONVERTERS.items():
        if key == "env":
            continue
        raw = environ.get(f"SANDBOX_{key.upper()}")
        if raw is None or raw == "":
            continue
        try:
            settings[key] = convert(raw)
        except (ValueError, TypeError, InvalidInput) as exc:
            detail = exc.message if isinstance(exc, InvalidInput) else str(exc)
            raise InvalidInput(f"SANDBOX_{key.upper()}={raw!r}: {detail}") from None
    return settings


class ResolvedOptions(NamedTuple):
    """The options to start with, and which files contributed (for messages and doctor)."""

    options: StartOptions
    files: list[str]
    loosened_by_project: list[str]
    ignored: list[str]  # files not owned by us (or root)


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None,
            cwd: str | None = None) -> ResolvedOptions:
    """Merge defaults, user file, project file, environment and FLAGS (None = not given).

    `env` merges key by key across layers; every other setting is replaced by a later layer.
    """
    environ = os.environ if environ is None else environ
    options = StartOptions()
    files: list[str] = []
    loosened: list[str] = []
    ignored: list[str] = []
    user_file = user_config_path()
    if os.path.lexists(user_file):
        options = _apply(options, read_file(user_file) or {})
        files.append(user_file)
    project_file = find_project_file(cwd)
    project: dict[str, Any] = {}
    if project_file and project_file != user_file:
        found = read_file(project_file, ours_only=True)
        if found is None:  # e.g. /tmp/sandbox.yaml planted by another user above our cwd
            ignored.append(project_file)
        else:
            project = found
            loosened = loosenings(options, project)
            options = _apply(options, project)
            files.append(project_file)
    options = _apply(options, from_environment(environ))
    options = _apply(options, {k: _CONVERTERS[k](v) for k, v in flags.items() if v is not None})
    loosened = [k for k in loosened if getattr(options, k) == project[k]]  # still in force
    return ResolvedOptions(options, files, loosened, ignored)


def _apply(options: StartOptions, layer: Mapping[str, Any]) -> StartOptions:
    """OPTIONS with LAYER on top: `env` merges key by key, the rest replaces."""
    for key, value in layer.items():
        if key == "env":
            options = options._replace(env={**options.env, **value})
        else:
            options = options._replace(**{key: value})
    return options

