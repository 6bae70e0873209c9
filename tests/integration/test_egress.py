"""Egress by allow-list (`--allow-host`) against the real engine.

The tests start their own upstream servers as containers on a network of their own (the egress
network the proxy is given), with aliases `allowed.example.test` and `denied.example.test`, and
play a hostile sandbox that tries every way around the proxy. Nothing leaves this machine: the
only listeners are on the tests' own networks. Everything they create is removed, also on
failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, PYTHON_IMAGE, docker_inspect, typer_imported

SERVER = "python3 -m http.server 8000"
UDP_LISTENER = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',5353))\n"
    "while True:\n"
    "    data,addr=s.recvfrom(2048); print('GOT', data, addr, flush=True)\n"
)


def _docker(*args: str, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


class Upstream:
    """The tests' egress network and the servers on it."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.network = f"sandbox-test-egress-{tag}"
        self.containers: list[str] = []
        self.tag = tag

    def start(self) -> None:
        _docker("network", "create", "--label", "sandbox-test=1", self.network)
        for alias in ("allowed", "denied"):
            self._run(f"{alias}.example.test", "sh", "-c", SERVER)
        self._run("udp.example.test", "python3", "-u", "-c", UDP_LISTENER)
        deadline = time.monotonic() + 30
        for alias in ("allowed", "denied"):  # wait until both answer
            while True:
                probe = subprocess.run(
                    ["docker", "exec", f"{self.network}-{alias}", "python3", "-c",
                     "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/')"],
                    capture_output=True, timeout=30)
                if probe.returncode == 0:
                    break
                assert time.monotonic() < deadline, "upstream server did not come up"
                time.sleep(0.2)

    def _run(self, alias: str, *command: str) -> None:
        name = f"{self.network}-{alias.split('.')[0]}"
        self.containers.append(name)
        _docker("run", "-d", "--rm", "--name", name, "--label", "sandbox-test=1",
                "--network", self.network, "--network-alias", alias, "--user", "65534:65534",
                "--cap-drop", "ALL", "--entrypoint", command[0], PYTHON_IMAGE, *command[1:])

    def ip(self, alias: str) -> str:
        return _docker("inspect", "-f",
                       f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}',
                       f"{self.network}-{alias}")

    def gateway(self) -> str:
        return _docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}",
                       self.network)

    def stop(self) -> None:
        if self.containers:
            _docker("rm", "-f", *self.containers, check=False)
        deadline = time.monotonic() + 30
        while True:  # a container's removal (--rm) may still hold the network a moment
            rm = subprocess.run(["docker", "network", "rm", self.network], capture_output=True,
                                text=True, timeout=60)
            if rm.returncode == 0 or "not found" in rm.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.5)


class Home:
    """A private SANDBOX_HOME and a CLI runner for it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SANDBOX_") or k == "SANDBOX_DOCKER"}
        self.env.update(SANDBOX_HOME=str(path / "home"), XDG_CONFIG_HOME=str(path / "xdg"),
                        NO_COLOR="1")
        (path / "work").mkdir(parents=True, exist_ok=True)

    def __call__(self, *args: str, timeout: float = 120, check: bool = False,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([*CLI, *args], capture_output=True, cwd=self.path / "work",
                              env={**self.env, **(env or {})}, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"sandbox {' '.join(args)} -> {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    def label(self) -> str:
        from sandbox_cli.state import home_label

        return home_label(str(self.path / "home"))


def _egress_pieces(label: str) -> tuple[list[str], list[str]]:
    """(proxy container ids, egress network ids) of a home, from Docker's labels."""
    proxies = _docker("ps", "-aq", "--filter", "label=sandbox-cli.egress=1",
                      "--filter", f"label=sandbox-cli.home={label}").split()
    networks = _docker("network", "ls", "-q", "--filter", "label=sandbox-cli.egress=1",
                       "--filter", f"label=sandbox-cli.home={label}").split()
    return proxies, networks


def _nothing_left(home: Home) -> None:
    """No egress piece of HOME's on the engine, and no sandbox in its listing."""
    assert _egress_pieces(home.label()) == ([], [])
    assert json.loads(home("ls", "--json", check=True).stdout) == []


@pytest.fixture(scope="module")
def upstream(docker_engine: None) -> Iterator[Upstream]:
    up = Upstream()
    try:
        up.start()
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def egress_home(upstream: Upstream,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    """A home for the module's shared sandbox; torn down before the upstream network (its
    proxy is attached to it)."""
    home = Home(tmp_path_factory.mktemp("egress"))
    yield home
    home("purge", "--all", timeout=120)
    proxies, networks = _egress_pieces(home.label())
    if proxies:  # only if purge itself failed: never leave anything behind
        _docker("rm", "-f", *proxies, check=False)
    for net in networks:
        _docker("network", "rm", net, check=False)


@pytest.fixture(scope="module")
def ebox(upstream: Upstream, egress_home: Home) -> str:
    """One Python sandbox allowed to reach allowed.example.test:8000 and localhost:3128."""
    name = "eg-" + uuid.uuid4().hex[:8]
    egress_home("start", "--name", name, "--image", PYTHON_IMAGE,
                "--allow-host", "allowed.example.test:8000", "--allow-host", "localhost:3128",
                "--egress-network", upstream.network, check=True)
    return name


def _py(home: Home, name: str, code: str,
        timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
    return home("exec", "--timeout", str(int(timeout) - 10), name, "python3", "-c", code,
                timeout=timeout)


FETCH = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1] if len(sys.argv) > 1 else URL, timeout=20)
    print("STATUS", r.status); print(r.read(200).decode(errors="replace"))
except urllib.error.HTTPError as e:
    print("STATUS", e.code); print(e.read().decode(errors="replace"))
except Exception as e:
    print("ERROR", type(e).__name__, e)
"""


def _fetch(home: Home, name: str, url: str) -> str:
    proc = _py(home, name, f"URL = {url!r}\n" + FETCH)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


def _proxy_of(home: Home) -> str:
    proxies, _ = _egress_pieces(home.label())
    assert len(proxies) >= 1
    return proxies[0]


def test_allowed_host_is_reached_through_the_proxy(egress_home: Home, ebox: str) -> None:
    out = _fetch(egress_home, ebox, "http://allowed.example.test:8000/")
    assert "STATUS 200" in out
    # the exact one-liner of the issue
    proc = _py(egress_home, ebox,
               "import urllib.request; urllib.request.urlopen('http://allowed.example.test:8000/')")
    assert proc.returncode == 0, proc.stderr
    log = json.loads(egress_home("egress", ebox, "--json", check=True).stdout)
    assert {"host": "allowed.example.test", "port": 8000, "verdict": "allowed"}.items() \
        <= log[-1].items()
    assert log[-1]["time"].endswith("Z")


def test_denied_host_is_403_naming_host_and_how_to_allow(egress_home: Home, ebox: str) -> None:
    out = _fetch(egress_home, ebox, "http://denied.example.test:8000/")
    assert "STATUS 403" in out
    assert "denied.example.test:8000" in out and "--allow-host denied.example.test:8000" in out
    # another port of the allowed host is not allowed either
    assert "STATUS 403" in _fetch(egress_home, ebox, "http://allowed.example.test:8001/")
    text = egress_home("egress", ebox, check=True).stdout.decode()
    assert "refused\tdenied.example.test:8000\tnot on the allow-list" in text


def test_connect_tunnel_only_to_listed_host_and_port(egress_home: Home, ebox: str) -> None:
    code = r"""
import socket
def tunnel(target):
    c = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    c.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = c.recv(4096).split(b"\r\n")[0].decode()
    if " 200 " in head + " ":
        c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        head += " | " + c.recv(64).split(b"\r\n")[0].decode()
    print(target, "->", head)
for t in ("allowed.example.test:8000", "denied.example.test:8000", "allowed.example.test:443"):
    tunnel(t)
"""
    out = _py(egress_home, ebox, code).stdout.decode()
    assert "allowed.example.test:8000 -> HTTP/1.1 200 Connection established | HTTP/1.0 200" in out
    assert "denied.example.test:8000 -> HTTP/1.1 403" in out
    assert "allowed.example.test:443 -> HTTP/1.1 403" in out


def test_direct_connection_to_allowed_ip_fails(egress_home: Home, ebox: str,
                                               upstream: Upstream) -> None:
    ip = upstream.ip("allowed")
    code = f"""
import socket
try:
    socket.create_connection(({ip!r}, 8000), timeout=5); print("CONNECTED")
except OSError as e:
    print("FAILED", e)
"""
    out = _py(egress_home, ebox, code).stdout.decode()
    assert out.startswith("FAILED"), out
    # ... and through the proxy an unlisted IP literal is refused
    out = _fetch(egress_home, ebox, f"http://{ip}:8000/")
    assert "STATUS 403" in out and "listed literally" in out


def test_udp_does_not_leave(egress_home: Home, ebox: str, upstream: Upstream) -> None:
    ip = upstream.ip("udp")
    code = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(20):
    try:
        s.sendto(b"exfil-%d" % i, ({ip!r}, 5353))
    except OSError as e:
        print("ERR", e)
print("done")
"""
    assert _py(egress_home, ebox, code).returncode == 0
    time.sleep(1)
    logs = _docker("logs", f"{upstream.network}-udp")
    assert "GOT" not in logs


def test_no_dns_for_outside_names(egress_home: Home, ebox: str) -> None:
    code = """
import socket
for host in ("exfil.example.com", "allowed.example.test", "denied.example.test"):
    try:
        print("RESOLVED", host, socket.getaddrinfo(host, 80)[0][4])
    except OSError as e:
        print("NO", host)
"""
    out = _py(egress_home, ebox, code, timeout=120).stdout.decode()
    assert "RESOLVED" not in out and out.count("NO ") == 3, out
    # No engine network, so no embedded DNS server to forward anything (see the next test).
    assert docker_inspect(ebox, "{{.HostConfig.NetworkMode}}") == "none"


FAKE_DNS = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 53))
while True:
    data, addr = s.recvfrom(4096)
    i, labels = 12, []
    while data[i]:
        labels.append(data[i + 1:i + 1 + data[i]].decode(errors="replace")); i += 1 + data[i]
    print("QUERY", ".".join(labels), flush=True)
"""


def test_embedded_dns_forwarding_is_closed(docker_engine: None) -> None:
    """What Docker 20.10's embedded DNS (127.0.0.11) does on an --internal network: it forwards
    outside names to its upstream servers from the container's own network namespace, so an
    upstream reachable there receives the query (the control below). The sandbox has no engine
    network (`--network none`, egress_handoff.py): even told to use that very server, its
    query goes nowhere."""
    tag = uuid.uuid4().hex[:8]
    net, dns = f"sandbox-test-dns-{tag}", f"sandbox-test-dns-{tag}-server"
    try:
        _docker("network", "create", "--internal", "--label", "sandbox-test=1", net)
        # A DNS "upstream" that logs queries, on the tests' own internal network (port 53).
        _docker("run", "-d", "--rm", "--name", dns, "--label", "sandbox-test=1", "--network",
                net, "--entrypoint", "python3", PYTHON_IMAGE, "-u", "-c", FAKE_DNS)
        ip = _docker("inspect", "-f",
                     f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}', dns)
        resolve = ["python3", "-c", "import socket,sys\ntry: socket.getaddrinfo(sys.argv[1], 80)"
                   "\nexcept OSError: pass"]
        control = ["--network", net, "--dns", ip]
        _docker("run", "--rm", "--user", "65534:65534", *control, "--entrypoint", resolve[0],
                PYTHON_IMAGE, *resolve[1:], "control-query.example.com", timeout=60)
        deadline = time.monotonic() + 10
        while "QUERY control-query.example.com" not in _docker("logs", dns):
            assert time.monotonic() < deadline, "the engine did not forward (the control)"
            time.sleep(0.2)
        ours = ["--network", "none", "--dns", ip]  # the sandbox's network, and that resolver
        _docker("run", "--rm", "--user", "65534:65534", *ours, "--entrypoint", resolve[0],
                PYTHON_IMAGE, *resolve[1:], "sandbox-query.example.com", timeout=60)
        time.sleep(1)
        assert "sandbox-query" not in _docker("logs", dns)
    finally:
        _docker("rm", "-f", dns, check=False)
        _docker("network", "rm", net, check=False)


def test_engine_host_unreachable_from_sandbox(egress_home: Home, ebox: str,
                                              upstream: Upstream) -> None:
    """Docker 20.10 routes an --internal network's containers to the host's bridge address;
    the sandbox has no network, so a host service bound to any host address stays out of
    reach, and the proxy refuses the address."""
    gateway = upstream.gateway()  # an address of this host, on the tests' own network only
    listener = socket.socket()
    listener.bind((gateway, 0))
    listener.listen(8)
    listener.settimeout(30)
    port = listener.getsockname()[1]
    accepted: list[Any] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(listener.accept())

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        code = f"""
import socket
try:
    socket.create_connection(({gateway!r}, {port}), timeout=5); print("CONNECTED")
except OSError as e:
    print("FAILED", e)
"""
        out = _py(egress_home, ebox, code).stdout.decode()
        assert out.startswith("FAILED"), out
        assert not accepted
        assert "STATUS 403" in _fetch(egress_home, ebox, f"http://{gateway}:{port}/")
    finally:
        listener.close()
        thread.join(5)


def test_metadata_loopback_and_listed_name_to_loopback_refused(egress_home: Home,
                                                                 ebox: str) -> None:
    out = _fetch(egress_home, ebox, "http://169.254.169.254/latest/meta-data/")
    assert "STATUS 403" in out and "169.254.169.254" in out
    # localhost:3128 is listed, but it resolves (in the proxy) to loopback: refused. (A raw
    # request: clients skip the proxy for localhost, as NO_PROXY says.)
    code = r"""
import socket
c = socket.create_connection(("127.0.0.1", 3128), timeout=20)
c.sendall(b"GET http://localhost:3128/ HTTP/1.1\r\nHost: localhost:3128\r\n\r\n")
print(c.recv(4096).decode())
"""
    out = _py(egress_home, ebox, code).stdout.decode()
    assert out.startswith("HTTP/1.1 403") and "loopback" in out, out


def test_proxy_is_locked_down_and_reached_from_its_sandbox_only(
        egress_home: Home, ebox: str, upstream: Upstream) -> None:
    proxy = _proxy_of(egress_home)
    assert docker_inspect(proxy, "{{.Config.User}}") == "65534:65534" or \
        not docker_inspect(proxy, "{{.Config.User}}").startswith("0")
    assert docker_inspect(proxy, "{{json .HostConfig.CapDrop}}") == '["ALL"]'
    assert docker_inspect(proxy, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert "no-new-privileges" in docker_inspect(proxy, "{{json .HostConfig.SecurityOpt}}")
    assert int(docker_inspect(proxy, "{{.HostConfig.PidsLimit}}")) > 0
    assert int(docker_inspect(proxy, "{{.HostConfig.Memory}}")) > 0
    # The sandbox's own defaults: no docker log (the proxy's failure goes to its log folder),
    # no health check run by the engine.
    assert docker_inspect(proxy, "{{.HostConfig.LogConfig.Type}}") == "none"
    assert docker_inspect(proxy, "{{json .Config.Healthcheck.Test}}") == '["NONE"]'
    status = _docker("exec", proxy, "sh", "-c", "grep -E '^(Uid|CapEff)' /proc/1/status "
                     "/proc/[0-9]*/status | sort -u")
    assert "CapEff:\t0000000000000000" in status and "Uid:\t0\t" not in status
    # The proxy is on the egress network alone, and listens on no address of its own there:
    # from that network nothing answers.
    networks = json.loads(docker_inspect(proxy, "{{json .NetworkSettings.Networks}}"))
    assert list(networks) == [upstream.network]
    proxy_ip = networks[upstream.network]["IPAddress"]
    probe = subprocess.run(
        ["docker", "exec", f"{upstream.network}-denied", "python3", "-c",
         f"import socket; socket.create_connection(({proxy_ip!r}, 3128), timeout=5)"],
        capture_output=True, timeout=60)
    assert probe.returncode != 0
    # The sandbox has no network at all: loopback only, where the proxy holds the port.
    assert docker_inspect(ebox, "{{.HostConfig.NetworkMode}}") == "none"
    code = r"""
import os, socket
print("IFACES", sorted(os.listdir("/sys/class/net")))
print("HANDOFF", os.listdir("/sandbox-egress/handoff"))  # the proxy's socket is gone
try:  # the sandbox's code cannot take the proxy's port over
    socket.create_server(("127.0.0.1", 3128)); print("BOUND")
except OSError as e:
    print("INUSE", e.errno)
print("ENV", os.environ["HTTPS_PROXY"], os.environ["no_proxy"])
"""
    out = _py(egress_home, ebox, code).stdout.decode()
    assert "IFACES ['lo']" in out and "HANDOFF []" in out, out
    assert "INUSE" in out and "BOUND" not in out, out
    assert "ENV http://127.0.0.1:3128 " in out and "127.0.0.1" in out.split("ENV")[1], out
    # The first process, which made the port and handed it over, is now the sandbox's sleep
    # (root without capabilities: the code, another uid, cannot signal it).
    main = _docker("exec", ebox, "cat", "/proc/1/task/1/children")
    comm = _docker("exec", ebox, "cat", f"/proc/{main.split()[0]}/comm")
    assert comm == "sleep", comm


def test_flood_of_connections_is_bounded(egress_home: Home, ebox: str) -> None:
    code = r"""
import socket, time
held, busy = [], 0
for i in range(300):
    try:
        c = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    except OSError:
        busy += 1
        continue
    held.append(c)
time.sleep(1)
for c in held:
    c.settimeout(0.05)
    try:
        if b" 503 " in c.recv(100):
            busy += 1
    except OSError:
        pass
print("BUSY", busy)
for c in held:
    c.close()
"""
    out = _py(egress_home, ebox, code, timeout=120).stdout.decode()
    assert "BUSY" in out and int(out.split("BUSY")[1].split()[0]) >= 200, out
    proxy = _proxy_of(egress_home)
    assert docker_inspect(proxy, "{{.State.Running}}") == "true"
    assert docker_inspect(proxy, "{{.State.OOMKilled}}") == "false"
    time.sleep(1)
    assert "STATUS 200" in _fetch(egress_home, ebox, "http://allowed.example.test:8000/")


def test_ls_shows_allow_hosts(egress_home: Home, ebox: str) -> None:
    rows = json.loads(egress_home("ls", "--json", check=True).stdout)
    row = next(r for r in rows if r["name"] == ebox)
    assert row["allow_hosts"] == ["allowed.example.test:8000", "localhost:3128"]
    assert row["network"] is False


def test_disconnect_ends_egress(upstream: Upstream, tmp_path: Path) -> None:
    home = Home(tmp_path)
    name = "egd-" + uuid.uuid4().hex[:8]
    try:
        home("start", "--name", name, "--image", PYTHON_IMAGE, "--allow-host",
             "allowed.example.test:8000", "--egress-network", upstream.network, check=True)
        assert "STATUS 200" in _fetch(home, name, "http://allowed.example.test:8000/")
        cut = home("disconnect", name, check=True)
        assert cut.stderr == f"sandbox: {name}: egress proxy removed: nothing goes out\n".encode()
        assert _egress_pieces(home.label()) == ([], [])
        out = _fetch(home, name, "http://allowed.example.test:8000/")
        assert "STATUS 200" not in out and "ERROR" in out
        assert "allowed" in home("egress", name, check=True).stdout.decode()  # the log stays
    finally:
        home("purge", "--all")
        assert _egress_pieces(home.label()) == ([], [])


def test_purge_removes_proxy_network_and_log_and_spares_other_homes(
        upstream: Upstream, tmp_path: Path) -> None:
    mine, other = Home(tmp_path / "a"), Home(tmp_path / "b")
    args = ("--image", PYTHON_IMAGE, "--allow-host", "allowed.example.test:8000",
            "--egress-network", upstream.network)
    try:
        mine("start", "--name", f"mine-{upstream.tag}", *args, check=True)
        other("start", "--name", f"other-{upstream.tag}", *args, check=True)
        assert tuple(map(len, _egress_pieces(mine.label()))) == (1, 0)  # a proxy, no network
        removed = json.loads(mine("purge", "--all", "--json", check=True).stdout)
        assert removed == {"removed": [f"mine-{upstream.tag}"]}
        assert _egress_pieces(mine.label()) == ([], [])
        assert not (tmp_path / "a" / "home" / "egress" / f"mine-{upstream.tag}").exists()
        assert tuple(map(len, _egress_pieces(other.label()))) == (1, 0)
        assert "STATUS 200" in _fetch(other, f"other-{upstream.tag}",
                                      "http://allowed.example.test:8000/")
    finally:
        mine("purge", "--all")
        other("purge", "--all")
    assert _egress_pieces(other.label()) == ([], [])


def test_purge_finds_egress_pieces_without_state_file(upstream: Upstream,
                                                      tmp_path: Path) -> None:
    home = Home(tmp_path)
    try:
        home("start", "--name", f"lost-{upstream.tag}", "--image", PYTHON_IMAGE, "--allow-host",
             "allowed.example.test:8000", "--egress-network", upstream.network, check=True)
        (tmp_path / "home" / "state.json").unlink()
        home("purge", "--all", check=True)
        assert _egress_pieces(home.label()) == ([], [])
    finally:
        home("purge", "--all")


def test_ttl_expiry_removes_proxy_and_network(upstream: Upstream, tmp_path: Path) -> None:
    home = Home(tmp_path)
    try:
        home("start", "--name", f"short-{upstream.tag}", "--ttl", "3s", "--image", PYTHON_IMAGE,
             "--allow-host", "allowed.example.test:8000", "--egress-network",
             upstream.network, check=True)
        proxy = _egress_pieces(home.label())[0]
        assert len(proxy) == 1
        deadline = time.monotonic() + 40
        while _docker("ps", "-aq", "--filter", f"id={proxy[0]}"):  # it ends by itself
            assert time.monotonic() < deadline, "proxy outlived its TTL"
            time.sleep(0.5)
        # Once its record has expired (a moment after its proxy: the record's expiry is
        # stamped just before the sandbox's container starts), nothing of it is left.
        while json.loads(home("ls", "--json", check=True).stdout)[0]["status"] != "expired":
            assert time.monotonic() < deadline + 10, "the record never expired"
            time.sleep(0.5)
        assert _egress_pieces(home.label()) == ([], [])
        # Its attempt log stays with its files (kept a day after expiry, for `read`).
        proc = home("egress", f"short-{upstream.tag}", "--json")
        assert proc.returncode == 0, proc.stderr
        assert isinstance(json.loads(proc.stdout), list)
    finally:
        home("purge", "--all")


def test_run_with_allow_host(upstream: Upstream, tmp_path: Path) -> None:
    home = Home(tmp_path)
    try:
        proc = home("run", "--image", PYTHON_IMAGE, "--allow-host", "allowed.example.test:8000",
                    "--egress-network", upstream.network, "--", "python3", "-c",
                    "import urllib.request; print(urllib.request.urlopen("
                    "'http://allowed.example.test:8000/').status)")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == b"200"
        assert _egress_pieces(home.label()) == ([], [])
    finally:
        home("purge", "--all")


def test_missing_egress_network_is_clean_failure(docker_engine: None, tmp_path: Path) -> None:
    home = Home(tmp_path)
    proc = home("start", "--name", "nonet", "--image", PYTHON_IMAGE, "--allow-host", "x.test",
                "--egress-network", "no-such-net-" + uuid.uuid4().hex[:6])
    assert proc.returncode == 2, proc.stderr
    assert b"egress network" in proc.stderr and b"Traceback" not in proc.stderr
    _nothing_left(home)
    assert not _docker("ps", "-aq", "--filter", "name=^nonet$")


def test_sandbox_image_without_python_gets_a_port_holder(upstream: Upstream,
                                                        tmp_path: Path) -> None:
    # A --proxy-image other than the sandbox's (which may have no python3): the handoff runs
    # in a port holder of the proxy image, whose loopback the sandbox joins. busybox's wget
    # reads http_proxy.
    from tests.conftest import BUSYBOX_IMAGE

    home = Home(tmp_path)
    name = "egh-" + uuid.uuid4().hex[:8]
    try:
        home("start", "--name", name, "--image", BUSYBOX_IMAGE, "--proxy-image", PYTHON_IMAGE,
             "--allow-host", "allowed.example.test:8000", "--egress-network", upstream.network,
             check=True)
        assert tuple(map(len, _egress_pieces(home.label()))) == (2, 0)  # proxy and holder
        allowed = home("exec", name, "wget", "-q", "-O-", "http://allowed.example.test:8000/")
        assert allowed.returncode == 0 and b"<html" in allowed.stdout.lower(), allowed.stderr
        denied = home("exec", name, "wget", "-q", "-O-", "http://denied.example.test:8000/")
        assert denied.returncode != 0 and b"403" in denied.stderr, denied.stderr
        direct = home("exec", name, "wget", "-Y", "off", "-T", "5", "-q", "-O-",
                      f"http://{upstream.ip('allowed')}:8000/")
        assert direct.returncode != 0, direct.stdout
        nets = home("exec", name, "ls", "/sys/class/net", check=True).stdout.split()
        assert nets == [b"lo"]
        home("disconnect", name, check=True)
        assert _egress_pieces(home.label()) == ([], [])
        after = home("exec", name, "wget", "-T", "5", "-q", "-O-",
                     "http://allowed.example.test:8000/")
        assert after.returncode != 0
    finally:
        home("purge", "--all")
    assert _egress_pieces(home.label()) == ([], [])


def test_sandbox_that_cannot_run_the_handoff_is_clean_failure(upstream: Upstream,
                                                              tmp_path: Path) -> None:
    # The sandbox's first process cannot find python3 (here a PATH of the user's hides it):
    # one line, exit 2, and nothing left, found within seconds.
    home = Home(tmp_path)
    began = time.monotonic()
    proc = home("start", "--image", PYTHON_IMAGE, "-e", "PATH=/nowhere", "--allow-host",
                "allowed.example.test:8000", "--egress-network", upstream.network)
    assert proc.returncode == 2, proc.stderr
    assert b"python3 in the sandbox's image" in proc.stderr and proc.stderr.count(b"\n") == 1
    assert time.monotonic() - began < 15
    _nothing_left(home)
    assert not (tmp_path / "home" / "egress").exists() or \
        not any((tmp_path / "home" / "egress").iterdir())


def test_an_earlier_versions_egress_network_is_removed(docker_engine: None,
                                                       tmp_path: Path) -> None:
    # Earlier versions gave each such sandbox an --internal network: purge still ends it.
    home = Home(tmp_path)
    home("ls", check=True)  # makes the home, whose label the network carries
    net = f"sandbox-egress-old-{uuid.uuid4().hex[:8]}"
    _docker("network", "create", "--internal", "--label", "sandbox-cli.egress=1",
            "--label", "sandbox-cli.managed=1", "--label", f"sandbox-cli.home={home.label()}",
            "--label", "sandbox-cli.name=old", net)
    try:
        assert _egress_pieces(home.label())[1]
        home("purge", "--all", check=True)
        assert _egress_pieces(home.label()) == ([], [])
    finally:
        _docker("network", "rm", net, check=False)


def test_proxy_image_without_python_is_clean_failure(docker_engine: None, tmp_path: Path) -> None:
    from tests.conftest import BUSYBOX_IMAGE

    home = Home(tmp_path)
    proc = home("start", "--image", BUSYBOX_IMAGE, "--allow-host", "x.test")
    assert proc.returncode == 2, proc.stderr
    assert b"--proxy-image" in proc.stderr and proc.stderr.count(b"\n") == 1
    _nothing_left(home)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_the_python_api_takes_an_allow_list(upstream: Upstream, egress_home: Home) -> None:
    # The API is a face of the same core: allow_hosts is the CLI's --allow-host.
    from sandbox_cli import api

    home = str(egress_home.path / "home")
    with api.Sandbox.start(image=PYTHON_IMAGE, allow_hosts=["allowed.example.test:8000"],
                           egress_network=upstream.network, use_config=False,
                           home=home) as box:
        assert box.info().allow_hosts == ["allowed.example.test:8000"]
        result = box.exec(["python3", "-c", "URL = 'http://allowed.example.test:8000/'\n"
                           + FETCH], timeout=60)
        assert "STATUS 200" in result.stdout, result.stderr
        denied = box.exec(["python3", "-c", "URL = 'http://denied.example.test:8000/'\n"
                           + FETCH], timeout=60)
        assert "STATUS 403" in denied.stdout, denied.stderr
    assert [row.name for row in api.list_sandboxes(home=home) if row.name == box.name] == []


def test_proxy_listens_before_it_imports_its_server(upstream: Upstream, tmp_path: Path) -> None:
    # `start` waits until the proxy listens, on two shared cores beside the sandbox's own
    # start: the proxy listens first and imports asyncio (a C extension, so it shows in its
    # memory map) only once a connection has come; the kernel holds that connection meanwhile.
    home = Home(tmp_path)
    name = "egl-" + uuid.uuid4().hex[:8]
    try:
        home("start", "--name", name, "--image", PYTHON_IMAGE, "--allow-host",
             "allowed.example.test:8000", "--egress-network", upstream.network, check=True)
        proxy = _proxy_of(home)

        def mapped() -> str:
            return _docker("exec", proxy, "sh", "-c",  # processes that have it mapped
                           "grep -l _asyncio /proc/[0-9]*/maps 2>/dev/null | wc -l")

        assert mapped() == "0"
        assert "STATUS 200" in _fetch(home, name, "http://allowed.example.test:8000/")
        assert int(mapped()) > 0
    finally:
        home("purge", "--all")
    assert _egress_pieces(home.label()) == ([], [])


def test_failed_sandbox_run_removes_the_egress_begun_beside_it(upstream: Upstream,
                                                               tmp_path: Path) -> None:
    # The proxy is made while the sandbox is still being prepared and started: a
    # start whose own `docker run` fails waits for it, then removes it (by its labels).
    home = Home(tmp_path)
    name = "egf-" + uuid.uuid4().hex[:8]
    proc = home("start", "--name", name, "--image", PYTHON_IMAGE, "--allow-host",
                "allowed.example.test:8000", "--egress-network", upstream.network,
                "--runtime", "no-such-runtime")
    try:
        assert proc.returncode != 0 and b"Traceback" not in proc.stderr, proc.stderr
        assert b"runtime" in proc.stderr
        _nothing_left(home)
        assert not (tmp_path / "home" / "egress" / name).exists()
    finally:
        home("purge", "--all")


def test_start_that_cannot_make_the_proxy_log_folder_leaves_nothing(tmp_path: Path,
                                                                    docker_engine: None) -> None:
    # The host refuses the proxy's log folder ($SANDBOX_HOME/egress is a file): one line,
    # and neither the sandbox's folder nor any egress piece stays behind.
    home = Home(tmp_path)
    (tmp_path / "home").mkdir(mode=0o700)
    (tmp_path / "home" / "egress").write_text("not a folder")
    try:
        proc = home("start", "--name", "eglog", "--image", PYTHON_IMAGE, "--allow-host",
                    "x.test")
        assert proc.returncode == 1 and proc.stderr.count(b"\n") == 1, proc.stderr
        assert b"egress" in proc.stderr and b"Traceback" not in proc.stderr
        assert not (tmp_path / "home" / "volumes" / "eglog").exists()
        _nothing_left(home)
    finally:
        (tmp_path / "home" / "egress").unlink(missing_ok=True)
        home("purge", "--all")


def test_plain_start_with_allow_host_skips_typer_and_matches_the_typer_path(
        upstream: Upstream, tmp_path: Path) -> None:
    home = Home(tmp_path)
    fast, slow = ("eg-" + uuid.uuid4().hex[:8] for _ in range(2))
    egress = ["--allow-host", "allowed.example.test:8000", "--allow-host=localhost:3128",
              "--egress-network", upstream.network]
    profile = {"PYTHONPROFILEIMPORTTIME": "1"}
    try:
        quick = home("start", "--name", fast, "--image", PYTHON_IMAGE, *egress, env=profile)
        assert not typer_imported(quick)
        parsed = home("start", "--name", slow, "--image", PYTHON_IMAGE, *egress, "--ttl", "1h",
                      env=profile)
        assert typer_imported(parsed)
        assert (quick.returncode, quick.stdout, quick.stderr) == (0, f"{fast}\n".encode(), b"")
        assert (parsed.returncode, parsed.stdout, parsed.stderr) == (0, f"{slow}\n".encode(),
                                                                     b"")
        rows = {r["name"]: r for r in json.loads(home("ls", "--json", check=True).stdout)}
        for key in ("allow_hosts", "network", "image", "storage"):
            assert rows[fast][key] == rows[slow][key], key
        assert rows[fast]["allow_hosts"] == ["allowed.example.test:8000", "localhost:3128"]
        assert "STATUS 200" in _fetch(home, fast, "http://allowed.example.test:8000/")
        assert "STATUS 403" in _fetch(home, fast, "http://denied.example.test:8000/")
        # A bad value is refused the same way on both paths: one line, exit 2, nothing made.
        bad = home("start", "--image", PYTHON_IMAGE, "--allow-host", "bad host!")
        bad_parsed = home("start", "--image", PYTHON_IMAGE, "--allow-host", "bad host!",
                          "--ttl", "1h")
        assert (bad.returncode, bad.stderr) == (bad_parsed.returncode, bad_parsed.stderr)
        assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1, bad.stderr
    finally:
        home("purge", "--all")
    assert _egress_pieces(home.label()) == ([], [])


def test_run_with_allow_host_reports_a_command_that_cannot_start(upstream: Upstream,
                                                                 tmp_path: Path) -> None:
    # run's first program is the handoff, which then becomes the command: a command that is
    # missing or not executable is still run's one "sandbox: error:" line, 127 or 126 (a
    # missing one may be the handoff's python3: the line says so).
    home = Home(tmp_path)
    args = ("--image", PYTHON_IMAGE, "--allow-host", "allowed.example.test:8000",
            "--egress-network", upstream.network)
    try:
        missing = home("run", *args, "--", "no-such-command")
        assert missing.returncode == 127, missing.stderr
        assert missing.stderr.startswith(b"sandbox: error: command not found in the sandbox: "
                                         b"'no-such-command'") and b"python3" in missing.stderr
        assert missing.stderr.count(b"\n") == 1
        denied = home("run", *args, "--", "/etc/passwd")
        assert denied.returncode == 126 and denied.stderr.count(b"\n") == 1, denied.stderr
        assert b"not executable" in denied.stderr
        assert _egress_pieces(home.label()) == ([], [])
    finally:
        home("purge", "--all")


def test_snapshot_of_an_egress_sandbox_drops_its_proxy_variables(upstream: Upstream,
                                                                 egress_home: Home,
                                                                 ebox: str) -> None:
    # A sandbox started from the snapshot has a proxy of its own, or none: the old one's
    # address must not come with the image.
    tag = f"sandbox-test-egress-snap:{uuid.uuid4().hex[:8]}"
    try:
        egress_home("snapshot", ebox, "--tag", tag, check=True, timeout=300)
        env = json.loads(_docker("image", "inspect", "-f", "{{json .Config.Env}}", tag))
        values = dict(item.partition("=")[::2] for item in env)
        assert values.get("HTTPS_PROXY", "") == "" and values.get("http_proxy", "") == "", env
    finally:
        _docker("rmi", "-f", tag, check=False)



def test_proxy_that_dies_at_once_is_found_within_seconds(upstream: Upstream,
                                                         tmp_path: Path) -> None:
    # A proxy image whose python3 runs and exits at once, before the proxy's own code can
    # write why (an interpreter too old to parse it, say): `start` finds the proxy gone.
    from tests.conftest import BUSYBOX_IMAGE

    tag = f"sandbox-test-deadpy:{uuid.uuid4().hex[:8]}"
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {BUSYBOX_IMAGE}\nRUN printf '#!/bin/sh\\nexit 1\\n' > /bin/python3 "
        "&& chmod 755 /bin/python3\n")
    _docker("build", "-q", "-t", tag, str(context), timeout=120)
    home = Home(tmp_path)
    try:
        began = time.monotonic()
        proc = home("start", "--image", PYTHON_IMAGE, "--proxy-image", tag, "--allow-host",
                    "allowed.example.test:8000", "--egress-network", upstream.network)
        assert proc.returncode != 0 and proc.stderr.count(b"\n") == 1, proc.stderr
        assert b"egress" in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr
        assert time.monotonic() - began < 10
        _nothing_left(home)
    finally:
        home("purge", "--all")
        _docker("rmi", "-f", tag, check=False)
