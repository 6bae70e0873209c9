"""docker.wait_for: Popen.wait(timeout) woken by the child's exit (a pidfd), not by polling."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sandbox_cli import docker


def test_returns_the_exit_code() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    assert docker.wait_for(proc, 30) == 7
    assert proc.returncode == 7


def test_a_killed_child_reads_as_popen_says() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    assert docker.wait_for(proc, 30) == -9


def test_past_the_timeout_it_raises_and_leaves_the_child_alone() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            docker.wait_for(proc, 0.2)
        assert proc.poll() is None  # still running, still ours to kill and reap
    finally:
        proc.kill()
        assert docker.wait_for(proc, 30) == -9


def test_no_timeout_and_an_already_reaped_child() -> None:
    proc = subprocess.Popen(["true"])
    assert docker.wait_for(proc, None) == 0
    assert docker.wait_for(proc, 5) == 0  # reaped already: the recorded code


def test_a_deadline_beyond_polls_maximum_is_a_plain_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """poll(2) takes at most ~24.8 days of milliseconds: a longer --timeout goes round again
    instead of firing early (here poll's maximum is made 50 ms)."""
    monkeypatch.setattr(docker, "_POLL_MAX_MS", 50)
    proc = subprocess.Popen(["sleep", "0.3"])
    assert docker.wait_for(proc, 30) == 0
