"""Names, ports, durations, env keys and image references (which may come straight from a
model's output) are refused before any docker call: exit code 2, one line on stderr, and docker
never runs (a fake SANDBOX_DOCKER records every call)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, Runner

IMG = ("--image", BUSYBOX_IMAGE)

BAD_INPUTS = {
    # names
    "name-leading-dash": ["start", *IMG, "--name=-rm"],
    "name-too-long": ["start", *IMG, "--name", "a" * 64],
    "name-space": ["start", *IMG, "--name", "a b"],
    "name-climbs": ["start", *IMG, "--name", "../x"],
    "name-slash": ["start", *IMG, "--name", "a/b"],
    "name-one-char": ["start", *IMG, "--name", "a"],
    "exec-name-climbs": ["exec", "../x", "true"],
    "read-name-space": ["read", "a b", "f"],
    "write-name-dash": ["write", "--", "-x", "f", "data"],
    "purge-name-climbs": ["purge", "../../victim"],
    # ports
    "port-zero": ["start", *IMG, "--network", "-p", "0"],
    "port-too-big": ["start", *IMG, "--network", "-p", "70000"],
    "port-word": ["start", *IMG, "--network", "-p", "abc"],
    "port-five-part-ip": ["start", *IMG, "--network", "-p", "1.2.3.4.5:80:80"],
    "port-bad-proto": ["start", *IMG, "--network", "-p", "80/icmp"],
    "port-option-smuggled": ["start", *IMG, "--network", "-p", "80 --privileged"],
    # durations
    "ttl-negative": ["start", *IMG, "--ttl=-5s"],
    "ttl-word": ["start", *IMG, "--ttl", "abc"],
    "ttl-zero": ["start", *IMG, "--ttl", "0"],
    "timeout-negative": ["exec", "--timeout=-5s", "some-box", "true"],
    "timeout-word": ["exec", "--timeout", "abc", "some-box", "true"],
    "timeout-negative-number": ["exec", "--timeout=-5", "some-box", "true"],
    "timeout-zero": ["exec", "--timeout", "0", "some-box", "true"],
    # env keys
    "env-leading-digit": ["start", *IMG, "-e", "1X=y"],
    "env-space": ["start", *IMG, "-e", "A B=c"],
    "env-option-smuggled": ["start", *IMG, "-e", "--privileged=1"],
    "exec-env-leading-digit": ["exec", "-e", "1X=y", "some-box", "true"],
    # image references
    "image-upper": ["start", "--image", "UPPER/Case"],
    "image-dash": ["start", "--image=-bad"],
    "image-space": ["start", "--image", "a b"],
    "image-option-smuggled": ["start", "--image=--privileged"],
}


@pytest.mark.parametrize("argv", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_refused_before_docker(argv: list[str], sandbox: Runner, home: Path,
                                         fake_docker: tuple[Path, dict[str, str]]) -> None:
    log, env = fake_docker
    proc = sandbox(*argv, env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("sandbox: error: invalid "), err
    assert not log.exists(), f"docker was called: {log.read_text()}"
    assert not (home / "volumes").exists() or os.listdir(home / "volumes") == []


def test_the_fake_docker_does_see_valid_input(sandbox: Runner, home: Path,
                                              fake_docker: tuple[Path, dict[str, str]]) -> None:
    # The control: good input reaches docker, so the test above would notice a call.
    log, env = fake_docker
    proc = sandbox("start", *IMG, "--name", "good-name", "--network", "-p", "8080:80",
                   "--ttl", "5m", "-e", "GOOD_KEY=v", env=env)
    assert proc.returncode != 0
    calls = log.read_text().splitlines() if log.exists() else []  # one call a line
    assert any(call.startswith("run ") for call in calls)
    assert "Traceback" not in proc.stderr.decode()
    assert os.listdir(home / "volumes") == []  # the failed start cleaned its folder up
