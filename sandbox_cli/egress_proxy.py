"""The egress proxy of one sandbox: a small HTTP proxy that lets out only what is allowed.

This file is two things. Imported (by `sandbox_cli.egress` and the tests), it offers the pure
allow-list rules: `parse_rule`, `host_allowed`, `address_refusal`. Run as a program (mounted
read-only into the proxy container and started with that image's python3), it is the proxy:

    python3 egress_proxy.py --port 3128 --allow 'pypi.org' --deny-addr 192.0.2.2 \
        --log /log/egress.log --handoff /log/handoff/proxy.sock --ready /log/ready \
        [--lifetime S]

It accepts `CONNECT host:port` (HTTPS and any TLS tunnel) and plain-HTTP requests in absolute
form (`GET http://host/path`) for listed names and ports only, resolves names itself, and
refuses addresses that are loopback, link-local (cloud metadata at 169.254.169.254), unspecified,
multicast, or the engine host's own unless listed literally. Every attempt is logged as one JSON
line to a file rotated at 1 MiB. Memory is bounded: a fixed number of connections, a 16 KiB
request head, one pipe per direction, idle timeouts. Standard library only: it must run on any
image with a python3 (python:alpine, Debian's), and it starts nothing but itself.

It listens on no address of its own. The sandbox has no network (`--network none`); its first
process (egress_handoff.py) makes a socket listening on the sandbox's loopback and sends it
here over the Unix socket --handoff, which this program takes once and then removes: the
proxy accepts the sandbox's connections on the sandbox's own loopback and connects out on the
egress network, and nothing on that network can reach it.

Start-up is on the critical path of `sandbox start --allow-host`, which waits until the proxy
holds the sandbox's port and shares two cores with the sandbox's own start: the program takes
the port before it imports anything it does not need for that (asyncio, json: about 100 ms of
a loaded machine's CPU), and imports those once the first connection has come (the kernel
queues it meanwhile).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import socket
    from collections.abc import Iterable, Sequence

DEFAULT_PORTS = (80, 443)
PROXY_PORT = 3128
MAX_HEAD = 16 * 1024  # request line and headers
PIPE_CHUNK = 1 << 20  # pipe size (the unprivileged maximum): what one direction holds at most
MAX_CONNECTIONS = 64
# Kernel buffers per socket and direction, fixed (the kernel doubles it for its own books):
# autotuned, a reader that never reads lets each upstream connection's receive queue grow to
# tcp_rmem's maximum, outside the container's memory limit on cgroup v1; 64 such connections
# held 1.35 GB. Fixed, the proxy's connections hold at most 64 x 2 x 2 x 512 KiB. Far above
# what a local link needs in flight.
SOCKET_BUFFER = 256 * 1024
HEAD_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
CLOSE_GRACE = 5.0
LOG_MAX_BYTES = 1 << 20
ALLOW_HINT = "--allow-host"

_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed in header values
_LABEL_RE = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")

if __name__ == "__main__" and sys.version_info < (3, 10):  # before anything 3.10 needs
    _why = f"egress proxy: needs Python 3.10 or newer; the image has {sys.version.split()[0]}"
    with contextlib.suppress(OSError, ValueError, IndexError), \
            open(sys.argv[sys.argv.index("--errors") + 1], "x", encoding="utf-8") as _out:
        _out.write(_why + "\n")  # for `sandbox start` to print
    raise SystemExit(_why)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Rule(NamedTuple):
    """One allow-list entry: an exact name, a `*.domain` wildcard, or an IP literal."""

    host: str  # lower case; for a wildcard the domain without `*.`; for an IP its normal form
    wildcard: bool
    ports: tuple[int, ...]  # DEFAULT_PORTS when none was given
    address: IPAddress | None  # set for IP literals

    def text(self) -> str:
        """The rule as a user would write it (normalised)."""
        host = f"*.{self.host}" if self.wildcard else self.host
        if self.address is not None and self.address.version == 6:
            host = f"[{host}]"
        return host if self.ports == DEFAULT_PORTS else f"{host}:{self.ports[0]}"


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def _hostname(text: str) -> str | None:
    """TEXT as a normalised DNS name, or None when it is not one."""
    name = text.lower().removesuffix(".")
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        return None
    if labels[-1].isdigit():  # 10.1 or 127.1: numbers some resolvers read as IPv4
        return None
    return name


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid port {text!r} (1-65535)")
    return int(text)


def split_host_port(text: str) -> tuple[str, str | None]:
    """('host', 'port' or None) of HOST[:PORT], [V6][:PORT] or a bare IPv6 address."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"invalid host {text!r}: missing ']'")
        rest = text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid host {text!r}")
        return text[1:end], rest[1:] if rest else None
    if text.count(":") > 1:  # a bare IPv6 literal: no port
        return text, None
    host, sep, port = text.partition(":")
    return host, port if sep else None


def parse_rule(text: str) -> Rule:
    """An allow-list entry HOST[:PORT]: `pypi.org`, `*.example.com:8443`, `10.0.0.5:80`.

    No port means 80 and 443. `*.example.com` matches names below example.com, not
    example.com itself. Raises ValueError with a reason.
    """
    raw = text.strip()
    if not raw or any(c.isspace() for c in raw) or len(raw) > 300:
        raise ValueError(f"invalid host {text!r}")
    host, port_text = split_host_port(raw)
    ports = (_port(port_text),) if port_text is not None else DEFAULT_PORTS
    address = _ip(host)
    if address is not None:
        return Rule(str(address), False, ports, address)
    wildcard = host.startswith("*.")
    name = _hostname(host[2:] if wildcard else host)
    if name is None or "*" in host[2 if wildcard else 0:]:
        raise ValueError(f"invalid host {text!r}: expected a name, *.domain or an IP address")
    if wildcard and "." not in name:
        raise ValueError(f"invalid host {text!r}: a wildcard needs a domain (*.example.com)")
    return Rule(name, wildcard, ports, None)


def parse_rules(texts: Iterable[str]) -> list[Rule]:
    """parse_rule of each, duplicates dropped, order kept."""
    seen: dict[Rule, None] = {}
    for text in texts:
        seen.setdefault(parse_rule(text), None)
    return list(seen)


def host_allowed(rules: Sequence[Rule], host: str, port: int) -> bool:
    """True when HOST:PORT (a name or an IP literal from a request) is on the allow-list.

    An IP literal matches only a rule listing that address; a name matches an exact rule or a
    wildcard of a parent domain, never an IP rule.
    """
    address = _ip(host)
    if address is not None:
        return any(r.address == address and port in r.ports for r in rules)
    name = _hostname(host)
    if name is None:
        return False
    for rule in rules:
        if port not in rule.ports or rule.address is not None:
            continue
        if rule.wildcard and name.endswith("." + rule.host):
            return True
        if not rule.wildcard and name == rule.host:
            return True
    return False


def listed_addresses(rules: Sequence[Rule]) -> set[IPAddress]:
    """The addresses the allow-list names literally (these are never refused as special)."""
    return {r.address for r in rules if r.address is not None}


def address_refusal(address: IPAddress, listed: set[IPAddress],
                    denied: set[IPAddress]) -> str | None:
    """Why ADDRESS (what a name resolved to) may not be reached, or None when it may.

    Loopback, link-local (the cloud metadata service lives at 169.254.169.254), unspecified,
    multicast and the engine host's own addresses (DENIED) are refused unless LISTED literally.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in listed:
        return None
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local address (cloud metadata)" if str(address) == "169.254.169.254" \
            else "link-local address"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "special address"
    if address in denied:
        return "an address of the engine host"
    return None


def refusal_body(host: str, port: int, reason: str) -> str:
    """The text of a 403: the host, why, and how to allow it."""
    shown = f"[{host}]" if ":" in host else host
    spec = shown if port in DEFAULT_PORTS else f"{shown}:{port}"
    return (f"sandbox egress: {shown}:{port} refused: {reason}.\n"
            f"To allow it, start the sandbox with {ALLOW_HINT} {spec} "
            f"(see `sandbox egress NAME`).\n")


# --- the log ---------------------------------------------------------------------------------

class AttemptLog:
    """JSON lines, one per attempt, in a file that is moved to FILE.1 once it passes MAX_BYTES:
    at most about twice MAX_BYTES on disk however hard the sandbox hammers the proxy."""

    def __init__(self, path: str | None, max_bytes: int = LOG_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self.handle: Any = None

    def _open(self) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        self.handle = os.fdopen(fd, "a", encoding="utf-8")
        self.size = os.fstat(fd).st_size

    def write(self, **entry: Any) -> None:
        """Append one attempt (the time is added); never raises."""
        if self.path is None:
            return
        import json  # here: not on the way to listening (see the module's docstring)

        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry},
                          ensure_ascii=True) + "\n"
        try:
            if self.handle is None:
                self._open()
            if self.size + len(line) > self.max_bytes:
                self.handle.close()
                os.replace(self.path, self.path + ".1")
                self._open()
            self.handle.write(line)
            self.handle.flush()
            self.size += len(line)
        except OSError:
            self.handle = None  # a full disk must not stop the proxy


# --- the proxy ------------------------------------------------------------------------------

class Settings(NamedTuple):
    """What the proxy program was told on its command line."""

    rules: list[Rule]
    denied: set[IPAddress]
    handoff: str  # the Unix socket the sandbox's first process sends its port over
    port: int
    log: AttemptLog
    max_connections: int
    lifetime: float | None
    ready: str | None
    started: float  # time.monotonic() once the port is ours: the lifetime counts from there


def _own_gateways() -> set[IPAddress]:
    """The gateways in our routing table (bridge addresses of the engine host)."""
    found: set[IPAddress] = set()
    try:
        with open("/proc/net/route", encoding="ascii") as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                if len(fields) > 2 and fields[2] != "00000000":
                    found.add(ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1]))
    except (OSError, ValueError):
        pass
    return found


def _head_error(code: int, text: str, body: str = "") -> bytes:
    body = body or f"sandbox egress: {text}\n"
    data = body.encode()
    return (f"HTTP/1.1 {code} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data


class _Refused(Exception):
    def __init__(self, code: int, text: str, host: str = "", port: int = 0,
                 reason: str = "") -> None:
        super().__init__(reason or text)
        self.code, self.text, self.host, self.port, self.reason = code, text, host, port, reason


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(method, target, version, headers) of a request head, or _Refused(400)."""
    try:
        text = head.decode("latin-1")
        lines = text.split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _Refused(400, "Bad Request") from None
    if _CONTROL_RE.search(text.replace("\r\n", "")):  # a bare CR or LF, ESC, NUL, DEL...
        raise _Refused(400, "Bad Request")
    if not version.startswith("HTTP/1.") or not method.isalpha():
        raise _Refused(400, "Bad Request")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip():
            raise _Refused(400, "Bad Request")
        headers.append((key, value.strip()))
    return method.upper(), target, version, headers


def _target(method: str, target: str) -> tuple[str, int, str]:
    """(host, port, origin-form path) of the request's target, or _Refused."""
    if method == "CONNECT":
        host, port_text = split_host_port(target)
        if port_text is None:
            raise _Refused(400, "Bad Request")
        try:
            return host.lower(), _port(port_text), ""
        except ValueError:
            raise _Refused(400, "Bad Request") from None
    if not target.lower().startswith("http://"):
        # origin form (a request to the proxy itself) or https:// without CONNECT
        raise _Refused(400, "Bad Request", reason="only CONNECT and absolute http:// URLs")
    rest = target[7:]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    authority, path = rest[:cut], rest[cut:] or "/"
    if "@" in authority:
        raise _Refused(400, "Bad Request", reason="credentials in URL")
    try:
        host, port_text = split_host_port(authority)
        port = _port(port_text) if port_text is not None else 80
    except ValueError:
        raise _Refused(400, "Bad Request") from None
    if path.startswith("#"):
        path = "/"
    elif not path.startswith("/"):
        path = "/" + path
    return host.lower(), port, path.split("#", 1)[0]


async def _resolve(settings: Settings, host: str, port: int) -> list[tuple[Any, ...]]:
    """Addresses to try for HOST:PORT after the checks, or _Refused(403/502)."""
    import asyncio
    import socket

    listed = listed_addresses(settings.rules)
    literal = _ip(host)
    if literal is not None:
        infos = [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET,
                  (str(literal), port))]
    else:
        loop = asyncio.get_running_loop()
        try:
            found = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            raise _Refused(502, "Bad Gateway", host, port, "name does not resolve") from None
        infos = [(family, (str(addr[0]), int(addr[1]))) for family, _, _, _, addr in found]
    allowed, reasons = [], []
    for family, addr in infos:
        reason = address_refusal(ipaddress.ip_address(addr[0].split("%")[0]), listed,
                                 settings.denied)
        if reason is None:
            allowed.append((family, addr))
        else:
            reasons.append(f"{addr[0]} is a {reason}" if not reason.startswith("an ")
                           else f"{addr[0]} is {reason}")
    if not allowed:
        raise _Refused(403, "Forbidden", host, port, "; ".join(dict.fromkeys(reasons))
                       or "no address")
    return allowed


class _Activity:
    """When a connection last moved a byte, in either direction: it is idle only when both
    directions are (a long download sends nothing upstream for minutes)."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.last = loop.time()

    def touch(self) -> None:
        self.last = self.loop.time()


async def _ready(loop: Any, sock: Any, activity: _Activity, writing: bool) -> bool:
    """Wait until SOCK can be read (or written); False once the connection has been idle for
    IDLE_TIMEOUT."""
    import asyncio

    fd = sock.fileno()
    while True:
        future = loop.create_future()

        def wake(future: Any = future) -> None:
            if not future.done():
                future.set_result(None)

        (loop.add_writer if writing else loop.add_reader)(fd, wake)
        try:
            remaining = activity.last + IDLE_TIMEOUT - loop.time()
            await asyncio.wait_for(future, max(remaining, 0.01))
            return True
        except asyncio.TimeoutError:
            if loop.time() - activity.last >= IDLE_TIMEOUT:
                return False
        finally:
            (loop.remove_writer if writing else loop.remove_reader)(fd)


async def _pump(loop: Any, src: Any, dst: Any, activity: _Activity) -> None:
    """Move bytes from SRC to DST until EOF, through a pipe with splice(2): they never enter
    this process (which is what keeps the proxy near wire speed). A full DST stops the reading
    of SRC, so each direction holds at most one pipe of data. Without os.splice (Python before
    3.10), through a bounded buffer."""
    if not hasattr(os, "splice"):
        await _pump_copy(loop, src, dst, activity)
        return
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    rpipe, wpipe = os.pipe()
    with contextlib.suppress(OSError, ImportError):
        import fcntl

        fcntl.fcntl(wpipe, 1031, PIPE_CHUNK)  # F_SETPIPE_SZ: fewer, larger moves
    try:
        while True:
            try:
                count = os.splice(src.fileno(), wpipe, PIPE_CHUNK, flags=flags)
            except BlockingIOError:
                if not await _ready(loop, src, activity, writing=False):
                    return
                continue
            if count == 0:
                break
            activity.touch()
            while count:
                try:
                    count -= os.splice(rpipe, dst.fileno(), count, flags=flags)
                except BlockingIOError:
                    if not await _ready(loop, dst, activity, writing=True):
                        return
            activity.touch()
        _shutdown_write(dst)
    finally:
        os.close(rpipe)
        os.close(wpipe)


async def _pump_copy(loop: Any, src: Any, dst: Any, activity: _Activity) -> None:
    import asyncio

    while True:
        data = await asyncio.wait_for(loop.sock_recv(src, PIPE_CHUNK), IDLE_TIMEOUT)
        if not data:
            break
        activity.touch()
        await asyncio.wait_for(loop.sock_sendall(dst, data), IDLE_TIMEOUT)
    _shutdown_write(dst)


def _no_delay(*socks: Any) -> None:
    """TCP_NODELAY on both sides: what is relayed goes on as it comes. With Nagle's algorithm a
    small write (a record of a TLS handshake, a request) waits for the ACK of the previous
    segment, which the peer's delayed ACK may hold back for up to 40 ms: every round trip of
    a tunnelled protocol could pay that once more."""
    import socket

    for sock in socks:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # see SOCKET_BUFFER
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def _shutdown_write(sock: Any) -> None:
    import socket

    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)  # half-close: the answer may still come back


async def _relay(loop: Any, client: Any, upstream: Any) -> None:
    """Both directions until both end (or the connection idles out, or one side fails)."""
    import asyncio

    activity = _Activity(loop)
    up = asyncio.ensure_future(_pump(loop, client, upstream, activity))
    down = asyncio.ensure_future(_pump(loop, upstream, client, activity))
    tasks = [up, down]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if down.done() and not up.done():
            # The server has closed: the client gets a moment to finish, not an idle timeout
            # (a connection slot is worth more than a client that never hangs up).
            await asyncio.wait([up], timeout=CLOSE_GRACE)
        elif not down.done() and up.exception() is None:
            await down  # the request is complete (half-close): the answer still comes
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _connect(loop: Any, addresses: list[tuple[Any, ...]], host: str, port: int) -> Any:
    """A socket connected to the first of ADDRESSES that answers."""
    import asyncio
    import socket

    last = "unreachable"
    for family, addr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), CONNECT_TIMEOUT)
            return sock
        except asyncio.TimeoutError:
            last = "connection timed out"
        except OSError as exc:
            last = exc.strerror or "connection failed"
        sock.close()
    raise _Refused(502, "Bad Gateway", host, port, f"cannot connect: {last}")


def _forward_head(method: str, path: str, version: str, headers: list[tuple[str, str]],
                  host: str, port: int) -> bytes:
    """The request as the origin server gets it: origin-form path, no proxy headers, one
    request per connection (so keep-alive cannot carry a second request elsewhere)."""
    drop = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}
    lines = [f"{method} {path} {version}"]
    has_host = False
    for key, value in headers:
        low = key.lower()
        if low in drop:
            continue
        if low == "host":
            has_host = True
        lines.append(f"{key}: {value}")
    if not has_host:
        shown = f"[{host}]" if ":" in host else host
        lines.append(f"Host: {shown}" + ("" if port == 80 else f":{port}"))
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(loop: Any, sock: Any) -> tuple[bytes, bytes]:
    """(request head, bytes after it), at most MAX_HEAD of head."""
    buffer = bytearray()
    while True:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise ConnectionError("closed before the request head ended")
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            if end > MAX_HEAD:
                break
            return bytes(buffer[:end]), bytes(buffer[end + 4:])
        if len(buffer) > MAX_HEAD:
            break
    raise _Refused(431, "Request Header Fields Too Large")


def _error_response(refused: _Refused) -> bytes:
    body = ""
    if refused.code == 403:
        body = refusal_body(refused.host, refused.port, refused.reason)
    elif refused.code == 400 and refused.reason:
        body = f"sandbox egress: {refused.reason}\n"
    elif refused.code == 502:
        body = f"sandbox egress: {refused.host}:{refused.port}: {refused.reason}\n"
    return _head_error(refused.code, refused.text, body)


async def _serve(settings: Settings, loop: Any, client: Any) -> None:
    """One connection: read the head, check it, connect, relay; or answer why not."""
    import asyncio

    method, upstream = "", None
    try:
        try:
            head, rest = await asyncio.wait_for(_read_head(loop, client), HEAD_TIMEOUT)
            method, target, version, headers = _parse_head(head)
            host, port, path = _target(method, target)
            if not host_allowed(settings.rules, host, port):
                why = ("IP addresses must be listed literally" if _ip(host) is not None
                       else "not on the allow-list")
                raise _Refused(403, "Forbidden", host, port, why)
            addresses = await _resolve(settings, host, port)
            upstream = await _connect(loop, addresses, host, port)
        except _Refused as refused:
            if refused.host:
                settings.log.write(host=refused.host, port=refused.port, verdict="refused",
                                   method=method, reason=refused.reason)
            await asyncio.wait_for(loop.sock_sendall(client, _error_response(refused)),
                                   HEAD_TIMEOUT)
            return
        settings.log.write(host=host, port=port, verdict="allowed", method=method)
        if method == "CONNECT":
            await loop.sock_sendall(client, b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            await loop.sock_sendall(upstream,
                                    _forward_head(method, path, version, headers, host, port))
        if rest:
            await loop.sock_sendall(upstream, rest)
        _no_delay(client, upstream)
        await _relay(loop, client, upstream)
    except (OSError, ConnectionError, asyncio.TimeoutError):
        pass
    finally:
        client.close()
        if upstream is not None:
            upstream.close()


async def _main(settings: Settings, listener: socket.socket,
                first: socket.socket | None) -> None:
    """Serve FIRST (the connection that woke us), then every connection LISTENER accepts,
    until the lifetime ends."""
    import asyncio

    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    tasks: set[Any] = set()

    def launch(client: socket.socket) -> None:
        client.setblocking(False)
        if len(tasks) >= settings.max_connections:
            # Bounded: refuse at once rather than queue (a flood costs a few bytes each).
            with contextlib.suppress(OSError):
                client.send(_head_error(503, "Service Unavailable",
                                        "sandbox egress: too many connections\n"))
            client.close()
            return
        task = asyncio.ensure_future(_serve(settings, loop, client))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if first is not None:
        launch(first)
    while True:
        timeout = _remaining(settings)
        if timeout is not None and timeout <= 0:
            return
        try:
            client, _ = await asyncio.wait_for(loop.sock_accept(listener), timeout)
        except asyncio.TimeoutError:
            return
        except OSError:  # out of descriptors, say: shed load, never die
            await asyncio.sleep(0.05)
            continue
        launch(client)


def _remaining(settings: Settings) -> float | None:
    """Seconds of the proxy's lifetime left (None: no end)."""
    if settings.lifetime is None:
        return None
    return settings.started + settings.lifetime - time.monotonic()


HANDOFF_TIMEOUT = 600.0  # seconds for the sandbox to start (its image may be pulled first)


def _take_port(path: str, port: int, timeout: float = HANDOFF_TIMEOUT) -> socket.socket:
    """The sandbox's listening socket, sent by its first process over a Unix socket made at
    PATH, which is taken once and removed at once: nothing else can ever reach us that way
    (the sandbox's own code runs only after this). The socket is checked to be what the
    handoff makes, a TCP socket listening on 127.0.0.1:PORT."""
    import socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        os.chmod(path, 0o666)  # the sandbox's first process runs as root without capabilities
        server.listen(1)
        server.settimeout(timeout)
        try:
            conn = server.accept()[0]
        except TimeoutError:
            raise SystemExit(f"egress proxy: the sandbox did not send its port within "
                             f"{timeout:g}s") from None
    finally:
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    with conn:
        conn.settimeout(10)
        _, ancillary, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(4))
        fds = [int.from_bytes(data[i:i + 4], sys.byteorder)
               for level, kind, data in ancillary
               if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for i in range(0, len(data) - len(data) % 4, 4)]
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            raise SystemExit("egress proxy: the sandbox sent no socket")
        listener = socket.socket(fileno=fds[0])
        try:
            good = (listener.family == socket.AF_INET and listener.type == socket.SOCK_STREAM
                    and listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    # no SO_REUSEPORT: no other socket can ever share the port
                    and not listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
                    and listener.getsockname() == ("127.0.0.1", port))
        except OSError:
            good = False
        if not good:
            listener.close()
            raise SystemExit("egress proxy: the sandbox sent a socket that is not its port")
        conn.sendall(b"k")
    return listener


_REPEATED = ("--allow", "--deny-addr")
_SINGLE = ("--port", "--log", "--max-connections", "--lifetime", "--ready", "--handoff",
           "--errors")


def _flags(argv: Sequence[str]) -> dict[str, list[str]]:
    """`--flag value` pairs (argparse costs more to import than this whole program's start)."""
    values: dict[str, list[str]] = {}
    items = iter(argv)
    for flag in items:
        if flag not in _REPEATED + _SINGLE:
            raise SystemExit(f"egress proxy: unknown argument {flag!r}")
        value = next(items, None)
        if value is None:
            raise SystemExit(f"egress proxy: {flag} needs a value")
        values.setdefault(flag, []).append(value)
    if "--handoff" not in values:
        raise SystemExit("egress proxy: --handoff is required")
    return values


def _arguments(argv: Sequence[str]) -> Settings:
    """The settings of the command line."""
    values = _flags(argv)

    def one(flag: str) -> str | None:
        return values[flag][-1] if flag in values else None

    lifetime = one("--lifetime")
    denied = {a for a in (_ip(text) for text in values.get("--deny-addr", [])) if a is not None}
    return Settings(parse_rules(values.get("--allow", [])), denied,
                    one("--handoff") or "", int(one("--port") or PROXY_PORT),
                    AttemptLog(one("--log")), int(one("--max-connections") or MAX_CONNECTIONS),
                    None if lifetime is None else float(lifetime), one("--ready"),
                    time.monotonic())


def _first_connection(settings: Settings, listener: socket.socket) -> socket.socket | None:
    """Block until a connection comes (None once the lifetime is over first)."""
    while True:
        timeout = _remaining(settings)
        if timeout is not None and timeout <= 0:
            return None
        listener.settimeout(timeout)
        try:
            return listener.accept()[0]
        except TimeoutError:
            return None
        except OSError:  # out of descriptors, say
            time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until its lifetime ends (or forever); exit 0 then."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        settings = _arguments(args)
        settings.denied.update(_own_gateways())  # the egress network is attached at our start
        listener = _take_port(settings.handoff, settings.port)
        # The sandbox's TTL runs from its own start, which the handoff is (for `run`, after
        # its files were copied in): so does ours.
        settings = settings._replace(started=time.monotonic())
        if settings.ready:  # tells `sandbox start` (which waits for it) that requests can come
            os.close(os.open(settings.ready, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
        first = _first_connection(settings, listener)
        if first is None:
            return 0
        import asyncio  # only now: see the module's docstring

        with contextlib.suppress(asyncio.TimeoutError, KeyboardInterrupt):  # lifetime over
            asyncio.run(_main(settings, listener, first))
    except BaseException as exc:
        _record_failure(args, exc)
        raise
    return 0


def _record_failure(argv: Sequence[str], exc: BaseException) -> None:
    """Write why we are exiting to --errors (the container has no docker log: `sandbox
    start` reads it), once and bounded. Best effort: the exit itself says enough otherwise."""
    path = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--errors"), None)
    if not path or isinstance(exc, KeyboardInterrupt) \
            or (isinstance(exc, SystemExit) and not exc.code):
        return
    import traceback

    text = "".join(traceback.format_exception_only(type(exc), exc))[-2000:]
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    sys.exit(main())
