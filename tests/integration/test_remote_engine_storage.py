"""A remote engine address (tcp://) that happens to reach this very machine's engine, as
`DOCKER_HOST=ssh://root@localhost` or a context can: `storage: auto` picks an engine volume
without trying a bind (on another host, the same path could be someone else's folder), and
`doctor` says that, not "bind", adding that a bind would work here.

The tcp:// address is a forwarder in this test to the local engine's unix socket."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import BUSYBOX_IMAGE, Runner

SOCKET = "/var/run/docker.sock"


class _Forward(socketserver.BaseRequestHandler):
    """One client connection, relayed both ways to the engine's unix socket."""

    def handle(self) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(SOCKET)
        pumps = [threading.Thread(target=_pump, args=(self.request, upstream), daemon=True),
                 threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join(timeout=300)
        upstream.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(1 << 16):
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)  # a half-close (exec's stdin end) goes on
    except OSError:
        pass


@pytest.fixture
def tcp_engine(docker_engine: None) -> Iterator[dict[str, str]]:
    """The environment of a tcp:// DOCKER_HOST that reaches the local engine."""
    # (SANDBOX_DOCKER and DOCKER_CONTEXT may be left set by the in-process API tests.)
    if os.environ.get("DOCKER_HOST") or "podman" in os.environ.get("SANDBOX_DOCKER", ""):
        pytest.fail("run this test against the main local engine (no DOCKER_HOST)")
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Forward)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"DOCKER_HOST": f"tcp://127.0.0.1:{server.server_address[1]}",
               "DOCKER_CONTEXT": ""}
    finally:
        server.shutdown()
        server.server_close()


def test_remote_address_gets_a_volume_and_doctor_says_so(tcp_engine: dict[str, str],
                                                         sandbox: Runner) -> None:
    env = {**tcp_engine, "SANDBOX_IMAGE": BUSYBOX_IMAGE}
    doctor = sandbox("doctor", "--json", env=env, timeout=120)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    detail = checks["storage"]["detail"]
    assert detail.startswith("auto picks volume: the engine is remote"), detail
    assert "--storage bind` would work" in detail
    name = sandbox("start", "--image", BUSYBOX_IMAGE, env=env, check=True).stdout.decode().strip()
    try:
        rows = {r["name"]: r for r in json.loads(sandbox("ls", "--json", env=env,
                                                         check=True).stdout)}
        assert rows[name]["storage"] == "volume"
        assert sandbox("write", name, "f.txt", "over tcp", env=env).returncode == 0
        assert sandbox("read", name, "f.txt", env=env).stdout == b"over tcp"
        assert sandbox("exec", name, "cat", "/app/f.txt", env=env).stdout == b"over tcp"
    finally:
        sandbox("purge", name, env=env)
