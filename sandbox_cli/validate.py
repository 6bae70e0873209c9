"""Checks on everything a user (or an LLM pipeline) hands us, before any docker call or path join.

Each function returns a normalised value or raises InvalidInput with a message that names the
offending value and says what is expected.
"""

from __future__ import annotations

import os
import re

from .errors import InvalidInput

ENV_VALUE_MAX = 60 * 1024  # docker reads --env-file lines of at most 64 KiB
NAME_MAX = 63  # the name doubles as the container's hostname, which is capped at 63
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]+\Z")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Docker's reference grammar, slightly simplified: [host[:port]/]path[:tag][@digest].
_IMAGE_RE = re.compile(
    r"(?:[A-Za-z0-9][A-Za-z0-9.-]*(?::\d+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?\Z"
)
_MEMORY_RE = re.compile(r"\d+(?:\.\d+)?[bkmgBKMG]?\Z")
_RUNTIME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_PROTOCOLS = ("tcp", "udp", "sctp")
MAX_TTL_SECONDS = 365 * 86400


def name(value: str) -> str:
    """A sandbox name: docker's container-name rule, no leading '-', at most 63 characters."""
    if not value or len(value) > NAME_MAX or not _NAME_RE.match(value):
        raise InvalidInput(
            f"invalid sandbox name {value!r}: use 2-{NAME_MAX} letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def env_pair(value: str, host_env: dict[str, str]) -> tuple[str, str]:
    """KEY=VALUE, or KEY alone to pass the host's value of KEY explicitly."""
    key, sep, val = value.partition("=")
    if not _ENV_KEY_RE.match(key):
        raise InvalidInput(f"invalid environment variable {value!r}: expected KEY=VALUE")
    if "\0" in val or "\n" in val or "\r" in val:
        raise InvalidInput(
            f"invalid environment variable {key!r}: values cannot hold NUL or line breaks"
        )
    try:
        size = len(val.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"invalid environment variable {key!r}: not UTF-8") from None
    if size > ENV_VALUE_MAX:
        raise InvalidInput(f"environment variable {key!r} is too long: at most 60 KiB "
                           "(pass large data as a file with `sandbox write`)")
    if not sep:
        if key not in host_env:
            raise InvalidInput(
                f"environment variable {key!r} is not set on the host; use {key}=VALUE"
            )
        val = host_env[key]
    return key, val


def duration(value: str) -> int:
    """A positive duration: 90, 30s, 10m, 2h, 1d or a sum such as 1h30m; returns whole seconds."""
    text = value.strip().lower()
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART_RE.match(text, pos)
        if not match:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text) or total <= 0:
        raise InvalidInput(f"invalid duration {value!r}: expected e.g. 30s, 10m, 2h or 1h30m")
    seconds = max(1, round(total))
    if seconds > MAX_TTL_SECONDS:
        raise InvalidInput(f"invalid duration {value!r}: at most 365d (use --keep to never expire)")
    return seconds


def timeout(value: float) -> float:
    """An exec timeout in seconds: positive and finite."""
    if not (0 < value < 10**9):
        raise InvalidInput(f"invalid timeout {value!r}: expected a positive number of seconds")
    return value


def _port_number(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidInput(f"invalid port {text!r} in {spec!r}: expected 1-65535")
    return int(text)


def port(spec: str, default_ip: str = "127.0.0.1") -> str:
    """[IP:][HOST:]CONTAINER[/PROTO] -> 'IP:HOST:CONTAINER/PROTO', binding 127.0.0.1 by default.

    HOST may be empty ('127.0.0.1::80') to let docker pick a free host port.
    """
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in _PROTOCOLS:
        raise InvalidInput(f"invalid port {spec!r}: protocol must be tcp, udp or sctp")
    ip = default_ip
    if body.startswith("["):  # [IPv6]:HOST:CONTAINER
        end = body.find("]")
        if end < 0 or body[end + 1 : end + 2] != ":":
            raise InvalidInput(f"invalid port {spec!r}: expected [IPv6]:HOST:CONTAINER")
        ip, body = body[1:end], body[end + 2 :]
        parts = body.split(":")
        if len(parts) != 2:
            raise InvalidInput(f"invalid port {spec!r}: expected [IPv6]:HOST:CONTAINER")
        host, container = parts
    else:
        parts = body.split(":")
        if len(parts) == 1:
            host, container = "", parts[0]
        elif len(parts) == 2:
            host, container = parts
        elif len(parts) == 3:
            ip, host, container = parts
        else:
            raise InvalidInput(f"invalid port {spec!r}: expected [IP:]HOST:CONTAINER[/PROTO]")
    import ipaddress  # here, not at the top: every command validates, few take ports

    try:
        parsed_ip = ipaddress.ip_address(ip)
    except ValueError:
        raise InvalidInput(f"invalid port {spec!r}: {ip!r} is not an IP address") from None
    host_text = str(_port_number(host, spec)) if host else ""
    container_text = str(_port_number(container, spec))
    ip_text = f"[{parsed_ip}]" if parsed_ip.version == 6 else str(parsed_ip)
    return f"{ip_text}:{host_text}:{container_text}/{proto}"


def image(value: str) -> str:
    """A docker image reference such as python:alpine or ghcr.io/owner/name:tag."""
    if not value or len(value) > 255 or not _IMAGE_RE.match(value):
        raise InvalidInput(f"invalid image reference {value!r}")
    return value


MEMORY_MIN_BYTES = 6 << 20  # docker refuses a smaller --memory ("Minimum memory limit ... 6MB")
TMPFS_MIN_BYTES = 4 << 10  # one page: the kernel rounds a tmpfs size up to whole pages
_SIZE_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size_bytes(value: str) -> float:
    """Bytes in a docker size such as 512m, 2g or 1048576 (a bare number is bytes)."""
    text = value.lower()
    if text[-1:] in _SIZE_UNITS:
        return float(text[:-1]) * _SIZE_UNITS[text[-1]]
    return float(text)


def _size(value: str, what: str, minimum: int, minimum_text: str) -> str:
    if not _MEMORY_RE.match(value) or size_bytes(value) <= 0:
        raise InvalidInput(f"invalid {what} {value!r}: expected e.g. 512m or 2g")
    if size_bytes(value) < minimum:
        raise InvalidInput(f"{what} {value!r} is below the minimum of {minimum_text} "
                           "(a bare number is bytes: write e.g. 512m or 2g)")
    return value.lower()


def memory(value: str) -> str:
    """A docker memory size such as 512m or 2g, at least docker's minimum of 6 MiB."""
    return _size(value, "memory size", MEMORY_MIN_BYTES, "6m")


def tmpfs_size(value: str) -> str:
    """The size of the tmpfs /tmp: a size such as 64m, at least one page (4k)."""
    return _size(value, "tmpfs size", TMPFS_MIN_BYTES, "4k")


UNLIMITED = "unlimited"
DISK_MIN_BYTES = 16 << 20  # a smaller ext4 image has no room for its own metadata


def disk(value: str) -> str:
    """A cap on /app's bytes and files: a size of at least 16m, or `unlimited`."""
    if value.strip().lower() == UNLIMITED:
        return UNLIMITED
    return _size(value, "disk size", DISK_MIN_BYTES, "16m")


def cpus(value: float) -> float:
    """A positive CPU count (fractions allowed)."""
    if not (0 < value <= 1024):
        raise InvalidInput(f"invalid CPU count {value!r}: expected a positive number")
    return value


def _local_engine() -> bool:
    """True when the engine a new sandbox goes to (the environment's: DOCKER_HOST, context,
    Podman's CONTAINER_HOST) runs on this machine, so that this machine's CPU count is the
    engine's."""
    from . import engine

    return engine.detect().local


def host_cpus(value: float) -> float:
    """VALUE, refused when above the CPUs this machine has (docker refuses it too, later)."""
    count = os.cpu_count() or 0
    if count and value > count and _local_engine():
        raise InvalidInput(f"CPU count {value:g} is more than the {count} CPUs of this host")
    return value


def distinct_ports(specs: list[str]) -> list[str]:
    """SPECS (normalised by port()), refused when two publish the same host port and protocol
    on overlapping addresses (docker fails late, with a half-made container)."""
    seen: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for spec in specs:
        body, _, proto = spec.rpartition("/")
        ip, host, _ = body.rsplit(":", 2)
        if not host:  # docker picks a free port: never a clash
            continue
        for other_ip, other in seen.get((host, proto), []):
            if ip == other_ip or _any_address(ip) or _any_address(other_ip):
                raise InvalidInput(f"host port {host}/{proto} is published twice "
                                   f"({other} and {spec})")
        seen.setdefault((host, proto), []).append((ip, spec))
    return specs


def _any_address(ip: str) -> bool:
    return ip in ("0.0.0.0", "[::]")


def pids(value: int) -> int:
    """A positive process limit."""
    if not (8 <= value <= 1_000_000):
        raise InvalidInput(f"invalid process limit {value!r}: expected 8 or more")
    return value


def runtime(value: str) -> str:
    """An OCI runtime name known to the daemon, e.g. runsc."""
    if not _RUNTIME_RE.match(value):
        raise InvalidInput(f"invalid runtime {value!r}")
    return value


def capability(value: str) -> str:
    """A Linux capability name such as NET_BIND_SERVICE (CAP_ prefix optional), upper-cased."""
    if not re.fullmatch(r"(?:CAP_)?[A-Za-z_]{2,32}", value):
        raise InvalidInput(f"invalid capability {value!r}: expected e.g. NET_BIND_SERVICE")
    return value.upper()


def sandbox_path(value: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """A path inside the sandbox folder, relative to /app (or absolute under /app).

    Returns its components. '..', other absolute paths, NUL bytes and empty paths are refused
    here, before any filesystem call.
    """
    if "\0" in value:
        raise InvalidInput("invalid path: contains a NUL byte")
    text = value
    if text == "/app" or text.startswith("/app/"):
        text = text[len("/app") :]
    elif text.startswith("/"):
        raise InvalidInput(f"invalid path {value!r}: must be relative to /app (or under /app)")
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if ".." in parts:
        raise InvalidInput(f"invalid path {value!r}: '..' is not allowed")
    if not parts and not allow_root:
        raise InvalidInput(f"invalid path {value!r}: names no file")
    return parts


def container_dir(value: str) -> str:
    """A working directory inside the container: absolute, or relative to /app."""
    if not value or "\0" in value or value.startswith("-"):
        raise InvalidInput(f"invalid directory {value!r}")
    return value if value.startswith("/") else "/app/" + value


def glob(value: str) -> str:
    """A gitignore-style pattern relative to the current directory, that cannot climb out of it."""
    if not value.strip() or "\0" in value or "\n" in value:
        raise InvalidInput(f"invalid pattern {value!r}")
    if value.startswith("/") or value.startswith("!"):
        raise InvalidInput(f"invalid pattern {value!r}: must be relative, without a leading '!'")
    if ".." in value.split("/"):
        raise InvalidInput(f"invalid pattern {value!r}: '..' is not allowed")
    return value
