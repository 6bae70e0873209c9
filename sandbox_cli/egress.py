"""Egress by allow-list: a sandbox that reaches the listed hosts through a proxy of its own and
nothing else.

Per sandbox started with `--allow-host`:

- the sandbox itself has no network at all (`--network none`, as without an allow-list): no
  route, no DNS, no engine network to leak through. Its first process (egress_handoff.py, run
  by the image's python3 before any code of the user's) makes a socket listening on the
  sandbox's loopback, 127.0.0.1:3128, sends it to the proxy over a Unix socket in a folder
  mounted into both (read-only in the sandbox), and then becomes the sandbox's sleep (or
  `run`'s command). HTTP(S)_PROXY point there.
- a proxy container (`egress_proxy.py`, mounted read-only, run by the proxy image's python3),
  locked down like the sandbox, on the egress network only (default: docker's `bridge`): it
  accepts on the socket it was sent (the sandbox's loopback: nothing on the egress network can
  reach it) and connects out on its own network. It takes one socket, once, and removes the
  Unix socket: the sandbox's code, which runs only after that, finds nothing there. Created
  while `start` prepares the sandbox and started beside it.

Earlier versions put the sandbox on an `--internal` network of its own with the proxy: one
network create, one network join and the proxy's second endpoint on every start, and an
embedded DNS server to close. Their networks are still removed by label (see
_remove_by_label).

Everything here is labelled (`sandbox-cli.egress=1`, `.home`, `.name`, and `.attempt`: a nonce of
the start that made it) and removed by id after a listing by label, never by name: a lost state
file strands nothing, a failed start removes only what it made, and no container or network of
another home, or of a same-named leftover, is touched. The listing asks about one sandbox's
pieces (label filters of `docker ps` / `network ls`, which take no container lock), so ending
one sandbox's egress never waits on another's. The proxy lives as long as its sandbox (same
TTL, `--rm`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import docker, engine, validate
from .egress_proxy import PROXY_PORT, parse_rule, parse_rules
from .errors import DockerError, InvalidInput, SandboxError

if TYPE_CHECKING:
    from .config import StartOptions
    from .state import SandboxRecord, StateStore

LABEL_EGRESS = f"{docker.LABEL_PREFIX}.egress"
PROXY_PROGRAM = "/sandbox-egress/proxy.py"
PROXY_LOG_DIR = "/log"
LOG_FILE = "egress.log"
READY_FILE = "ready"
HANDOFF_FOLDER = "handoff"  # in the log folder: the proxy's Unix socket, while it waits
HANDOFF_SOCKET = "proxy.sock"
HANDOFF_PROGRAM = "/sandbox-egress/handoff.py"  # in the sandbox
HANDOFF_MOUNT = "/sandbox-egress/handoff"  # the handoff folder, read-only in the sandbox
ALIVE_AFTER = 1.0  # seconds of waiting for `ready` before asking whether the sandbox still runs
ERRORS_FILE = "errors"  # the proxy's own failure, if any (it runs with --log-driver none)
READY_TIMEOUT = 20.0
DEFAULT_EGRESS_NETWORK = "bridge"
DEFAULT_PROXY_IMAGE = None  # None: the sandbox's own image (python:alpine has python3)
NO_PROXY = "localhost,127.0.0.1,::1"
PROXY_MEMORY = "128m"  # 64 connections of ~1 MiB of buffers each, and python
PROXY_PIDS = 32
READ_LIMIT = 4 << 20  # bytes of log read per file at most
SWEEP_MIN_AGE_SECONDS = 60
_LIST_FORMAT = f'{{{{.ID}}}}\t{{{{.Label "{docker.LABEL_NAME}"}}}}\t{{{{.CreatedAt}}}}'
_NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


# --- input ------------------------------------------------------------------------------------

def allow_hosts(values: Sequence[str]) -> list[str]:
    """Check and normalise --allow-host values (HOST[:PORT], *.domain, IP literals)."""
    try:
        return [rule.text() for rule in parse_rules(values)]
    except ValueError as exc:
        raise InvalidInput(f"--allow-host: {exc}") from None


def allow_host(value: str) -> str:
    """One --allow-host value, checked and normalised."""
    try:
        return parse_rule(value).text()
    except ValueError as exc:
        raise InvalidInput(f"--allow-host: {exc}") from None


def network(value: str) -> str:
    """An engine network name for --egress-network."""
    if not _NETWORK_RE.match(value) or value in ("none", "host"):
        raise InvalidInput(f"invalid egress network {value!r}: expected an engine network "
                           "name (not none or host)")
    return value


def check_options(options: StartOptions) -> None:
    """Refuse combinations without a sound meaning: an allow-list is a network of its own."""
    if not options.allow_hosts:
        return
    if options.network:
        raise InvalidInput("--allow-host cannot be combined with --network: the allow-list "
                           "replaces the network (the sandbox reaches the listed hosts only)")
    if options.ports:
        raise InvalidInput("--allow-host cannot be combined with -p/--port: ports need "
                           "--network, which the allow-list replaces")
    if options.runtime and "runsc" in options.runtime:
        raise InvalidInput("--allow-host does not work with gVisor (runsc): the sandbox's "
                           "sockets live in gVisor's own network stack and cannot be handed "
                           "to the egress proxy")


# --- the plan: names and argv (pure) ----------------------------------------------------------

class Plan:
    """The egress pieces of one sandbox. (A plain class, not a dataclass: see
    state.SandboxRecord; an egress start is timed against a plain one.)"""

    __slots__ = ("allow", "attempt", "deny", "egress_network", "home_label", "image", "job",
                 "lifetime", "log_dir", "proxy", "sandbox", "sandbox_image", "user")

    def __init__(self, sandbox: str, home_label: str,
                 proxy: str,  # the proxy container's name
                 allow: list[str], egress_network: str, image: str, user: str, log_dir: str,
                 lifetime: int | None, deny: list[str] | None = None,
                 attempt: str = "",  # docker.LABEL_ATTEMPT's value on the proxy
                 sandbox_image: str = "",  # named when it cannot run the handoff
                 ) -> None:
        self.sandbox, self.home_label, self.proxy = sandbox, home_label, proxy
        self.allow, self.egress_network, self.image, self.user = (allow, egress_network,
                                                                  image, user)
        self.log_dir, self.lifetime, self.attempt = log_dir, lifetime, attempt
        self.deny: list[str] = [] if deny is None else deny
        self.sandbox_image = sandbox_image
        self.job: _Job | None = None  # see begin


def new_plan(store: StateStore, name: str, options: StartOptions, user: str,
             ttl_seconds: int | None) -> Plan:
    """The name of NAME's proxy. A random part keeps it from ever being another container's
    name (a sandbox may be called anything); removal goes by label. USER may be set later
    (the sandbox's folder decides it)."""
    tag = os.urandom(4).hex()
    return Plan(
        attempt=os.urandom(8).hex(), sandbox=name, home_label=store.label,
        proxy=f"sandbox-egress-{name}-{tag}", allow=allow_hosts(options.allow_hosts),
        egress_network=network(options.egress_network or DEFAULT_EGRESS_NETWORK),
        image=options.proxy_image or options.image, user=user,
        log_dir=log_dir(store, name), lifetime=ttl_seconds, deny=sorted(host_addresses()),
        sandbox_image=options.image,
    )


def log_dir(store: StateStore, name: str) -> str:
    """The host folder the proxy writes its attempt log to (never inside the sandbox's own
    folder: the sandbox must not be able to forge or plant anything there)."""
    return os.path.join(store.home, "egress", validate.name(name))


def _labels(plan: Plan) -> list[str]:
    """Labels of the proxy. It is not `managed` (that marks sandboxes: `ls` and `purge` would
    take it for its sandbox)."""
    return ["--label", f"{LABEL_EGRESS}=1",
            "--label", f"{docker.LABEL_HOME}={plan.home_label}",
            "--label", f"{docker.LABEL_NAME}={plan.sandbox}",
            *(["--label", f"{docker.LABEL_ATTEMPT}={plan.attempt}"] if plan.attempt else [])]


def proxy_program_path() -> str:
    """The proxy program on this machine (mounted read-only into the proxy)."""
    return _beside_us("egress_proxy.py")


def handoff_program_path() -> str:
    """The handoff program on this machine (mounted read-only into the sandbox)."""
    return _beside_us("egress_handoff.py")


def _beside_us(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


def _locked_down(plan: Plan, *, pids: int, memory: str, cpus: str) -> list[str]:
    """What the proxy and the port holder share with the sandbox's lockdown: its user (never
    root, never you), no capabilities, a read-only root, limits, no health check (an image's
    HEALTHCHECK would run unbounded) and no docker log (the proxy's failure goes to
    ERRORS_FILE)."""
    return ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", plan.user,
            "--read-only", "--pids-limit", str(pids),
            "--memory", memory, "--memory-swap", memory, "--cpus", cpus,
            "--no-healthcheck", "--log-driver", "none"]


def proxy_create_argv(plan: Plan) -> list[str]:
    """`docker create` of the proxy: locked down as the sandbox is, on the egress network
    only, living as long as the sandbox does. It takes the sandbox's port (egress_handoff.py)
    over a Unix socket in its log folder, then says so in a file `ready` there. No --init:
    python3 is PID 1, so an image without it fails `docker start` itself (with --init, tini
    would start and exit, and only a timeout would tell); it starts no process, so it has no
    zombie to reap, and it is only ever removed with SIGKILL (`rm -f`)."""
    args = ["--port", str(PROXY_PORT), "--log", f"{PROXY_LOG_DIR}/{LOG_FILE}",
            "--handoff", f"{PROXY_LOG_DIR}/{HANDOFF_FOLDER}/{HANDOFF_SOCKET}",
            "--ready", f"{PROXY_LOG_DIR}/{READY_FILE}",
            "--errors", f"{PROXY_LOG_DIR}/{ERRORS_FILE}"]
    for rule in plan.allow:
        args += ["--allow", rule]
    for address in plan.deny:
        args += ["--deny-addr", address]
    if plan.lifetime is not None:
        args += ["--lifetime", str(plan.lifetime)]
    return [
        docker.docker_binary(), "create", "--rm", "--pull", "never",
        "--name", plan.proxy, *_labels(plan),
        "--network", plan.egress_network,
        *_locked_down(plan, pids=PROXY_PIDS, memory=PROXY_MEMORY, cpus="1"),
        # Python as PID 1 ignores SIGTERM: Podman's `rm -f` would wait 10 s for it first.
        "--stop-signal", "SIGKILL",
        "--env", "PYTHONDONTWRITEBYTECODE=1",
        "--mount", f"type=bind,source={proxy_program_path()},target={PROXY_PROGRAM},readonly",
        "--mount", f"type=bind,source={plan.log_dir},target={PROXY_LOG_DIR}",
        "--entrypoint", "python3", plan.image, "-I", "-S", PROXY_PROGRAM, *args,
    ]


def proxy_start_argv(container: str) -> list[str]:
    """`docker start CONTAINER` (the proxy)."""
    return [docker.docker_binary(), "start", container]


def sandbox_mounts(plan: Plan) -> list[str]:
    """The sandbox's `--mount`s for the handoff: the program and the folder of the proxy's
    Unix socket, both read-only (the socket is gone once the proxy has the port)."""
    return [f"type=bind,source={handoff_program_path()},target={HANDOFF_PROGRAM},readonly",
            f"type=bind,source={handoff_dir(plan)},target={HANDOFF_MOUNT},readonly"]


def sandbox_main_prefix() -> list[str]:
    """What the sandbox's main process runs first: the handoff, by the image's python3, which
    then execs what follows (the sleep, or `run`'s command)."""
    return ["python3", "-I", "-S", HANDOFF_PROGRAM, f"{HANDOFF_MOUNT}/{HANDOFF_SOCKET}",
            str(PROXY_PORT), "--"]


def handoff_dir(plan: Plan) -> str:
    return os.path.join(plan.log_dir, HANDOFF_FOLDER)


def uses_holder(plan: Plan) -> bool:
    """Whether the handoff runs in a port holder (a --proxy-image other than the sandbox's
    image: the sandbox's may have no python3) rather than as the sandbox's first process."""
    return plan.image != plan.sandbox_image


HOLDER_MEMORY = "64m"


def holder_run_argv(plan: Plan) -> list[str]:
    """`docker run -d` of the port holder: a container of the proxy image with no network
    (loopback only) whose first process does the handoff, then sleeps out the sandbox's
    lifetime; the sandbox joins its network namespace (`--network container:ID`), so the
    port the proxy holds is on the sandbox's loopback, and the sandbox's image needs nothing.
    Locked down like the proxy, labelled like it (removed with it, by label)."""
    sleep_for = docker.SLEEP_FOREVER if plan.lifetime is None else str(plan.lifetime)
    mounts = [a for mount in sandbox_mounts(plan) for a in ("--mount", mount)]
    return [
        docker.docker_binary(), "run", "-d", "--rm", "--pull", "never",
        "--name", f"{plan.proxy}-port", "--hostname", plan.sandbox, *_labels(plan),
        "--network", "none", "--init",
        *_locked_down(plan, pids=8, memory=HOLDER_MEMORY, cpus="0.5"), *mounts,
        "--entrypoint", "python3", plan.image, *sandbox_main_prefix()[1:-1], "--sleep",
        sleep_for,
    ]


def start_holder(plan: Plan, pull: Callable[[str], None]) -> str:
    """Run the port holder (pulling the proxy image once if missing); its container id."""
    return _made(plan, holder_run_argv, pull)


def _made(plan: Plan, argv: Callable[[Plan], list[str]], pull: Callable[[str], None]) -> str:
    """The container id `docker run -d`/`create` ARGV(PLAN) prints, the proxy image pulled once
    if missing; the user's mistakes behind a failure in words (_in_words)."""
    from .errors import ImageError

    try:
        try:
            return docker.run_docker(argv(plan)).stdout.strip()
        except ImageError:
            pull(plan.image)
            return docker.run_docker(argv(plan)).stdout.strip()
    except DockerError as exc:
        raise _in_words(plan, exc) from None


def sandbox_env() -> dict[str, str]:
    """The proxy variables pip, npm, curl, git and urllib read."""
    url = f"http://127.0.0.1:{PROXY_PORT}"
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
            "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY}


def _filters(home_label: str, name: str | None, attempt: str | None) -> list[str]:
    """Label filters: this home's egress pieces, of sandbox NAME / start ATTEMPT when given."""
    return ["--filter", f"label={LABEL_EGRESS}=1",
            "--filter", f"label={docker.LABEL_HOME}={home_label}",
            *(["--filter", f"label={docker.LABEL_NAME}={name}"] if name else []),
            *(["--filter", f"label={docker.LABEL_ATTEMPT}={attempt}"] if attempt else [])]


def list_proxies_argv(home_label: str, name: str | None = None,
                      attempt: str | None = None) -> list[str]:
    """`docker ps -a` of this home's proxies (of sandbox NAME, of start ATTEMPT): ID, sandbox
    name, created (tab-separated). ps reads the daemon's view: no container lock."""
    return [docker.docker_binary(), "ps", "-a", "--no-trunc",
            *_filters(home_label, name, attempt), "--format", _LIST_FORMAT]


def list_networks_argv(home_label: str, name: str | None = None,
                       attempt: str | None = None) -> list[str]:
    """`docker network ls` of this home's egress networks (made by earlier versions), as
    list_proxies_argv."""
    return [docker.docker_binary(), "network", "ls", "--no-trunc",
            *_filters(home_label, name, attempt), "--format", _LIST_FORMAT]


# --- host addresses ---------------------------------------------------------------------------

def host_addresses() -> set[str]:
    """This machine's own addresses (IPv4 by ioctl, IPv6 from /proc): the proxy refuses them
    even when a listed name resolves to one. Linux only; elsewhere empty (the proxy still
    refuses its own gateways, the engine host's bridge addresses)."""
    found: set[str] = set()
    try:
        import fcntl
        import socket
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _, ifname in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                                         struct.pack("256s", ifname.encode()[:15]))
                except OSError:
                    continue
                found.add(socket.inet_ntoa(packed[20:24]))
    except (OSError, ImportError, AttributeError):
        pass
    try:
        import ipaddress

        with open("/proc/net/if_inet6", encoding="ascii") as handle:
            for line in handle:
                address = ipaddress.IPv6Address(int(line.split()[0], 16))
                if not address.is_link_local:
                    found.add(str(address))
    except (OSError, ValueError, IndexError):
        pass
    return {a for a in found if not a.startswith("127.") and a != "::1"}


# --- lifecycle --------------------------------------------------------------------------------

def _make_log_dir(plan: Plan, owner: tuple[int, int] | None) -> None:
    """The proxy's log folder, writable by the proxy's user (PLAN.user): OWNER (as root), or
    shared with it through ACLs (not root, when the proxy's user is not you: sandbox.py's
    _make_folder does the same for the sandbox's folder); and in it the handoff folder."""
    parent = os.path.dirname(plan.log_dir)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(plan.log_dir, 0o755)
    except FileExistsError:  # a leftover of an earlier sandbox of that name: start afresh
        _remove_log_dirs(os.path.dirname(os.path.dirname(plan.log_dir)), [plan.sandbox])
        os.mkdir(plan.log_dir, 0o755)
    if owner is not None:
        os.chown(plan.log_dir, *owner)
    else:
        uid = plan.user.partition(":")[0]
        if uid.isdigit() and int(uid) != os.getuid():
            from . import acl

            fd = os.open(plan.log_dir,
                         os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                acl.share(fd, [os.getuid(), int(uid)])
            finally:
                os.close(fd)
    # Open to all: the proxy (PLAN.user) makes its socket there and the sandbox's first process
    # (root without capabilities, so "other") reaches it, read-only. Nobody else can: the
    # containers see this folder alone, and on the host it sits in the home's 0700 `egress`.
    handoff = handoff_dir(plan)
    os.mkdir(handoff, 0o777)
    os.chmod(handoff, 0o777)  # past the umask, and past an ACL mask inherited from the log's


def _create_proxy(plan: Plan, pull: Callable[[str], None]) -> str:
    """Create the proxy (pulling its image once if missing); returns its container id."""
    return _made(plan, proxy_create_argv, pull)


def _start_proxy(plan: Plan, proxy_id: str) -> None:
    """Start the proxy: a missing egress network or an image without python3 fail here."""
    try:
        docker.run_docker(proxy_start_argv(proxy_id), timeout=docker.DEADLINE_CREATE)
    except DockerError as exc:
        raise _in_words(plan, exc) from None


def _in_words(plan: Plan, exc: DockerError) -> SandboxError:
    """The user's mistakes behind a failed create or start of the proxy, as InvalidInput."""
    low = (exc.stderr or exc.message).lower()
    if "network" in low and "not found" in low:
        return InvalidInput(f"egress network {plan.egress_network!r} not found "
                            "(see `docker network ls`)")
    if "executable file not found" in low or "no such file" in low:
        return InvalidInput(f"image {plan.image!r} has no python3 to run the egress proxy: "
                            "choose one with --proxy-image")
    return exc


def wait_ready(plan: Plan, container_id: str) -> None:
    """Until the proxy holds the sandbox's port (its `ready` file appears), bounded. The
    proxy's own failure (written to ERRORS_FILE: it has no docker log) ends the wait at once;
    after ALIVE_AFTER, so does a proxy found gone (it died before it could write), or a
    CONTAINER_ID (the sandbox, or its port holder) whose first process has ended (an image
    without python3: it cannot run the handoff)."""
    import time

    path = os.path.join(plan.log_dir, READY_FILE)
    began = time.monotonic()
    look_at = began + ALIVE_AFTER
    while not os.path.lexists(path):
        now = time.monotonic()
        failed = _proxy_failure(plan)
        if failed or now > began + READY_TIMEOUT:
            why = failed or (f"it did not take the sandbox's port within {READY_TIMEOUT:g}s"
                             " (a gVisor or VM runtime cannot hand its socket over)")
            raise DockerError(f"the egress proxy of {plan.sandbox!r} failed: {why}", [], 1, "")
        if now > look_at:
            proxy_id = plan.job.proxy_id if plan.job is not None else ""
            if proxy_id and _running(proxy_id) is False and not os.path.lexists(path):
                why = _proxy_failure(plan) or "it exited before it took the sandbox's port"
                raise DockerError(f"the egress proxy of {plan.sandbox!r} failed: {why}",
                                  [], 1, "")
            if _running(container_id) is False and not os.path.lexists(path):
                if uses_holder(plan):
                    raise InvalidInput(f"the egress port holder ended before it gave the proxy "
                                       f"the sandbox's port: has {plan.image!r} python3?")
                raise InvalidInput(
                    f"the sandbox's first process ended before it handed its port to the egress "
                    f"proxy: --allow-host needs python3 in the sandbox's image "
                    f"({plan.sandbox_image!r} has none?), or a --proxy-image that has it")
            look_at = now + 0.5
        time.sleep(0.005)


def _running(container_id: str) -> bool | None:
    """Whether the container runs (a removed one, as `--rm` makes of an ended one, does not);
    None when the engine did not say (slow, or briefly unreachable: ask again later)."""
    try:
        proc = docker.run_docker(docker.state_argv(container_id), check=False, timeout=5)
    except DockerError:  # its deadline (EngineTimeout), or no engine at all
        return None
    if proc.returncode == 0:
        return proc.stdout.strip() in ("running", "paused", "restarting")
    return False if "no such" in proc.stderr.lower() else None


def _proxy_failure(plan: Plan) -> str:
    """The last line of the proxy's ERRORS_FILE ('' when it has not failed), printable."""
    try:
        dir_fd = os.open(plan.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        text = _read_bounded(dir_fd, ERRORS_FILE)[-4096:].decode("utf-8", "replace")
    finally:
        os.close(dir_fd)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "".join(c if c.isprintable() else "?" for c in lines[-1])[:300] if lines else ""


class _Job:
    """What begin starts in the background: the proxy's creation, then its start (which the
    sandbox's own start runs beside)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.proxy_id = ""
        self.error: BaseException | None = None
        # Its docker calls go where the caller's do (engine.carry).
        self.thread = threading.Thread(target=engine.carry(self._proxy), name="egress-proxy",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        """Until it is done (each docker call has its deadline); if it never started (begin
        failed), at once."""
        if self.thread.ident is not None:
            self.thread.join()

    def _proxy(self) -> None:
        from .errors import ImageError

        try:
            self.proxy_id = proxy_id = docker.run_docker(proxy_create_argv(self.plan)
                                                         ).stdout.strip()
            _start_proxy(self.plan, proxy_id)
        except ImageError as exc:  # provisioned pulls it (with the caller's progress)
            self.error = exc
        except DockerError as exc:
            self.error = _in_words(self.plan, exc)
        except BaseException as exc:
            self.error = exc


def begin(plan: Plan, owner: tuple[int, int] | None) -> None:
    """Start making PLAN's proxy in the background, as soon as the sandbox's user is known
    (`start` goes on preparing the sandbox meanwhile: its image check, its folder's seeding);
    provisioned finishes, undo (after a failure) waits for it first."""
    _make_log_dir(plan, owner)
    plan.job = _Job(plan)
    plan.job.start()


@contextmanager
def provisioned(plan: Plan, pull: Callable[[str], None]) -> Iterator[None]:
    """Around the sandbox's `docker run` (or `docker create`, for `run`): after it, the proxy
    has started (or its failure is raised). The caller then waits for the handoff
    (wait_ready) once the sandbox runs, and removes what was made when anything fails
    (`undo`). The critical path is the slower of the sandbox's start and the proxy's
    create + start + handoff, all begun while `start` still prepared the sandbox."""
    job = plan.job
    if job is None:
        raise RuntimeError("egress.begin was not called")
    try:
        yield
    finally:
        job.join()  # also after a failure: the caller's cleanup must not race the proxy
    from .errors import ImageError

    if isinstance(job.error, ImageError):  # pulled since (the holder's), or pull it now
        _start_proxy(plan, _create_proxy(plan, pull))
    elif job.error is not None:
        raise job.error


def _labelled(argv: list[str]) -> list[tuple[str, str, str]]:
    """(id, sandbox name, created) rows of a listing; ids must look like ids (nothing else is
    ever removed)."""
    rows = []
    out = docker.run_docker(argv, check=False).stdout
    for line in out.splitlines():
        ident, _, rest = line.strip().partition("\t")
        name, _, created = rest.partition("\t")
        if re.fullmatch(r"[0-9a-f]{12,64}", ident):
            rows.append((ident, name, created))
    return rows


def _young(created: str) -> bool:
    """True for a piece made in the last minute: it may belong to a start still under way."""
    import time
    from datetime import datetime

    # "2026-12-01 22:30:01 +0000 UTC" (ps) or with fractional seconds (network ls)
    found = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)? ([+-]\d{4})", created)
    if not found:
        return False
    try:
        when = datetime.strptime(" ".join(found.groups()), "%Y-%m-%d %H:%M:%S %z").timestamp()
    except ValueError:
        return False
    return time.time() - when < SWEEP_MIN_AGE_SECONDS


def _remove_by_label(home_label: str, chosen: Callable[[str, str], bool], *,
                     name: str | None = None, attempt: str | None = None) -> list[str]:
    """Remove this home's proxies, then egress networks (of sandbox NAME / start ATTEMPT only,
    when given: the listing itself is then about them alone), for which CHOSEN(sandbox name,
    created) holds, by id. (Networks: an earlier version's sandboxes had one each; they must
    not outlive them.) Every call has its deadline (docker.run_docker). Returns the sandbox
    names whose pieces were removed."""
    proxies = [(i, n) for i, n, c in _labelled(list_proxies_argv(home_label, name, attempt))
               if chosen(n, c)]
    if proxies:
        docker.run_docker(docker.remove_argv([i for i, _ in proxies]), check=False)
    networks = [(i, n) for i, n, c in _labelled(list_networks_argv(home_label, name, attempt))
                if chosen(n, c)]
    for ident, _ in networks:
        docker.run_docker(network_rm_argv(ident), check=False)
    return sorted({n for _, n in proxies} | {n for _, n in networks})


def network_rm_argv(network_name: str) -> list[str]:
    """`docker network rm NETWORK`."""
    return [docker.docker_binary(), "network", "rm", network_name]


def remove(store: StateStore, names: Sequence[str]) -> None:
    """Remove the proxies, networks and logs of NAMES (their sandboxes already removed)."""
    if not names:
        return
    end_all(store, names)
    _remove_log_dirs(store.home, names)


def end_all(store: StateStore, names: Sequence[str]) -> None:
    """Remove the proxies and networks of NAMES, keeping their logs. One name: listings of
    that sandbox's pieces alone; several (purge, the sweep): one listing of the home's."""
    wanted = set(names)
    if len(wanted) == 1:
        _remove_by_label(store.label, lambda _n, _c: True, name=next(iter(wanted)))
    elif wanted:
        _remove_by_label(store.label, lambda other, _created: other in wanted)


def undo(store: StateStore, plan: Plan) -> None:
    """A failed start: remove what PLAN's start made (found by its attempt label, so never a
    same-named leftover's pieces), and its log folder (the name is this start's: its sandbox
    folder was made exclusively). What begin started is waited for first: a proxy still
    being made would otherwise be missed by the listing."""
    if plan.job is not None:
        plan.job.join()
    _remove_by_label(store.label, lambda _n, _c: True, name=plan.sandbox, attempt=plan.attempt)
    _remove_log_dirs(store.home, [plan.sandbox])


def remove_logs(store: StateStore, names: Sequence[str]) -> None:
    """Remove the attempt logs of NAMES (an expired sandbox's go with its folder)."""
    _remove_log_dirs(store.home, names)


def sweep(store: StateStore, live: Sequence[str], *, everything: bool = False) -> None:
    """Remove this home's egress pieces whose sandbox is not in LIVE (a lost state file, a
    sandbox that expired while no command ran). Pieces younger than a minute are spared
    unless EVERYTHING: they may belong to a start under way."""
    keep = set(live)
    removed = _remove_by_label(
        store.label, lambda name, created: name not in keep and (everything or not _young(created)))
    _remove_log_dirs(store.home, removed)


def end(store: StateStore, name: str) -> bool:
    """`disconnect`: end NAME's egress (its proxy removed, and with it the only holder of the
    sandbox's port: nothing goes out after; its log stays for `sandbox egress`). Returns
    whether there was any."""
    return bool(_remove_by_label(store.label, lambda _n, _c: True, name=name))


def _remove_log_dirs(home: str, names: Sequence[str]) -> None:
    from . import volume

    folder = os.path.join(home, "egress")
    try:
        parent = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        for name in names:
            volume.remove_tree(parent, validate.name(name))
    finally:
        os.close(parent)


def uses_egress(record: SandboxRecord | None) -> bool:
    """Whether a sandbox was started with an allow-list (unknown: maybe)."""
    return record is None or "egress_network" in record.options


def hands_off_in_sandbox(record: SandboxRecord) -> bool:
    """Whether the sandbox's first program is the handoff (an allow-list without a port
    holder): then `run`'s command runs after it."""
    return uses_egress(record) and not record.options.get("port_holder")


def record_options(plan: Plan | None) -> dict[str, Any]:
    """What the state record keeps of the egress (flat values only)."""
    if plan is None:
        return {}
    return {"allow_hosts": list(plan.allow), "egress_network": plan.egress_network,
            **({"port_holder": True} if uses_holder(plan) else {})}


# --- the attempt log --------------------------------------------------------------------------

def _read_bounded(dir_fd: int, name: str) -> bytes:
    """A regular file below DIR_FD, never through a link, at most READ_LIMIT bytes."""
    import stat

    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        chunks, total = [], 0
        while total < READ_LIMIT:
            chunk = os.read(fd, min(1 << 16, READ_LIMIT - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def attempts(store: StateStore, name: str) -> list[dict[str, Any]]:
    """The proxy's log of NAME, oldest first: dicts of time, host, port, verdict (allowed or
    refused), method and reason. The file is written by the proxy, which faces the sandbox:
    every line is checked, bad ones skipped."""
    folder = log_dir(store, name)
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        raw = _read_bounded(dir_fd, LOG_FILE + ".1") + _read_bounded(dir_fd, LOG_FILE)
    finally:
        os.close(dir_fd)
    found = []
    for line in raw.splitlines():
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(entry, dict):
            continue
        item = {
            "time": entry.get("time"), "host": entry.get("host"), "port": entry.get("port"),
            "verdict": entry.get("verdict"), "method": entry.get("method", ""),
            "reason": entry.get("reason", ""),
        }
        if (all(isinstance(item[k], str) for k in ("time", "host", "verdict", "method", "reason"))
                and isinstance(item["port"], int) and item["verdict"] in ("allowed", "refused")):
            found.append(item)
    return found


def require_egress(record: SandboxRecord, store: StateStore) -> None:
    """InvalidInput unless RECORD was started with an allow-list (disconnected ones count:
    their log is kept)."""
    if "egress_network" not in record.options and not os.path.isdir(log_dir(store, record.name)):
        raise InvalidInput(f"sandbox {record.name!r} was not started with --allow-host "
                           "(it has no egress proxy)")
