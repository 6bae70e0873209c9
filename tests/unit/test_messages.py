"""Message style: plurals, units, and docker's many ways of saying the daemon is unreachable."""

from __future__ import annotations

import pytest

from sandbox_cli import docker, ui
from sandbox_cli.errors import DockerUnavailable, SandboxNotFound


@pytest.mark.parametrize(("count", "noun", "plural", "shown"), [
    (0, "file", None, "0 files"), (1, "file", None, "1 file"), (2, "link", None, "2 links"),
    (1, "sandbox", "sandboxes", "1 sandbox"), (3, "sandbox", "sandboxes", "3 sandboxes"),
])
def test_plural(count: int, noun: str, plural: str | None, shown: str) -> None:
    assert ui.plural(count, noun, plural) == shown


@pytest.mark.parametrize(("seconds", "shown"), [
    (1, "1 s"), (1.5, "1.5 s"), (59, "59 s"), (90, "90 s"), (300, "5 min"),
    (3600, "1 h"), (5400, "1 h 30 min"), (86400, "24 h"),
])
def test_duration_has_a_unit(seconds: float, shown: str) -> None:
    assert ui.duration(seconds) == shown


@pytest.mark.parametrize("stderr", [
    "Cannot connect to the Docker daemon at unix:///nonexistent. Is the docker daemon running?",
    "docker: Cannot connect to the Docker daemon at tcp://127.0.0.1:1. Is the docker daemon "
    "running?\n\nRun 'docker run --help' for more information",
    'error during connect: Get "http://nowhere.invalid:2375/v1.50/containers/json": dial tcp: '
    "lookup nowhere.invalid: no such host",
    "Failed to initialize: unable to resolve docker endpoint: context \"nope\": context not found",
    "dial unix /var/run/docker.sock: connect: no such file or directory",
    "dial tcp 127.0.0.1:2375: connect: connection refused",
])
def test_unreachable_daemon_is_recognised(stderr: str) -> None:
    failure = docker.classify_failure(["docker", "ps"], 1, stderr)
    assert isinstance(failure, DockerUnavailable) and failure.exit_code == 5
    assert failure.message.startswith("cannot reach the Docker daemon")
    assert failure.message.endswith("(try `sandbox doctor`)")
    assert "doctor" not in failure.reason


def test_unreachable_names_the_address() -> None:
    failure = docker.classify_failure(["docker", "inspect"], 1, "[]\nCannot connect to the "
                                      "Docker daemon at unix:///x.sock. Is the docker daemon "
                                      "running?")
    assert "at unix:///x.sock:" in failure.message


def test_missing_container_stays_not_found() -> None:
    failure = docker.classify_failure(["docker", "inspect"], 1, "Error: No such container: x")
    assert isinstance(failure, SandboxNotFound)


def test_a_registry_the_daemon_cannot_reach_is_not_an_unreachable_daemon() -> None:
    failure = docker.classify_failure(["docker", "pull", "x"], 1, (
        'Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp: lookup '
        "registry-1.docker.io on 10.255.255.53:53: no such host"))
    assert not isinstance(failure, DockerUnavailable)
