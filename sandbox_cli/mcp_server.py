"""`sandbox mcp`: the Model Context Protocol over stdio, a face over the same core as the CLI
and the Python API (sandbox_cli.api), built on the official `mcp` SDK (the `mcp` extra).

The client is a language model: whatever it asks, the server keeps the CLI's defaults and
refusals and never goes past its own options. Only the images given with --image (else the
configured default); a network only with --network, ports on loopback only; a TTL always,
at most the configured one; at most --max-sandboxes at once; tools act only on sandboxes this
server started; exec output and file reads are capped; copy_to reads below --root only. When
the client goes (stdin EOF, SIGTERM, SIGHUP) the server's sandboxes are purged by a detached
`sandbox purge` (the client kills our process group soon after closing stdin), except those
started with keep=true; a crash strands nothing past their TTL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import validate
from .errors import InvalidInput

if TYPE_CHECKING:
    from .api import Sandbox
    from .config import StartOptions

INSTALL_HINT = "sandbox mcp needs the MCP SDK: pip install 'sandbox-cli[mcp]'"
MAX_OUTPUT = 256 * 1024  # bytes of each exec stream returned to the model
DEFAULT_TIMEOUT = 60.0  # seconds an exec may run unless the model asks for less or more
MAX_TIMEOUT = 600.0
READ_MAX = 8 << 20  # bytes read_file returns at most
WRITE_MAX = 16 << 20  # bytes write_file takes at most
PURGE_WAIT_SECONDS = 1.5  # the SDK's client kills our group 2 s after closing stdin
_LOOPBACK = ("127.0.0.1", "::1")


def require_sdk() -> None:
    """Refuse (one line, exit 2) when the `mcp` extra is not installed."""
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        raise InvalidInput(INSTALL_HINT) from None


@dataclass
class Limits:
    """What the server lets a model ask for (its own options over the configured defaults)."""

    base: StartOptions  # config files, SANDBOX_* variables, the first --image
    images: list[str]
    network: bool
    max_sandboxes: int
    root: str
    allow_hosts: list[str] = field(default_factory=list)  # --allow-host: the most it grants
    egress_network: str | None = None
    max_ttl: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_ttl = validate.duration(self.base.ttl)


class Session:
    """The sandboxes this server started, and the rules for starting more."""

    def __init__(self, limits: Limits, home: str | None = None) -> None:
        self.limits = limits
        self.home = home
        self._lock = threading.Lock()
        self._boxes: dict[str, Sandbox] = {}
        self._keep: set[str] = set()
        self._starting = 0
        self._closed = False

    def options_for(self, image: str | None, network: bool, ports: Sequence[str],
                    ttl: str | None, allow_hosts: Sequence[str] = ()) -> StartOptions:
        """The start options for a request, refused where it asks past the server's own."""
        lim = self.limits
        hosts: list[str] = []
        if allow_hosts:
            from . import egress

            hosts = egress.allow_hosts(list(allow_hosts))
            beyond = [h for h in hosts if h not in lim.allow_hosts]
            if beyond:
                raise InvalidInput(f"allow_hosts {', '.join(beyond)}: not allowed by this "
                                   f"server (it grants: {', '.join(lim.allow_hosts) or 'none'};"
                                   " see --allow-host)")
        chosen = validate.image(image) if image else lim.images[0]
        if chosen not in lim.images:
            raise InvalidInput(f"image {chosen!r} is not allowed by this server "
                               f"(allowed: {', '.join(lim.images)}; see --image)")
        if (network or ports) and not lim.network:
            raise InvalidInput("this server gives no network (start it with --network)")
        bound = [validate.port(p) for p in ports]
        for spec in bound:
            if not spec.startswith(tuple(f"{ip}:" for ip in _LOOPBACK)) \
                    and not spec.startswith("[::1]:"):
                raise InvalidInput(f"port {spec!r}: this server publishes on loopback only")
        seconds = validate.duration(ttl) if ttl else lim.max_ttl
        if seconds > lim.max_ttl:
            raise InvalidInput(f"ttl {ttl!r} is longer than this server allows "
                               f"({lim.base.ttl})")
        return lim.base._replace(image=chosen, network=bool(network or ports),
                                 ports=validate.distinct_ports(bound), ttl=f"{seconds}s",
                                 keep=False, allow_hosts=hosts,
                                 egress_network=lim.egress_network)

    def start(self, image: str | None, network: bool, ports: Sequence[str], ttl: str | None,
              keep: bool, allow_hosts: Sequence[str] = ()) -> Sandbox:
        """Start one sandbox (a TTL always: keep only spares it at the client's exit)."""
        options = self.options_for(image, network, ports, ttl, allow_hosts)
        with self._lock:
            if self._closed:
                raise InvalidInput("the server is shutting down")
            if len(self._boxes) + self._starting >= self.limits.max_sandboxes:
                raise InvalidInput(f"this server runs at most {self.limits.max_sandboxes} "
                                   "sandboxes at once: purge one first")
            self._starting += 1
        from . import api, engine, sandbox
        from .state import StateStore

        try:
            store = StateStore(self.home)
            talk = _log
            with engine.kept():  # as every API call: this worker thread's engine untouched
                record = sandbox.start(store, options, progress=talk, report=talk,
                                       pull_output=False)
            box = api.Sandbox(record.name, home=self.home, on_message=talk)
        finally:
            with self._lock:
                self._starting -= 1
        with self._lock:
            self._boxes[box.name] = box
            if keep:
                self._keep.add(box.name)
        return box

    def get(self, name: str) -> Sandbox:
        """A sandbox of this session; others are not the model's to touch."""
        with self._lock:
            box = self._boxes.get(name)
        if box is None:
            raise InvalidInput(f"no sandbox named {name!r} in this session "
                               "(only sandboxes this server started can be used)")
        return box

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._boxes)

    def forget(self, name: str) -> None:
        with self._lock:
            self._boxes.pop(name, None)
            self._keep.discard(name)

    def close(self) -> list[str]:
        """At the client's exit: purge what it did not keep, in a detached `sandbox purge`
        that outlives us (the client kills our process group 2 s after closing stdin); wait
        for it a little. Returns the names handed to it. Idempotent."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            doomed = sorted(set(self._boxes) - self._keep)
        if not doomed:
            return []
        env = dict(os.environ)
        if self.home:
            env["SANDBOX_HOME"] = self.home
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox_cli", "purge", "--json", *doomed],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True, close_fds=True)
        with contextlib.suppress(subprocess.TimeoutExpired):  # it goes on without us
            proc.wait(timeout=PURGE_WAIT_SECONDS)
        return doomed


def _log(line: str) -> None:
    """The server's talk: stderr is the MCP client's log (stdout carries the protocol)."""
    from . import ui

    if line.startswith("warning: "):
        ui.warn(line[len("warning: "):])
    else:
        ui.info(line)


def limits(images: Sequence[str], network: bool, max_sandboxes: int,
           root: str | None, allow_hosts: Sequence[str] = (),
           egress_network: str | None = None) -> Limits:
    """The server's limits from its options and the configuration (as `sandbox start`)."""
    from . import core

    if max_sandboxes < 1:
        raise InvalidInput("--max-sandboxes must be at least 1")
    chosen = [validate.image(i) for i in images]
    base = core.resolve_start({"image": chosen[0] if chosen else None},
                              warn=lambda line: _log(f"warning: {line}"))
    folder = os.path.realpath(root or os.getcwd())
    if not os.path.isdir(folder):
        raise InvalidInput(f"--root {root!r}: not a directory")
    base = base._replace(network=False, ports=[], keep=False, allow_hosts=[])
    granted: list[str] = []
    if allow_hosts:
        from . import egress

        granted = egress.allow_hosts(list(allow_hosts))
        if egress_network:
            egress_network = egress.network(egress_network)
    return Limits(base, chosen or [base.image], network, max_sandboxes, folder, granted,
                  egress_network)


def serve(images: Sequence[str], network: bool, max_sandboxes: int,
          root: str | None, allow_hosts: Sequence[str] = (),
          egress_network: str | None = None) -> int:
    """Run the server on stdin/stdout until the client goes; then clean up."""
    require_sdk()
    from .mcp_tools import build_server  # imports the SDK and pydantic

    session = Session(limits(images, network, max_sandboxes, root, allow_hosts,
                             egress_network))
    server = build_server(session)

    def on_signal(signum: int, frame: object) -> None:
        session.close()
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        server.run("stdio")
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return 0
