"""exec --detach, logs, kill: a detached server reached through a published port and ended by
kill; logs bounded under a flood, out of the code's reach; purge ends detached processes; a
foreground timeout spares detached processes begun before it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sandbox_cli.background import LOG_CAP
from tests.conftest import PYTHON_IMAGE, Runner


def _processes(sandbox: Runner, name: str) -> list[dict]:
    rows = json.loads(sandbox("ls", "--json", check=True).stdout)
    (row,) = [r for r in rows if r["name"] == name]
    return row["processes"]


def _top(name: str) -> str:
    return subprocess.run(["docker", "top", name, "-o", "pid,args"], capture_output=True,
                          text=True, timeout=30).stdout


def _wait(check: Callable[[], bool], seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    return check()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


def test_detached_http_server_is_reached_through_its_port_and_ended_by_kill(
        start_box: Callable[..., str], sandbox: Runner) -> None:
    name = start_box("--network", "-p", "127.0.0.1::8000", image=PYTHON_IMAGE)
    (row,) = [r for r in json.loads(sandbox("ls", "--json", check=True).stdout)
              if r["name"] == name]
    host = row["ports"][0].split("->")[0]  # 127.0.0.1:49153
    ident = sandbox("exec", "--detach", name, "python3", "-m", "http.server", "8000",
                    check=True).stdout.decode().strip()
    assert len(ident) == 8
    url = f"http://{host}/"
    assert _wait(lambda: _get(url) == 200), "the detached server never answered"
    assert [p["id"] for p in _processes(sandbox, name)] == [ident]
    # its output is kept: http.server logs each request on stderr
    logs = sandbox("logs", name, ident, check=True)
    assert b"GET / HTTP" in logs.stderr

    ended = sandbox("kill", "--json", name, ident, check=True, timeout=60)
    assert json.loads(ended.stdout)["running"] is False
    assert _get(url) == 0
    assert "http.server" not in _top(name)
    assert _processes(sandbox, name) == []


def test_kill_ends_the_whole_tree_and_spares_other_detached_processes(
        start_box: Callable[..., str], sandbox: Runner) -> None:
    name = start_box()
    tree = sandbox("exec", "-d", name, "sh", "-c", "sleep 1001 & sleep 1002 & wait",
                   check=True).stdout.decode().strip()
    other = sandbox("exec", "-d", name, "sleep", "1003", check=True).stdout.decode().strip()
    assert _wait(lambda: "sleep 1002" in _top(name) and "sleep 1003" in _top(name))
    sandbox("kill", name, tree, check=True, timeout=60)
    top = _top(name)
    assert "sleep 1001" not in top and "sleep 1002" not in top
    assert "sleep 1003" in top
    assert [p["id"] for p in _processes(sandbox, name)] == [other]
    # already ended: kill says so and succeeds
    assert sandbox("kill", name, tree, check=True).returncode == 0
    assert sandbox("kill", name, "zzzz").returncode == 2
    assert sandbox("kill", name, "0123abcd").returncode == 3


def test_logs_stay_bounded_under_a_flood(start_box: Callable[..., str], sandbox: Runner,
                                         home: Path) -> None:
    name = start_box()
    ident = sandbox("exec", "-d", name, "yes", check=True).stdout.decode().strip()
    folder = home / "logs" / name / ident
    time.sleep(4)
    stored = sum(p.stat().st_size for p in folder.glob("stdout*.log"))
    assert 0 < stored <= LOG_CAP
    assert sandbox("logs", "--tail", "2", name, ident, check=True).stdout == b"y\ny\n"
    shown = sandbox("logs", name, check=True).stdout  # the latest process by default
    assert 0 < len(shown) <= LOG_CAP and set(shown) == set(b"y\n")
    sandbox("kill", name, ident, check=True, timeout=60)
    assert sum(p.stat().st_size for p in folder.glob("stdout*.log")) <= LOG_CAP
    # the logs live in the home, out of the code's reach
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert sandbox("exec", name, "ls", "/app", check=True).stdout == b""


def test_follow_prints_until_the_process_ends(start_box: Callable[..., str],
                                              sandbox: Runner) -> None:
    name = start_box()
    ident = sandbox("exec", "-d", name, "sh", "-c",
                    "for i in 1 2 3; do echo line$i; sleep 0.5; done; echo bye >&2; exit 3",
                    check=True).stdout.decode().strip()
    followed = sandbox("logs", "--follow", name, ident, check=True, timeout=60)
    assert followed.stdout == b"line1\nline2\nline3\n"
    assert followed.stderr == b"bye\n"


def test_purge_ends_detached_processes_and_their_relays(
        docker_engine: None, sandbox: Runner, home: Path) -> None:
    name = "t-bg-" + os.urandom(4).hex()
    sandbox("start", "--name", name, "--image", "sandbox-test/busybox:latest", check=True)
    try:
        ident = sandbox("exec", "-d", name, "sleep", "1004", check=True).stdout.decode().strip()
        relay = json.loads((home / "logs" / name / ident / "relay.json").read_text())
        assert os.path.exists(f"/proc/{relay['pid']}")
        sandbox("purge", name, check=True)
        assert _wait(lambda: not os.path.exists(f"/proc/{relay['pid']}")
                     or b"Z" in Path(f"/proc/{relay['pid']}/stat").read_bytes().split()[2:3])
        assert not (home / "logs" / name).exists()
    finally:
        sandbox("purge", name)


def test_foreground_timeout_spares_a_detached_process_begun_before_it(
        start_box: Callable[..., str], sandbox: Runner) -> None:
    name = start_box()
    ident = sandbox("exec", "-d", name, "sleep", "1005", check=True).stdout.decode().strip()
    assert _wait(lambda: "sleep 1005" in _top(name))
    timed = sandbox("exec", "--timeout", "1", name, "sleep", "30", timeout=60)
    assert timed.returncode == 124
    assert "sleep 1005" in _top(name)
    assert [p["id"] for p in _processes(sandbox, name)] == [ident]


def test_detach_refuses_timeout_and_tty(box: str, sandbox: Runner) -> None:
    assert sandbox("exec", "-d", "--timeout", "5", box, "true").returncode == 2
    assert sandbox("exec", "-d", "-t", box, "true").returncode == 2
    assert sandbox("logs", box).returncode == 3  # no detached process yet
