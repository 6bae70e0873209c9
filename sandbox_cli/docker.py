"""The docker CLI: pure argv builders, and the one place that runs `docker`.

Builders return lists and never touch the system, so tests check exact argv without a daemon.
`run_docker` / `popen_docker` are the only calls of the docker binary in the package; they map
failures to typed errors that carry argv, return code and stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

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
EXEC_MARKER = "SANDBOX_EXEC_ID"  # env var that tags every process an exec starts
WORKDIR = "/app"
SLEEP_FOREVER = "2147483647"  # seconds; `sleep infinity` is not understood by every sleep


def docker_binary() -> str:
    """The docker client to run, as an absolute path when it can be found: $SANDBOX_DOCKER,
    else `docker`, looked up in our own PATH (never in an environment built for a child)."""
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


@dataclass
class RunSpec:
    """Everything `docker run` needs to start one sandbox container."""

    name: str
    image: str
    volume: str
    user: str
    home_label: str
    ttl_seconds: int | None  # None: never expires (--keep, or run's one-shot containers)
    expires_at: str = ""
    keep: bool = False  # survives a bare purge
    network: bool = False
    ports: list[str] = field(default_factory=list)  # normalised IP:HOST:CONTAINER/PROTO
    env_file: str | None = None  # see env_file(): values never travel on the argv
    default_home: bool = True  # HOME=/tmp unless the user's -e sets HOME (-e would lose)
    memory: str = "1g"
    cpus: float = 1.0
    pids_limit: int = 256
    read_only: bool = False
    tmpfs_size: str = "64m"
    runtime: str | None = None
    cap_add: list[str] = field(default_factory=list)
    network_options: list[str] = field(default_factory=list)  # replaces --network (egress)


def run_argv(spec: RunSpec) -> list[str]:
    """`docker run -d ...` for a locked-down sandbox whose main process sleeps out its TTL.

    With --rm, Docker removes the container when that sleep ends: expiry needs no daemon of ours.
    """
    sleep_for = SLEEP_FOREVER if spec.ttl_seconds is None else str(spec.ttl_seconds)
    return [docker_binary(), "run", "-d", "--rm", "--pull", "never", *_container_options(spec),
            "--entrypoint", "sleep", spec.image, sleep_for]


def create_argv(spec: RunSpec, command: Sequence[str], *, workdir: str | None = None,
                stdin: bool = False, tty: bool = False) -> list[str]:
    """`docker create --rm ...` of a one-shot sandbox whose main process is COMMAND itself
    (run without the image's entrypoint, as exec would). Started with start_attached_argv."""
    argv = [docker_binary(), "create", "--rm", "--pull", "never", *_container_options(spec)]
    if workdir:
        argv += ["--workdir", workdir]
    if stdin:
        argv.append("--interactive")
    if tty:
        argv.append("--tty")
    return [*argv, "--entrypoint", command[0], spec.image, *command[1:]]


def start_attached_argv(name: str, *, stdin: bool = False) -> list[str]:
    """`docker start --attach`: its exit code is the container's."""
    return [docker_binary(), "start", "--attach", *(["--interactive"] if stdin else []), name]


def _container_options(spec: RunSpec) -> list[str]:
    """The flags every sandbox container gets: identity, labels, lockdown, limits, mount."""
    argv = [
        "--name", spec.name, "--hostname", spec.name,
        "--label", f"{LABEL_MANAGED}=1",
        "--label", f"{LABEL_HOME}={spec.home_label}",
        "--label", f"{LABEL_NAME}={spec.name}",
        "--label", f"{LABEL_KEEP}={1 if spec.keep else 0}",
        "--label", f"{LABEL_EXPIRES}={spec.expires_at}",
        *(spec.network_options or ["--network", "bridge" if spec.network else "none"]),
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--user", spec.user,
        "--pids-limit", str(spec.pids_limit),
        "--memory", spec.memory, "--memory-swap", spec.memory,
        "--cpus", f"{spec.cpus:g}",
        "--init",
        "--log-driver", "json-file", "--log-opt", "max-size=1m", "--log-opt", "max-file=1",
        *(["--env", "HOME=/tmp"] if spec.default_home else []),  # the user's uid has no home
        "--mount", _bind_mount(spec.volume, WORKDIR),
        "--workdir", WORKDIR,
    ]
    for cap in spec.cap_add:
        argv += ["--cap-add", cap]
    if spec.read_only:
        argv += ["--read-only", "--tmpfs", f"/tmp:rw,nosuid,nodev,size={spec.tmpfs_size}"]
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


def exec_argv(name: str, command: Sequence[str], *, marker: str, env_file: str | None = None,
              workdir: str | None = None, stdin: bool = False, tty: bool = False) -> list[str]:
    """`docker exec` of COMMAND (an argv, never a shell string), tagged with an exec marker."""
    argv = [docker_binary(), "exec"]
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
# did ($2, clock ticks since boot). Nothing a process does (scrubbing its environment, setsid,
# double forks, faking a marker) changes its start time, so nothing it started escapes; the
# price is that other execs' processes begun after this one end too. Frozen with SIGSTOP first
# so none can fork away while we look; repeated until a pass finds nothing. POSIX sh, tr, grep.
KILL_SCRIPT = r"""
id="$1"; since="$2"; me=$$; frozen=" "; sids=" "
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


def kill_exec_argv(name: str, marker: str, since_ticks: int | None = None) -> list[str]:
    """`docker exec` of the script that ends every process the exec tagged MARKER started and
    every process that began at or after SINCE_TICKS (clock ticks since boot)."""
    since = "" if since_ticks is None else str(since_ticks)
    return [docker_binary(), "exec", name, "sh", "-c", KILL_SCRIPT, "sandbox-kill", marker, since]


def remove_argv(names: Sequence[str]) -> list[str]:
    """`docker rm -f` of several containers at once."""
    return [docker_binary(), "rm", "-f", *names]


def list_argv(home_label: str) -> list[str]:
    """`docker ps -a` of this home's sandboxes, one JSON object a line."""
    return [docker_binary(), "ps", "-a", "--no-trunc",
            "--filter", f"label={LABEL_MANAGED}=1",
            "--filter", f"label={LABEL_HOME}={home_label}",
            "--format", "{{json .}}"]


def networks_argv(name: str) -> list[str]:
    """`docker inspect` printing the networks a container is attached to."""
    return [docker_binary(), "inspect", "--type", "container",
            "--format", "{{json .NetworkSettings.Networks}}", name]


def state_argv(name: str) -> list[str]:
    """`docker inspect` printing a container's status (running, paused, exited, ...)."""
    return [docker_binary(), "inspect", "--type", "container", "--format", "{{.State.Status}}",
            name]


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


def classify_failure(argv: Sequence[str], returncode: int, stderr: str) -> SandboxError:
    """Choose the error class for a failed docker command from its stderr."""
    text = stderr.strip()
    low = text.lower()
    first = next((line for line in text.splitlines() if line.strip()), f"exit code {returncode}")
    first = first.removeprefix("docker: ").removeprefix("Error response from daemon: ")
    if "cannot connect to the docker daemon" in low or "is the docker daemon running" in low:
        return DockerUnavailable(
            "cannot reach the Docker daemon: is it running? (try `sandbox doctor`)"
        )
    if "permission denied while trying to connect" in low:
        return DockerUnavailable(
            "permission denied talking to the Docker daemon: add your user to the docker group"
        )
    if "no such container" in low or "is not running" in low:
        return SandboxNotFound(f"container not found or not running: {first}")
    if "is already in use by container" in low:
        return NameInUse(f"name already in use by another container: {first}")
    if ("no such image" in low or "unable to find image" in low or "pull access denied" in low
            or "manifest unknown" in low or "repository does not exist" in low
            or "not found: manifest" in low):
        return ImageError(f"image not available: {first}")
    if "unknown or invalid runtime" in low or "unknown runtime" in low:
        return DockerError(f"runtime not available: {first}", list(argv), returncode, text)
    return DockerError(f"docker {argv[1] if len(argv) > 1 else ''} failed: {first}",
                       list(argv), returncode, text)


def run_docker(argv: Sequence[str], *, env: dict[str, str] | None = None,
               input_bytes: bytes | None = None, check: bool = True,
               ) -> subprocess.CompletedProcess[str]:
    """Run docker and capture its output as text; raise a typed error when it fails."""
    _trace(argv)
    try:
        proc = subprocess.run(
            list(argv), input=input_bytes.decode() if input_bytes is not None else None,
            capture_output=True, text=True, env=env, errors="replace",
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise DockerUnavailable(
            f"docker CLI not found ({argv[0]}): install Docker, or set SANDBOX_DOCKER"
        ) from None
    if check and proc.returncode != 0:
        raise classify_failure(argv, proc.returncode, proc.stderr)
    return proc


def popen_docker(argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start docker with caller-chosen streams (passthrough, pipes or stdin feed)."""
    _trace(argv)
    try:
        return subprocess.Popen(list(argv), **kwargs)  # type: ignore[call-overload, no-any-return]
    except FileNotFoundError:
        raise DockerUnavailable(
            f"docker CLI not found ({argv[0]}): install Docker, or set SANDBOX_DOCKER"
        ) from None


def stream_to_stderr(argv: Sequence[str], *, env: dict[str, str] | None = None) -> int:
    """Run docker with both its streams on our stderr (progress is talk, not data)."""
    proc = popen_docker(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                        stderr=sys.stderr.fileno(), env=env)
    return proc.wait()
