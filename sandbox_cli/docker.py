"""The docker CLI: pure argv builders, and the one place that runs `docker`.

Builders return lists and never touch the system, so tests check exact argv without a daemon.
`run_docker` / `popen_docker` are the only calls of the docker binary in the package; they map
failures to typed errors that carry argv, return code and stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import NamedTuple

from . import engine
from .errors import (
    DockerError,
    DockerUnavailable,
    ImageError,
    NameInUse,
    SandboxError,
    SandboxNotFound,
)

LABEL_PREFIX = "sandbox-cli"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"
LABEL_HOME = f"{LABEL_PREFIX}.home"
LABEL_NAME = f"{LABEL_PREFIX}.name"
LABEL_KEEP = f"{LABEL_PREFIX}.keep"
LABEL_EXPIRES = f"{LABEL_PREFIX}.expires"
LABEL_HOME_DIR = f"{LABEL_PREFIX}.home-dir"  # shown when another home's name clashes with ours
LABEL_ATTEMPT = f"{LABEL_PREFIX}.attempt"  # a nonce per docker run/create: cleanup finds it
LABEL_USER = f"{LABEL_PREFIX}.user"  # the sandbox's own uid:gid (purge's unlock needs it)
EXEC_MARKER = "SANDBOX_EXEC_ID"  # env var that tags every process an exec starts
WORKDIR = "/app"
SLEEP_FOREVER = "2147483647"  # seconds; `sleep infinity` is not understood by every sleep


def docker_binary() -> str:
    """The docker client to run: the one a sandbox's record chose for this thread's calls
    (engine.use), else environment_binary()."""
    chosen = engine.chosen()
    return chosen.binary if chosen is not None else environment_binary()


def environment_binary() -> str:
    """The client the environment names, as an absolute path when it can be found:
    $SANDBOX_DOCKER, else `docker`, looked up in our own PATH (never in an environment built
    for a child)."""
    chosen = os.environ.get("SANDBOX_DOCKER") or "docker"
    if os.sep in chosen:
        return chosen
    found = _which(chosen)
    return found or chosen


def _which(name: str) -> str | None:
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    return None


@contextmanager
def env_file(env: Mapping[str, str]) -> Iterator[str | None]:
    """A private (0600) file of KEY=VALUE lines for `--env-file`, removed afterwards; None when
    ENV is empty. Values so reach the container without appearing on docker's command line
    (where `ps` shows them) or in the docker client's own environment (where PATH, HOME or
    DOCKER_HOST would steer the client itself)."""
    if not env:
        yield None
        return
    import tempfile

    fd, path = tempfile.mkstemp(prefix="sandbox-env-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(f"{key}={value}\n" for key, value in env.items())
        yield path
    finally:
        os.unlink(path)


class RunSpec(NamedTuple):
    """Everything `docker run` needs to start one sandbox container (a NamedTuple, not a
    dataclass: see state.SandboxRecord; `spec._replace(...)` makes a changed copy)."""

    name: str
    image: str
    volume: str
    user: str
    home_label: str
    ttl_seconds: int | None  # None: never expires (--keep)
    expires_at: str = ""
    attempt: str = ""  # LABEL_ATTEMPT's value: a failed start removes only what carries it
    managed: bool = True  # False for a helper container, which no listing may take for a box
    home_dir: str = ""  # LABEL_HOME_DIR's value
    keep: bool = False  # survives a bare purge
    network: bool = False
    ports: Sequence[str] = ()  # normalised IP:HOST:CONTAINER/PROTO
    env_file: str | None = None  # see env_file(): values never travel on the argv
    default_home: bool = True  # HOME=/tmp unless the user's -e sets HOME (-e would lose)
    memory: str = "1g"
    cpus: float = 1.0
    pids_limit: int = 256
    read_only: bool = True
    tmpfs_size: str = "256m"
    runtime: str | None = None
    cap_add: Sequence[str] = ()
    storage: str = "bind"  # VOLUME is a host folder to bind, or (volume) an engine volume
    mounts: Sequence[str] = ()  # more --mount values (egress: the handoff, read-only)
    network_mode: str = ""  # replaces bridge/none (egress: `container:ID` of the port holder)
    # Runs first as the main process and then becomes it (egress: the handoff, which hands
    # the proxy a port on the sandbox's loopback, then execs the sleep or run's command).
    main_prefix: Sequence[str] = ()


def run_argv(spec: RunSpec) -> list[str]:
    """`docker run -d ...` for a locked-down sandbox whose main process sleeps out its TTL.

    With --rm, Docker removes the container when that sleep ends: expiry needs no daemon of ours.
    """
    sleep_for = SLEEP_FOREVER if spec.ttl_seconds is None else str(spec.ttl_seconds)
    # The main process (init and its sleep) runs as root with no capabilities, and every exec
    # as the sandbox user (exec_argv's USER): so the code cannot stop, kill or write through
    # the process that keeps the sandbox alive, nor feed the engine through its output.
    main = [*spec.main_prefix, "sleep", sleep_for]
    return [docker_binary(), "run", "-d", "--rm", "--pull", "never",
            *_container_options(spec, main_user=MAIN_USER),
            "--entrypoint", main[0], spec.image, *main[1:]]


# run's lifetime, kept by the container itself: a background sleeper kills every process at the
# TTL (tini, PID 1, then exits and Docker's --rm removes the container), while `exec` makes the
# command the shell's successor, so its exit code, signals and stdin are the command's own.
# Background jobs of a non-interactive sh read /dev/null, so the sleeper never takes stdin. The
# shell is /bin/sh and the sleeper has its own PATH: a `-e PATH=...` is the command's alone.
TTL_SCRIPT = ('(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; '
              'sleep "$1"; kill -KILL -1) & shift; exec "$@"')


def create_argv(spec: RunSpec, command: Sequence[str], *, workdir: str | None = None,
                stdin: bool = False, tty: bool = False) -> list[str]:
    """`docker create --rm ...` of a one-shot sandbox whose main process is COMMAND itself
    (run without the image's entrypoint, as exec would), behind TTL_SCRIPT when it has a TTL.
    Started with start_attached_argv."""
    command = [*spec.main_prefix, *command]
    argv = [docker_binary(), "create", "--rm", "--pull", "never",
            *_container_options(spec, main_user=spec.user)]
    if workdir:
        argv += ["--workdir", workdir]
    if stdin:
        argv.append("--interactive")
    if tty:
        argv.append("--tty")
    if spec.ttl_seconds is None:
        return [*argv, "--entrypoint", command[0], spec.image, *command[1:]]
    return [*argv, "--entrypoint", "/bin/sh", spec.image, "-c", TTL_SCRIPT, "sandbox-ttl",
            str(spec.ttl_seconds), *command]


def start_attached_argv(name: str, *, stdin: bool = False) -> list[str]:
    """`docker start --attach`: its exit code is the container's."""
    return [docker_binary(), "start", "--attach", *(["--interactive"] if stdin else []), name]


MAIN_USER = "0:0"
# Writable places of a read-only root; /tmp is also HOME. Each a tmpfs, whose pages count
# against the container's memory limit.
TMPFS_DIRS = ("/tmp", "/var/tmp")


def _container_options(spec: RunSpec, *, main_user: str) -> list[str]:
    """The flags every sandbox container gets: identity, labels, lockdown, limits, mount.

    MAIN_USER runs the main process: root (without capabilities) for a sandbox that sleeps,
    the sandbox user for run's one-shot command."""
    argv = [
        "--name", spec.name,
        # (one that joins another's network namespace has that one's hostname: the holder's)
        *([] if spec.network_mode.startswith("container:") else ["--hostname", spec.name]),
        *(["--label", f"{LABEL_MANAGED}=1"] if spec.managed else []),
        "--label", f"{LABEL_HOME}={spec.home_label}",
        "--label", f"{LABEL_NAME}={spec.name}",
        "--label", f"{LABEL_USER}={spec.user}",
        "--label", f"{LABEL_KEEP}={1 if spec.keep else 0}",
        "--label", f"{LABEL_EXPIRES}={spec.expires_at}",
        *(["--label", f"{LABEL_ATTEMPT}={spec.attempt}"] if spec.attempt else []),
        *(["--label", f"{LABEL_HOME_DIR}={spec.home_dir}"] if spec.home_dir else []),
        "--network", spec.network_mode or ("bridge" if spec.network else "none"),
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--user", main_user,
        "--pids-limit", str(spec.pids_limit),
        "--memory", spec.memory, "--memory-swap", spec.memory,
        "--cpus", f"{spec.cpus:g}",
        "--init",
        "--no-healthcheck",  # an image's HEALTHCHECK would run on the host's CPU, unbounded
        "--log-driver", "none",  # nobody reads it; json-file costs the host a CPU under a flood
        *(["--env", "HOME=/tmp"] if spec.default_home else []),  # the user's uid has no home
        "--mount", _volume_mount(spec.volume, WORKDIR) if spec.storage == "volume"
        else _bind_mount(spec.volume, WORKDIR),
        "--workdir", WORKDIR,
    ]
    for mount in spec.mounts:
        argv += ["--mount", mount]
    for cap in spec.cap_add:
        argv += ["--cap-add", cap]
    if spec.read_only:
        argv.append("--read-only")
        for directory in TMPFS_DIRS:
            argv += ["--tmpfs", f"{directory}:rw,nosuid,nodev,size={spec.tmpfs_size},mode=1777"]
    if spec.runtime:
        argv += ["--runtime", spec.runtime]
    for port in spec.ports:
        argv += ["--publish", port]
    if spec.env_file:
        argv += ["--env-file", spec.env_file]
    return argv


def _bind_mount(source: str, target: str) -> str:
    """A --mount value; unlike -v, it fails rather than create a missing source as root.

    docker reads --mount as one CSV record, so a path with a comma or quote is quoted.
    """
    field = f"source={source}"
    if "," in field or '"' in field:
        field = '"' + field.replace('"', '""') + '"'
    return f"type=bind,{field},target={target}"


def _volume_mount(name: str, target: str) -> str:
    """A --mount value of engine volume NAME (a name we made: no comma or quote)."""
    return f"type=volume,source={name},target={target}"


def volume_create_argv(name: str, labels: Mapping[str, str]) -> list[str]:
    """`docker volume create` of NAME, labelled like the sandbox's container."""
    flags = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    return [docker_binary(), "volume", "create", *flags, name]


def volume_remove_argv(names: Sequence[str]) -> list[str]:
    """`docker volume rm -f` of engine volumes."""
    return [docker_binary(), "volume", "rm", "-f", *names]


def exec_argv(name: str, command: Sequence[str], *, marker: str, user: str | None = None,
              env_file: str | None = None, workdir: str | None = None, stdin: bool = False,
              tty: bool = False) -> list[str]:
    """`docker exec` of COMMAND (an argv, never a shell string), tagged with an exec marker,
    as USER (the sandbox user: the container's main process runs as root)."""
    argv = [docker_binary(), "exec"]
    if user:
        argv += ["--user", user]
    if stdin:
        argv.append("-i")
    if tty:
        argv.append("-t")
    argv += ["--env", f"{EXEC_MARKER}={marker}"]
    if env_file:
        argv += ["--env-file", env_file]
    if workdir:
        argv += ["--workdir", workdir]
    return [*argv, name, *command]


# Ends every process an exec started: those carrying its marker ($1), their sessions (runc makes
# each exec a session leader), their descendants, and every process that began after the exec
# did. "After" is measured inside, on the container's own clock (a remote engine host or
# gVisor counts from another boot): the exec began $2 clock ticks before this script, so the
# cut-off is this script's own start time (field 22 of /proc/$$/stat) less $2. Nothing a
# process does (scrubbing its environment, setsid, double forks, faking a marker) changes its
# start time, so nothing it started escapes; the price is that other execs' processes begun
# after this one end too. Frozen with SIGSTOP first so none can fork away while we look;
# repeated until a pass finds nothing. POSIX sh, tr, grep. It runs as the container's user
# (only that uid may signal its processes: the container has no CAP_KILL), so a process that
# stops its own uid's processes can freeze it: the host-side kill (hostkill.py) comes first
# where it can, and this exec has a deadline.
KILL_SCRIPT = r"""
id="$1"; ago="$2"; me=$$; frozen=" "; sids=" "
stat=$(cat /proc/$me/stat) || exit 3
rest=${stat##*) }
set -- $rest
since=""
[ -n "$ago" ] && since=$((${20} - ago))
pass=0
while [ $pass -lt 20 ]; do
  pass=$((pass + 1)); found=""
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$p" in 1|"$me") continue;; esac
    case "$frozen" in *" $p "*) continue;; esac
    stat=$(cat "$d/stat" 2>/dev/null) || continue
    rest=${stat##*) }
    set -- $rest
    ppid=$2; sid=$4; started=${20}
    [ "$ppid" = "$me" ] || [ "$sid" = "$me" ] && continue
    hit=""
    case "$frozen" in *" $ppid "*) hit=1;; esac
    case "$sids" in *" $sid "*) hit=1;; esac
    if [ -z "$hit" ] && tr '\0' '\n' < "$d/environ" 2>/dev/null \
        | grep -qx "SANDBOX_EXEC_ID=$id"; then
      hit=1
    fi
    if [ -z "$hit" ] && [ -n "$since" ] && [ "$started" -ge "$since" ] 2>/dev/null; then
      hit=1
    fi
    if [ -n "$hit" ]; then
      kill -STOP "$p" 2>/dev/null
      frozen="$frozen$p "; found=1
      if [ "$sid" != 0 ] && [ "$sid" != 1 ]; then
        case "$sids" in *" $sid "*) ;; *) sids="$sids$sid ";; esac
      fi
    fi
  done
  [ -z "$found" ] && break
done
[ "$frozen" = " " ] || kill -KILL $frozen 2>/dev/null
exit 0
"""


def kill_exec_argv(name: str, marker: str, ago_ticks: int | None = None, *,
                   user: str | None = None) -> list[str]:
    """`docker exec`, as USER (the sandbox user, who may signal the command's processes), of
    the script that ends every process the exec tagged MARKER started and every process that
    began at most AGO_TICKS clock ticks before the script itself did (a duration: the
    container's clock need not agree with ours)."""
    ago = "" if ago_ticks is None else str(max(ago_ticks, 0))
    as_user = ["--user", user] if user else []
    return [docker_binary(), "exec", *as_user, name, "sh", "-c", KILL_SCRIPT, "sandbox-kill",
            marker, ago]


def remove_argv(names: Sequence[str]) -> list[str]:
    """`docker rm -f` of several containers at once."""
    return [docker_binary(), "rm", "-f", *names]


def list_argv(home_label: str, attempt: str | None = None) -> list[str]:
    """`docker ps -a -q` of this home's containers (of one start ATTEMPT when given): full ids,
    one a line. Labels are then read with inspect_argv, as structured data: `docker ps`'s own
    label column joins them with commas, which a hostile image's label value can contain."""
    argv = [docker_binary(), "ps", "-a", "-q", "--no-trunc", *_home_filters(home_label)]
    if attempt:
        argv += ["--filter", f"label={LABEL_ATTEMPT}={attempt}"]
    return argv


LISTED_LABELS = (LABEL_MANAGED, LABEL_HOME, LABEL_NAME, LABEL_KEEP, LABEL_EXPIRES, LABEL_HOME_DIR,
                 LABEL_USER)


def rows_argv(home_label: str) -> list[str]:
    """`docker ps -a` of this home's containers, each label read by its key: exact values,
    however many commas a hostile image's labels hold, and no container lock taken (inspect
    waits on a container its code wedged; ps does not). The shape is the engine's
    (engine.Engine.rows_argv; parse it with its parse_rows)."""
    from . import engine

    return engine.current().rows_argv(_home_filters(home_label), LISTED_LABELS)


def _home_filters(home_label: str) -> list[str]:
    return ["--filter", f"label={LABEL_MANAGED}=1", "--filter", f"label={LABEL_HOME}={home_label}"]


def inspect_argv(refs: Sequence[str]) -> list[str]:
    """`docker inspect` of containers: one JSON array (Config.Labels a map), as Docker and
    Podman both print it."""
    return [docker_binary(), "inspect", "--type", "container", *refs]


def port_argv(ref: str) -> list[str]:
    """`docker port REF`: the host addresses the engine bound, `80/tcp -> 127.0.0.1:49153`."""
    return [docker_binary(), "port", ref]


def networks_argv(name: str) -> list[str]:
    """`docker inspect` printing the networks a container is attached to."""
    return [docker_binary(), "inspect", "--type", "container",
            "--format", "{{json .NetworkSettings.Networks}}", name]


def state_argv(name: str) -> list[str]:
    """`docker inspect` printing a container's status (running, paused, exited, ...)."""
    return [docker_binary(), "inspect", "--type", "container", "--format", "{{.State.Status}}",
            name]


def oom_events_argv(name: str, since: float, until: float) -> list[str]:
    """`docker events` listing the OOM kills in container NAME between two wall-clock times."""
    return [docker_binary(), "events", "--since", f"{since:.6f}", "--until", f"{until:.6f}",
            "--filter", f"container={name}", "--filter", "event=oom", "--format", "{{.Action}}"]


def network_disconnect_argv(network: str, name: str) -> list[str]:
    """`docker network disconnect -f NETWORK NAME`."""
    return [docker_binary(), "network", "disconnect", "--force", network, name]


def pull_argv(image: str) -> list[str]:
    """`docker pull IMAGE`."""
    return [docker_binary(), "pull", image]


def build_argv(tag: str, context_url: str) -> list[str]:
    """`docker build -t TAG URL` (URL last, after `--`, so it can never read as an option).

    Plain progress for CI is asked for through BUILDKIT_PROGRESS in the environment, which the
    legacy builder (no --progress flag) ignores.
    """
    return [docker_binary(), "build", "--tag", tag, "--", context_url]


def version_argv() -> list[str]:
    """`docker version` as JSON (client and server)."""
    return [docker_binary(), "version", "--format", "{{json .}}"]


def info_argv() -> list[str]:
    """`docker info` as JSON."""
    return [docker_binary(), "info", "--format", "{{json .}}"]


def image_inspect_argv(image: str) -> list[str]:
    """`docker image inspect IMAGE` (exit status says whether it is present)."""
    return [docker_binary(), "image", "inspect", "--format", "{{.Id}}", image]


# --- running docker -----------------------------------------------------------------------

_trace_hook = None  # set by the CLI for --verbose; called with each argv before it runs


def set_trace(hook: object) -> None:
    """Install a callable that receives each docker argv before it runs (for --verbose)."""
    global _trace_hook
    _trace_hook = hook


def _trace(argv: Sequence[str]) -> None:
    if _trace_hook is not None:
        _trace_hook(argv)  # type: ignore[operator]


# How the docker client says it cannot reach the daemon (socket missing, refused, host unknown,
# bad DOCKER_HOST or context). Lower case; checked before anything else, as every command may
# meet them.
_UNREACHABLE = (
    "cannot connect to the docker daemon", "is the docker daemon running",
    "error during connect", "failed to initialize", "unable to resolve docker endpoint",
    "dial unix", "dial tcp", "connection refused", "no such host", "i/o timeout",
    "connection reset by peer", "context not found",
    "unable to connect to podman socket", "cannot connect to podman",
)
_DAEMON_AT = re.compile(r"docker daemon at (\S+?)\.?(?:\s|$)", re.IGNORECASE)


def unreachable(text: str) -> DockerUnavailable | None:
    """A DockerUnavailable naming the address and reason when TEXT (docker's stderr) says the
    daemon cannot be reached or used, else None."""
    low = text.lower()
    if "permission denied while trying to connect" in low:
        return DockerUnavailable("permission denied talking to the Docker daemon",
                                 "add your user to the docker group")
    if "error response from daemon" in low:  # the daemon answered (a registry it cannot reach)
        return None
    if not any(needle in low for needle in _UNREACHABLE):
        return None
    at = _DAEMON_AT.search(text)
    if at:
        return DockerUnavailable(f"cannot reach the Docker daemon at {at.group(1)}: is it "
                                 "running, and is DOCKER_HOST right?", "try `sandbox doctor`")
    line = next(ln.strip() for ln in text.splitlines()
                if any(needle in ln.lower() for needle in _UNREACHABLE))
    line = line.removeprefix("docker: ").removeprefix("Failed to initialize: ")
    return DockerUnavailable(f"cannot reach the Docker daemon: {line}", "try `sandbox doctor`")


def classify_failure(argv: Sequence[str], returncode: int, stderr: str) -> SandboxError:
    """Choose the error class for a failed docker (or podman) command from its stderr; the
    message quotes the line that says what failed (engine.error_line: podman warns first)."""
    from . import engine

    text = stderr.strip()
    low = text.lower()
    first = engine.error_line(text) or f"exit code {returncode}"
    first = first.removeprefix("docker: ").removeprefix("Error response from daemon: ")
    first = first.removeprefix("Error: ")
    cut = unreachable(text)
    if cut is not None:
        return cut
    if any(needle in low for needle in engine.NOT_FOUND):
        return SandboxNotFound(f"container not found or not running: {first}")
    if any(needle in low for needle in engine.NAME_IN_USE):
        return NameInUse(f"name already in use by another container: {first}")
    if any(needle in low for needle in engine.IMAGE_MISSING):
        return ImageError(f"image not available: {first}")
    if ("unknown or invalid runtime" in low or "unknown runtime" in low
            or ("oci runtime" in low and "not found" in low)):
        return DockerError(f"runtime not available: {first}", list(argv), returncode, text)
    return DockerError(f"docker {argv[1] if len(argv) > 1 else ''} failed: {first}",
                       list(argv), returncode, text)


# Deadlines (seconds) by kind of call: no docker call may hang a command forever on a wedged
# engine (an exec frozen in `runc init` makes dockerd hold the container's lock for good).
DEADLINE_QUERY = 30.0  # inspect, ps, version, info, image inspect
DEADLINE_CHANGE = 30.0  # network disconnect, kill
DEADLINE_REMOVE = 10.0  # rm -f: purge then goes round a wedged engine (sandbox.py)
DEADLINE_CREATE = 120.0  # run -d, create (unpacking a large image takes a while)
DEADLINE_KILL_EXEC = 8.0  # the in-container kill helper
DEADLINE_PULL = 1800.0
DEADLINE_BUILD = 3600.0
DEADLINE_PROBE = 5.0  # is the daemon there at all? (after another call's deadline)
_DEADLINES = {"inspect": DEADLINE_QUERY, "ps": DEADLINE_QUERY, "version": DEADLINE_QUERY,
              "info": DEADLINE_QUERY, "image": DEADLINE_QUERY, "network": DEADLINE_CHANGE,
              "kill": DEADLINE_CHANGE, "rm": DEADLINE_REMOVE, "run": DEADLINE_CREATE,
              "create": DEADLINE_CREATE, "exec": DEADLINE_KILL_EXEC,
              "volume": DEADLINE_CHANGE, "pull": DEADLINE_PULL,
              "build": DEADLINE_BUILD}


class EngineTimeout(DockerError):
    """A docker call did not finish by its deadline while the daemon still answers: the
    engine is wedged on one container (exit 7)."""


def deadline_for(argv: Sequence[str]) -> float:
    """The default deadline of a docker call, by its subcommand."""
    return _DEADLINES.get(argv[1] if len(argv) > 1 else "", DEADLINE_QUERY)


def _target(argv: Sequence[str]) -> str:
    """The container (or image) a call is about, for messages: its last operand."""
    operands = [a for a in argv[2:] if not a.startswith("-")]
    return operands[-1] if operands and argv[1] in ("inspect", "rm", "kill") else ""


def timed_out(argv: Sequence[str], seconds: float, subject: str = "") -> SandboxError:
    """The error for a docker call that missed its deadline: DockerUnavailable (exit 5) when
    the daemon does not answer at all, else EngineTimeout (exit 7) naming SUBJECT (default:
    the call's container) and what to do."""
    call = f"docker {argv[1] if len(argv) > 1 else ''}".rstrip()
    if not _daemon_answers():
        return DockerUnavailable(f"the Docker daemon does not answer ({call} took over "
                                 f"{seconds:g}s): check it with `sandbox doctor`")
    subject = subject or _target(argv)
    about = f" on {subject}" if subject else ""
    return EngineTimeout(
        f"{call}{about} did not finish within {seconds:g}s: the engine is stuck on that "
        f"container (a process in it may have frozen a docker exec); `sandbox purge NAME` "
        f"removes it (as root on the engine's host, through its cgroup)",
        list(argv), -1, "")


def _daemon_answers() -> bool:
    """True when `docker version` gets the server's answer within DEADLINE_PROBE."""
    try:
        proc = subprocess.run([docker_binary(), "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, stdin=subprocess.DEVNULL,
                              env=engine.client_env(),
                              timeout=DEADLINE_PROBE)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def run_docker(argv: Sequence[str], *, env: dict[str, str] | None = None,
               input_bytes: bytes | None = None, check: bool = True,
               timeout: float | None = None,
               ) -> subprocess.CompletedProcess[str]:
    """Run docker and capture its output as text; raise a typed error when it fails, or
    when it has not finished within TIMEOUT seconds (default: deadline_for(argv)), after
    killing the client."""
    _trace(argv)
    seconds = deadline_for(argv) if timeout is None else timeout
    try:
        proc = subprocess.run(
            list(argv), input=input_bytes.decode() if input_bytes is not None else None,
            capture_output=True, text=True, env=engine.client_env(env), errors="replace",
            stdin=None if input_bytes is not None else subprocess.DEVNULL, timeout=seconds,
        )
    except FileNotFoundError:
        raise DockerUnavailable(
            f"docker CLI not found ({argv[0]}): install Docker, or set SANDBOX_DOCKER"
        ) from None
    except subprocess.TimeoutExpired:  # run() has killed and reaped the client
        raise timed_out(argv, seconds) from None
    if check and proc.returncode != 0:
        raise classify_failure(argv, proc.returncode, proc.stderr)
    return proc


def popen_docker(argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start docker with caller-chosen streams (passthrough, pipes or stdin feed). Whoever
    waits for it bounds the wait (wait_docker, or the exec timeout)."""
    _trace(argv)
    try:
        kwargs["env"] = engine.client_env(kwargs.get("env"))  # type: ignore[arg-type]
        return subprocess.Popen(list(argv), **kwargs)  # type: ignore[call-overload, no-any-return]
    except FileNotFoundError:
        raise DockerUnavailable(
            f"docker CLI not found ({argv[0]}): install Docker, or set SANDBOX_DOCKER"
        ) from None


_POLL_MAX_MS = 2**31 - 1  # poll(2) takes an int of milliseconds


def wait_for(proc: subprocess.Popen[bytes], timeout: float | None) -> int:
    """proc.wait(timeout), woken by the child's exit itself (poll on a pidfd). Popen.wait with
    a timeout polls instead, sleeping up to 50 ms between looks: a 100 ms docker call was seen
    as late as 150 ms. Raises subprocess.TimeoutExpired as Popen.wait does, and on Ctrl-C
    gives the child (which had the same SIGINT) Popen's 0.25 s to end before re-raising."""
    if timeout is None or proc.returncode is not None:
        return proc.wait(timeout)
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # before Linux 5.3 (or Python 3.9): Popen's own wait
        return proc.wait(timeout)
    try:
        code = proc.poll()
        if code is not None:  # reaped meanwhile (by another thread): the pid may be reused
            return code
        import select  # loaded already: subprocess imports it
        import time

        exited = select.poll()
        exited.register(pidfd, select.POLLIN)
        end = time.monotonic() + timeout
        while not exited.poll(min(_POLL_MAX_MS, max(0, int((end - time.monotonic()) * 1000)
                                                    + 1))):
            if time.monotonic() >= end:  # a wait longer than poll's maximum goes round again
                raise subprocess.TimeoutExpired(proc.args, timeout)
    except KeyboardInterrupt:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(0.25)
        raise
    finally:
        os.close(pidfd)
    return proc.wait()  # the child has exited: this reaps it at once


def wait_docker(proc: subprocess.Popen[bytes], argv: Sequence[str],
                timeout: float | None = None) -> int:
    """Wait for a started docker client until its deadline (default: deadline_for(argv));
    past it, kill the client and raise as run_docker does."""
    seconds = deadline_for(argv) if timeout is None else timeout
    try:
        return wait_for(proc, seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise timed_out(argv, seconds) from None


def stream_to_stderr(argv: Sequence[str], *, env: dict[str, str] | None = None) -> int:
    """Run docker with both its streams on our stderr (progress is talk, not data)."""
    proc = popen_docker(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                        stderr=sys.stderr.fileno(), env=env)
    return wait_docker(proc, argv)
