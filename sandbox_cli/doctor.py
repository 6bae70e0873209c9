"""`sandbox doctor`: is everything sandbox needs in place? Each problem comes with its fix."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from . import config, docker, engine
from .errors import DockerUnavailable, SandboxError
from .state import StateStore


def _check(name: str, ok: bool, detail: str, fix: str = "") -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix}


def run_checks(store: StateStore) -> list[dict[str, Any]]:
    """All checks, in the order a person would fix them."""
    checks = []
    binary = docker.docker_binary()
    found = shutil.which(binary)
    checks.append(_check("docker CLI", found is not None, found or f"{binary} not on PATH",
                         "install Docker (https://docs.docker.com/engine/install/) "
                         "or set SANDBOX_DOCKER"))
    if found is None:
        return [*checks, _state_check(store)]
    server: dict[str, Any] = {}
    version: dict[str, Any] = {}
    try:
        version = json.loads(docker.run_docker(docker.version_argv()).stdout or "{}")
        server = version.get("Server") or {}
        client = version.get("Client") or {}
        detail = (f"engine {server.get('Version') or client.get('Version', '?')}, API "
                  f"{server.get('ApiVersion') or client.get('APIVersion', '?')}"
                  f" (client API {client.get('ApiVersion') or client.get('APIVersion', '?')})")
        checks.append(_check("docker daemon", True, detail))
    except (SandboxError, ValueError) as exc:
        # The reason alone: doctor must not tell you to run doctor.
        message = (exc.reason if isinstance(exc, DockerUnavailable)
                   else exc.message if isinstance(exc, SandboxError)
                   else f"unreadable answer from `docker version`: {exc}")
        checks.append(_check("docker daemon", False, message,
                             "start it (`sudo systemctl start docker`, or `dockerd &`), check "
                             "DOCKER_HOST, and make sure your user may use it (docker group)"))
        return [*checks, _state_check(store)]
    eng = engine.current()
    checks.append(_engine_check(eng, server, version))
    image = os.environ.get("SANDBOX_IMAGE") or config.DEFAULT_IMAGE
    probe_image = _any_image(image)
    checks.append(_runtimes_check(eng, probe_image))
    checks.append(_storage_check(eng, probe_image))
    image = os.environ.get("SANDBOX_IMAGE") or config.DEFAULT_IMAGE
    present = docker.run_docker(docker.image_inspect_argv(image), check=False).returncode == 0
    checks.append(_check("default image", present,
                         f"{image} is present" if present else f"{image} is not present locally",
                         f"`docker pull {image}` (or it is pulled on the first start), or set "
                         "SANDBOX_IMAGE to an image you have"))
    checks.append(_state_check(store))
    checks.append(_disk_check())
    return checks


def _disk_check() -> dict[str, Any]:
    """Can /app be size-capped here? Not a failure when not: start says so each time."""
    from .disk import supported

    reason = supported()
    if reason is None:
        return _check("disk cap", True, "/app is a size-capped image (--disk, default 1g); "
                      "the root file system is read-only")
    return _check("disk cap", True, f"/app is NOT capped: {reason}; set `disk: unlimited` "
                  "in your config to accept, or run as root")


def _state_check(store: StateStore) -> dict[str, Any]:
    try:
        store.ensure_dirs()
        probe = os.path.join(store.home, ".doctor-probe")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.unlink(probe)
        return _check("state folder", True, store.home)
    except OSError as exc:
        return _check("state folder", False, f"{store.home}: {exc.strerror}",
                      "set SANDBOX_HOME to a writable folder")
    except SandboxError as exc:  # not ours, or a link: refused before anything is written
        return _check("state folder", False, exc.message,
                      "set SANDBOX_HOME to a folder of your own")


def _engine_check(eng: engine.Engine, server: dict[str, Any],
                  version: dict[str, Any]) -> dict[str, Any]:
    """Docker or Podman, its version, local or remote, and where DOCKER_HOST/context point."""
    client = version.get("Client") or {}
    number = server.get("Version") or client.get("Version") or "?"
    where = [eng.where]
    if os.environ.get("DOCKER_HOST"):
        where.append(f"DOCKER_HOST={os.environ['DOCKER_HOST']}")
    if eng.context:
        where.append(f"context {eng.context}")
    kind = "Podman" if eng.podman else "Docker"
    return _check("engine", True, f"{kind} {number}, {', '.join(dict.fromkeys(where))}")


def _any_image(preferred: str) -> str:
    """PREFERRED when present, else any image the engine has ('' when none): the probes
    below create containers and never pull."""
    if docker.run_docker(docker.image_inspect_argv(preferred), check=False).returncode == 0:
        return preferred
    argv = [docker.docker_binary(), "images", "--format", "{{.Repository}}:{{.Tag}}"]
    listed = docker.run_docker(argv, check=False).stdout.split()
    return next((ref for ref in listed if not ref.endswith(":<none>")), "")


def _runtimes_check(eng: engine.Engine, image: str) -> dict[str, Any]:
    """The runtimes on offer, and whether gVisor's runsc runs a container here."""
    if eng.podman:
        return _check("runtimes", True, "none listed (Podman runs the one OCI runtime of "
                      "its containers.conf; --runtime names another installed one)")
    runtimes = sorted(eng.runtimes())
    if "runsc" not in runtimes:
        return _check("runtimes", True, ", ".join(runtimes) + " (runsc/gVisor not installed: "
                      "optional, adds a kernel boundary via --runtime runsc)")
    if not image:
        return _check("runtimes", True, ", ".join(runtimes) + " (runsc not tried: no image)")
    argv = [docker.docker_binary(), "run", "--rm", "--pull", "never", "--runtime", "runsc",
            "--network", "none", "--entrypoint", "true", image]
    proc = docker.run_docker(argv, check=False, timeout=60)
    usable = "runsc usable" if proc.returncode == 0 else (
        f"runsc NOT usable: {engine.error_line(proc.stderr)}")
    return _check("runtimes", True, f"{', '.join(runtimes)} ({usable})")


def _storage_check(eng: engine.Engine, image: str) -> dict[str, Any]:
    """What `storage: auto` picks at each start, and whether the engine sees this host's
    files (a bind of a fresh folder is accepted). A remote engine (tcp://, ssh://, a
    context) gets a volume without a try: a bind there could meet a folder of the same path
    on that host (another home's sandbox of the same name), not ours."""
    seen = _sees_files(image)
    if not eng.local:
        hint = (" It does see this host's files (a fresh folder bound): `--storage bind` "
                "would work and is faster" if seen is True else "")
        return _check("storage", True, f"auto picks volume: the engine is remote "
                      f"(/app is an engine volume, reached through docker cp).{hint}")
    if seen is True:
        return _check("storage", True, "auto picks bind: the engine sees this host's files "
                      "(/app is a host folder)")
    if seen is False:
        return _check("storage", True, "auto picks volume: the engine cannot see this "
                      "host's files (/app is an engine volume, reached through docker cp)")
    return _check("storage", True, f"auto decides at start ({seen})")


def _sees_files(image: str) -> bool | str:
    """Whether the engine accepts a bind of a fresh folder of this host; a string saying
    why that is not known (no image, another failure)."""
    import tempfile

    if not image:
        return "no image to probe with"
    folder = tempfile.mkdtemp(prefix="sandbox-doctor-")
    argv = [docker.docker_binary(), "create", "--pull", "never", "--network", "none",
            "--mount", f"type=bind,source={folder},target=/probe", "--entrypoint", "true",
            image]
    try:
        proc = docker.run_docker(argv, check=False)
    finally:
        os.rmdir(folder)
    if proc.returncode == 0:
        docker.run_docker(docker.remove_argv([proc.stdout.strip()]), check=False)
        return True
    if engine.bind_refused(proc.stderr):
        return False
    return f"probe failed: {engine.error_line(proc.stderr)}"
