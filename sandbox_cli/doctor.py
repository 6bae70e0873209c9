"""`sandbox doctor`: is everything sandbox needs in place? Each problem comes with its fix."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from . import config, docker
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
    try:
        version = json.loads(docker.run_docker(docker.version_argv()).stdout or "{}")
        server = version.get("Server") or {}
        client = version.get("Client") or {}
        detail = (f"engine {server.get('Version', '?')}, API {server.get('ApiVersion', '?')}"
                  f" (client API {client.get('ApiVersion', '?')})")
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
    try:
        info = json.loads(docker.run_docker(docker.info_argv()).stdout or "{}")
        runtimes = sorted((info.get("Runtimes") or {}).keys())
    except (SandboxError, ValueError):
        runtimes = []
    has_gvisor = "runsc" in runtimes
    checks.append(_check("runtimes", True,
                         ", ".join(runtimes) + ("" if has_gvisor else
                                                " (runsc/gVisor not installed: optional, "
                                                "adds a kernel boundary via --runtime runsc)")))
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
