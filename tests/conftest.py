"""Shared fixtures. Tests marked `docker` drive the real engine and FAIL (never skip) when it or
the local test images are missing: run `sudo scripts/setup-engine.sh` first, or deselect them
with `-m "not docker"`."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BUSYBOX_IMAGE = os.environ.get("SANDBOX_TEST_BUSYBOX_IMAGE", "sandbox-test/busybox:latest")
PYTHON_IMAGE = os.environ.get("SANDBOX_TEST_PYTHON_IMAGE", "sandbox-test/python:bookworm")

CLI = [sys.executable, "-m", "sandbox_cli"]
# The engine the suite drives: SANDBOX_DOCKER (a podman wrapper, say) or docker, with the
# environment's DOCKER_HOST (scripts/setup-engines.sh run ENGINE -- ... sets both).
DOCKER = os.environ.get("SANDBOX_DOCKER") or "docker"


@pytest.fixture(autouse=True)
def engine_per_test() -> Iterator[None]:
    """Each test starts on the environment's engine, detected afresh, as each CLI command
    (a process of its own) does: a test that calls the core in-process (require, the kill)
    chooses a record's engine for this thread, which must not steer the next test's calls."""
    from sandbox_cli import engine

    with engine.kept():
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is a docker test."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Fail loudly when the engine or the test images are missing."""
    if shutil.which(DOCKER) is None:
        pytest.fail("docker CLI not found: run scripts/setup-engine.sh (or -m 'not docker')")
    info = subprocess.run([DOCKER, "info"], capture_output=True, text=True)
    if info.returncode != 0:
        pytest.fail("Docker daemon unreachable: run scripts/setup-engine.sh (or -m 'not docker')")
    for image in (BUSYBOX_IMAGE, PYTHON_IMAGE):
        found = subprocess.run([DOCKER, "image", "inspect", image], capture_output=True)
        if found.returncode != 0:
            pytest.fail(f"test image {image} missing: run scripts/setup-engine.sh")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SANDBOX_HOME, and no config files or SANDBOX_* settings from the machine
    (but the engine's: SANDBOX_DOCKER, and the runtime the engine matrix chose, gVisor's)."""
    engine_keys = {"SANDBOX_DOCKER"} | ({"SANDBOX_RUNTIME"}
                                        if os.environ.get("SANDBOX_TEST_ENGINE") else set())
    for key in list(os.environ):
        if key.startswith("SANDBOX_") and key not in engine_keys:
            monkeypatch.delenv(key)
    path = tmp_path / "home"
    monkeypatch.setenv("SANDBOX_HOME", str(path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("NO_COLOR", "1")
    return path


Runner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def sandbox(home: Path, tmp_path: Path) -> Runner:
    """Run the CLI as a user would (a real process, real stdin/stdout), returning bytes."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)

    def run(*args: str, input: bytes | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([*CLI, *args], input=input, capture_output=True,
                              cwd=cwd or workdir, env=full_env, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"sandbox {' '.join(args)} -> {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    return run


@pytest.fixture
def fake_docker(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A docker stand-in that records each call and fails: (its log, env setting it up)."""
    log = tmp_path / "docker-calls.log"
    script = tmp_path / "fake-docker"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\necho "fake docker" >&2\nexit 1\n')
    script.chmod(0o755)
    return log, {"SANDBOX_DOCKER": str(script)}


def _start(sandbox: Runner, image: str, *extra: str) -> str:
    name = "t-" + uuid.uuid4().hex[:10]
    sandbox("start", "--name", name, "--image", image, *extra, check=True)
    return name


@pytest.fixture
def box(docker_engine: None, sandbox: Runner) -> Iterator[str]:
    """A running busybox sandbox, purged afterwards."""
    name = _start(sandbox, BUSYBOX_IMAGE)
    yield name
    sandbox("purge", name)


@pytest.fixture
def pybox(docker_engine: None, sandbox: Runner) -> Iterator[str]:
    """A running Python sandbox, purged afterwards."""
    name = _start(sandbox, PYTHON_IMAGE)
    yield name
    sandbox("purge", name)


@pytest.fixture
def start_box(docker_engine: None, sandbox: Runner) -> Iterator[Callable[..., str]]:
    """Start sandboxes with extra flags; all are purged afterwards."""
    started: list[str] = []

    def start(*extra: str, image: str = BUSYBOX_IMAGE) -> str:
        name = _start(sandbox, image, *extra)
        started.append(name)
        return name

    yield start
    if started:
        sandbox("purge", *started)


def docker_inspect(name: str, fmt: str) -> str:
    """`docker inspect -f FMT NAME`, stripped."""
    return subprocess.run([DOCKER, "inspect", "-f", fmt, name], capture_output=True,
                          text=True, check=True).stdout.strip()


def typer_imported(proc: subprocess.CompletedProcess[bytes]) -> bool:
    """Whether a CLI run under PYTHONPROFILEIMPORTTIME imported typer; the import lines are
    taken out of its stderr, which is left as the user would see it."""
    lines = proc.stderr.splitlines(keepends=True)
    seen = any(line.startswith(b"import time:") and line.rstrip().endswith(b"| typer")
               for line in lines)
    proc.stderr = b"".join(line for line in lines if not line.startswith(b"import time:"))
    return seen


def tree_of(root: Path) -> dict[str, bytes | None]:
    """Every entry below ROOT: files with their bytes, folders as None (a link fails)."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode), rel
        found[rel] = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
    return found
