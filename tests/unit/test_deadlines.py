"""Every docker call has a deadline: a wedged engine gives one clear error, never a hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sandbox_cli import docker
from sandbox_cli.errors import EXIT_DOCKER, EXIT_DOCKER_UNAVAILABLE, DockerUnavailable


def _stand_in(tmp_path: Path, version_answers: bool) -> str:
    """A docker that hangs on every call; `docker version` answers when VERSION_ANSWERS."""
    script = tmp_path / "docker"
    answer = 'echo 20.10; exit 0' if version_answers else "exec sleep 60"
    script.write_text(f'#!/bin/sh\n[ "$1" = version ] && {{ {answer}; }}\nexec sleep 60\n')
    script.chmod(0o755)
    return str(script)


def test_a_call_past_its_deadline_names_the_container(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _stand_in(tmp_path, version_answers=True)
    monkeypatch.setenv("SANDBOX_DOCKER", fake)
    began = time.monotonic()
    with pytest.raises(docker.EngineTimeout) as caught:
        docker.run_docker([fake, "inspect", "--format", "x", "box-1"], timeout=0.5)
    assert time.monotonic() - began < 10
    assert caught.value.exit_code == EXIT_DOCKER
    assert "docker inspect on box-1 did not finish within 0.5s" in caught.value.message
    assert "sandbox purge" in caught.value.message


def test_a_daemon_that_does_not_answer_is_exit_5(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _stand_in(tmp_path, version_answers=False)
    monkeypatch.setenv("SANDBOX_DOCKER", fake)
    monkeypatch.setattr(docker, "DEADLINE_PROBE", 0.5)
    with pytest.raises(DockerUnavailable) as caught:
        docker.run_docker([fake, "ps", "-a"], timeout=0.5)
    assert caught.value.exit_code == EXIT_DOCKER_UNAVAILABLE


def test_every_kind_of_call_has_a_deadline() -> None:
    for sub in ("inspect", "ps", "rm", "kill", "run", "create", "exec", "pull", "build",
                "network", "version", "info", "image", "anything-else"):
        assert 0 < docker.deadline_for(["docker", sub]) < float("inf")
    assert docker.deadline_for(["docker", "rm", "-f", "x"]) <= 15  # purge goes round a wedge
