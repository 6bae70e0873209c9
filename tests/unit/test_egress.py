"""The allow-list rules, the proxy's request parsing, its log, and the egress argv shapes
(no daemon). The behaviour on the real engine is in tests/integration/test_egress.py."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox_cli import config, docker, egress
from sandbox_cli import egress_proxy as proxy
from sandbox_cli.errors import InvalidInput
from sandbox_cli.state import StateStore
from tests.conftest import CLI


def _allowed(rules: list[str], host: str, port: int) -> bool:
    return proxy.host_allowed(proxy.parse_rules(rules), host, port)


@pytest.mark.parametrize(("text", "shown"), [
    ("PyPI.org", "pypi.org"),
    ("pypi.org.", "pypi.org"),
    ("*.example.com", "*.example.com"),
    ("example.com:8443", "example.com:8443"),
    ("10.0.0.5", "10.0.0.5"),
    ("10.0.0.5:80", "10.0.0.5:80"),
    ("[::1]:8080", "[::1]:8080"),
    ("2001:db8::1", "[2001:db8::1]"),
    ("[::ffff:10.0.0.5]", "10.0.0.5"),
])
def test_rules_are_normalised(text: str, shown: str) -> None:
    assert proxy.parse_rule(text).text() == shown


@pytest.mark.parametrize("text", [
    "", " ", "a b", "*.com", "*", "*example.com", "ex*ample.com", "a.*.com", "host:0",
    "host:65536", "host:http", "-bad.com", "bad-.com", "a..b", "127.1", "[::1", "[::1]x",
    "http://pypi.org", "pypi.org/simple", "x" * 64 + ".com",
])
def test_bad_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        proxy.parse_rule(text)


def test_wildcard_matches_subdomains_not_the_bare_domain() -> None:
    rules = ["*.example.com"]
    assert _allowed(rules, "a.example.com", 443)
    assert _allowed(rules, "a.b.example.com", 80)
    assert not _allowed(rules, "example.com", 443)
    assert not _allowed(rules, "badexample.com", 443)
    assert not _allowed(rules, "example.com.evil.test", 443)


def test_no_port_means_80_and_443_only() -> None:
    assert _allowed(["pypi.org"], "pypi.org", 80)
    assert _allowed(["pypi.org"], "PYPI.ORG.", 443)
    assert not _allowed(["pypi.org"], "pypi.org", 22)
    assert _allowed(["pypi.org:8080"], "pypi.org", 8080)
    assert not _allowed(["pypi.org:8080"], "pypi.org", 443)


def test_ip_literals_only_when_listed_literally() -> None:
    assert not _allowed(["pypi.org"], "151.101.0.223", 443)
    assert not _allowed(["*.example.com"], "10.0.0.5", 80)
    assert _allowed(["10.0.0.5"], "10.0.0.5", 80)
    assert _allowed(["10.0.0.5"], "::ffff:10.0.0.5", 80)
    assert not _allowed(["10.0.0.5"], "10.0.0.6", 80)
    assert not _allowed(["10.0.0.5:80"], "10.0.0.5", 443)
    assert not _allowed(["example.com"], "example.com\x00.evil", 443)


def test_special_addresses_are_refused_unless_listed() -> None:
    def refusal(text: str, listed: tuple[str, ...] = (),
                denied: tuple[str, ...] = ()) -> str | None:
        return proxy.address_refusal(ipaddress.ip_address(text),
                                     {ipaddress.ip_address(a) for a in listed},
                                     {ipaddress.ip_address(a) for a in denied})

    assert refusal("127.0.0.1") == "loopback address"
    assert refusal("::1") == "loopback address"
    assert refusal("::ffff:127.0.0.1") == "loopback address"
    assert refusal("169.254.169.254") == "link-local address (cloud metadata)"
    assert refusal("169.254.1.1") == "link-local address"
    assert refusal("fe80::1") == "link-local address"
    assert refusal("0.0.0.0") == "special address"
    assert refusal("224.0.0.1") == "special address"
    assert refusal("192.0.2.2", denied=("192.0.2.2",)) == "an address of the engine host"
    assert refusal("172.23.0.2") is None
    assert refusal("169.254.169.254", listed=("169.254.169.254",)) is None
    assert refusal("192.0.2.2", listed=("192.0.2.2",), denied=("192.0.2.2",)) is None


def test_refusal_body_names_host_and_flag() -> None:
    body = proxy.refusal_body("evil.test", 443, "not on the allow-list")
    assert "evil.test:443 refused: not on the allow-list" in body
    assert "--allow-host evil.test " in body
    assert "--allow-host evil.test:8000" in proxy.refusal_body("evil.test", 8000, "x")


@pytest.mark.parametrize(("method", "target", "expected"), [
    ("CONNECT", "pypi.org:443", ("pypi.org", 443, "")),
    ("CONNECT", "[2001:db8::1]:443", ("2001:db8::1", 443, "")),
    ("GET", "http://Allowed.Example.Test:8000/x?y=1", ("allowed.example.test", 8000, "/x?y=1")),
    ("GET", "http://example.com", ("example.com", 80, "/")),
    ("GET", "http://example.com?q", ("example.com", 80, "/?q")),
    ("POST", "http://example.com/p#frag", ("example.com", 80, "/p")),
])
def test_request_targets(method: str, target: str, expected: tuple[str, int, str]) -> None:
    assert proxy._target(method, target) == expected


@pytest.mark.parametrize(("method", "target"), [
    ("CONNECT", "pypi.org"), ("CONNECT", "pypi.org:99999"), ("GET", "/"),
    ("GET", "https://pypi.org/"), ("GET", "http://user:pw@pypi.org/"), ("GET", "ftp://x/"),
])
def test_bad_targets_are_refused(method: str, target: str) -> None:
    with pytest.raises(proxy._Refused):
        proxy._target(method, target)


def test_forwarded_head_drops_proxy_headers_and_closes() -> None:
    head = proxy._forward_head("GET", "/a", "HTTP/1.1",
                               [("Host", "x.test"), ("Proxy-Authorization", "secret"),
                                ("Proxy-Connection", "keep-alive"), ("Connection", "keep-alive"),
                                ("Accept", "*/*")], "x.test", 80).decode()
    assert head.startswith("GET /a HTTP/1.1\r\n")
    assert "Proxy-" not in head and "keep-alive" not in head
    assert head.endswith("Accept: */*\r\nConnection: close\r\n\r\n")


def test_attempt_log_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "egress.log"
    log = proxy.AttemptLog(str(path), max_bytes=4096)
    for i in range(500):
        log.write(host=f"h{i}.test", port=443, verdict="refused", method="CONNECT", reason="x")
    assert path.stat().st_size <= 4096
    assert (tmp_path / "egress.log.1").stat().st_size <= 4096
    assert json.loads(path.read_text().splitlines()[-1])["host"] == "h499.test"


def test_attempts_skip_bad_lines_and_links(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "home"))
    folder = Path(egress.log_dir(store, "box"))
    folder.mkdir(parents=True)
    good = {"time": "2026-12-01T00:00:00Z", "host": "a.test", "port": 443,
            "verdict": "allowed", "method": "CONNECT"}
    lines = [json.dumps(good), "not json", json.dumps({**good, "port": "443"}),
             json.dumps({**good, "verdict": "maybe"}), "[" * 100000, json.dumps([1])]
    (folder / "egress.log").write_text("\n".join(lines) + "\n")
    secret = tmp_path / "secret"
    secret.write_text(json.dumps({**good, "host": "secret.test"}) + "\n")
    (folder / "egress.log.1").symlink_to(secret)
    rows = egress.attempts(store, "box")
    assert rows == [{**good, "reason": ""}]


def test_allow_host_input_and_config(tmp_path: Path) -> None:
    assert egress.allow_hosts(["A.test", "a.test", "*.b.test:8443"]) == ["a.test", "*.b.test:8443"]
    with pytest.raises(InvalidInput, match="--allow-host"):
        egress.allow_hosts(["bad host"])
    with pytest.raises(InvalidInput):
        egress.network("host")
    env = {"SANDBOX_ALLOW_HOSTS": "pypi.org, files.pythonhosted.org",
           "SANDBOX_EGRESS_NETWORK": "corp-net", "SANDBOX_PROXY_IMAGE": "python:3.12-alpine"}
    settings = config.from_environment(env)
    assert settings == {"allow_hosts": ["pypi.org", "files.pythonhosted.org"],
                        "egress_network": "corp-net", "proxy_image": "python:3.12-alpine"}


def test_project_file_adding_hosts_is_a_loosening() -> None:
    lower = config.StartOptions(allow_hosts=["pypi.org"])
    assert config.loosenings(lower, {"allow_hosts": ["pypi.org"]}) == []
    assert config.loosenings(lower, {"allow_hosts": ["evil.test"]}) == ["allow_hosts"]
    assert config.loosenings(lower, {"egress_network": "other"}) == ["egress_network"]


def _plan(**overrides: object) -> egress.Plan:
    values: dict[str, object] = dict(
        sandbox="box", home_label="abc", proxy="sandbox-egress-box-1",
        allow=["pypi.org"], egress_network="bridge", image="python:alpine",
        user="65534:65534", log_dir="/h/egress/box", lifetime=3600, deny=["192.0.2.2"])
    values.update(overrides)
    return egress.Plan(**values)  # type: ignore[arg-type]


def test_proxy_argv_is_locked_down() -> None:
    argv = egress.proxy_create_argv(_plan(attempt="0123abcd"))
    assert argv[1] == "create"
    joined = " ".join(argv)
    for flag in ("--rm", "--cap-drop ALL", "--security-opt no-new-privileges",
                 "--user 65534:65534", "--read-only", "--pids-limit", "--memory 128m",
                 "--memory-swap 128m", "--no-healthcheck", "--network bridge",
                 "--ready /log/ready", "--handoff /log/handoff/proxy.sock",
                 "--allow pypi.org", "--deny-addr 192.0.2.2",
                 "--lifetime 3600", f"source={egress.proxy_program_path()},target="
                 f"{egress.PROXY_PROGRAM},readonly", "source=/h/egress/box,target=/log"):
        assert flag in joined, flag
    assert argv.count("--network") == 1  # the egress network only: no network with the box
    assert "sandbox-cli.managed=1" not in argv  # not a sandbox to ls or purge
    assert "sandbox-cli.attempt=0123abcd" in argv
    assert "--init" not in argv  # python3 is PID 1: an image without it fails `docker start`
    assert "--lifetime" not in egress.proxy_create_argv(_plan(lifetime=None))
    assert egress.proxy_start_argv("p")[1:] == ["start", "p"]
    assert os.path.isfile(egress.proxy_program_path())


def test_sandbox_has_no_network_and_hands_off_its_port() -> None:
    plan = _plan()
    spec = docker.RunSpec(name="box", image="img", volume="/v", user="1:1", home_label="h",
                          ttl_seconds=10, mounts=egress.sandbox_mounts(plan),
                          main_prefix=egress.sandbox_main_prefix())
    argv = docker.run_argv(spec)
    assert argv[argv.index("--network") + 1] == "none" and argv.count("--network") == 1
    assert "--dns" not in argv
    # The main process: the handoff (by the image's python3), which then becomes the sleep.
    assert argv[argv.index("--entrypoint") + 1] == "python3"
    assert argv[argv.index("img") + 1:] == [
        "-I", "-S", egress.HANDOFF_PROGRAM, "/sandbox-egress/handoff/proxy.sock", "3128", "--",
        "sleep", "10"]
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "--mount"]
    assert f"type=bind,source={egress.handoff_program_path()},target=" \
        f"{egress.HANDOFF_PROGRAM},readonly" in mounts
    assert "type=bind,source=/h/egress/box/handoff,target=/sandbox-egress/handoff,readonly" \
        in mounts
    assert os.path.isfile(egress.handoff_program_path())
    # run's one-shot container: the handoff, then the command itself (behind the TTL script).
    once = docker.create_argv(spec, ["python3", "job.py"])
    assert once[-9:] == ["python3", "-I", "-S", egress.HANDOFF_PROGRAM,
                         "/sandbox-egress/handoff/proxy.sock", "3128", "--", "python3", "job.py"]
    env = egress.sandbox_env()
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://127.0.0.1:3128"
    assert "127.0.0.1" in env["NO_PROXY"] and env["NO_PROXY"] == env["no_proxy"]


@pytest.mark.parametrize("extra", [["--network"], ["-p", "8080:80"]])
def test_allow_host_with_network_or_port_is_exit_2(fake_docker: tuple[Path, dict[str, str]],
                                                   tmp_path: Path, extra: list[str]) -> None:
    calls, settings = fake_docker
    env = {**os.environ, **settings, "SANDBOX_HOME": str(tmp_path / "home"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    args = ["start", "--allow-host", "pypi.org", *extra]
    if extra[0] == "-p":
        args.append("--network")
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sandbox: error: --allow-host cannot be combined with ")
    assert proc.stderr.count("\n") == 1
    assert not calls.exists()  # refused before any docker call


def test_bad_allow_host_is_exit_2(fake_docker: tuple[Path, dict[str, str]],
                                  tmp_path: Path) -> None:
    calls, settings = fake_docker
    env = {**os.environ, **settings, "SANDBOX_HOME": str(tmp_path / "home"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    proc = subprocess.run([*CLI, "start", "--allow-host", "*.com"], capture_output=True,
                          text=True, env=env, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--allow-host" in proc.stderr and proc.stderr.count("\n") == 1
    assert not calls.exists()


def test_proxy_arguments_without_argparse() -> None:
    settings = proxy._arguments(["--handoff", "/log/handoff/proxy.sock", "--allow", "pypi.org",
                                 "--allow", "*.example.com:8443", "--deny-addr", "192.0.2.2",
                                 "--lifetime", "60", "--ready", "/log/ready"])
    assert settings.handoff == "/log/handoff/proxy.sock" and settings.port == proxy.PROXY_PORT
    assert [r.text() for r in settings.rules] == ["pypi.org", "*.example.com:8443"]
    assert settings.denied == {ipaddress.ip_address("192.0.2.2")}
    assert settings.lifetime == 60.0 and settings.ready == "/log/ready"
    for bad in (["--allow", "x.org"], ["--handoff"], ["--handoff", "a", "--bogus", "1"]):
        with pytest.raises(SystemExit):
            proxy._arguments(bad)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_handoff_gives_the_proxy_the_listening_socket_once(tmp_path: Path) -> None:
    """The sandbox's first process (egress_handoff) and the proxy (_take_port), here in two
    threads: the proxy ends up holding the one socket listening on the port, the handoff's
    copy is closed, and the Unix socket is gone (nothing can hand anything over again)."""
    import socket
    import threading

    from sandbox_cli import egress_handoff

    path, port = str(tmp_path / "proxy.sock"), _free_port()
    taken: list[socket.socket] = []
    thread = threading.Thread(target=lambda: taken.append(proxy._take_port(path, port, 10)))
    thread.start()
    egress_handoff.hand_off(path, port, wait=10)
    thread.join(10)
    listener = taken[0]
    try:
        assert not os.path.lexists(path)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn, _ = listener.accept()
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        for sock in (client, conn):
            sock.close()
        with pytest.raises(OSError):  # the handoff's own copy is closed: the port is ours
            socket.create_server(("127.0.0.1", port))
    finally:
        listener.close()


@pytest.mark.parametrize("kind", ["udp", "not-listening", "other-port"])
def test_proxy_refuses_a_socket_that_is_not_the_sandbox_port(tmp_path: Path, kind: str) -> None:
    import array
    import socket
    import threading

    path, port = str(tmp_path / "proxy.sock"), _free_port()
    failed: list[BaseException] = []

    def take() -> None:
        try:
            proxy._take_port(path, port, 10)
        except SystemExit as exc:
            failed.append(exc)

    thread = threading.Thread(target=take)
    thread.start()
    bad = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp"
                        else socket.SOCK_STREAM)
    bad.bind(("127.0.0.1", port if kind != "other-port" else 0))
    if kind == "other-port":
        bad.listen(1)
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with socket.socket(socket.AF_UNIX) as unix:
        unix.connect(path)
        unix.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array("i", [bad.fileno()]).tobytes())])
        assert unix.recv(1) == b""  # no "k": the handoff fails, the command never runs
    thread.join(10)
    bad.close()
    assert failed and "not its port" in str(failed[0])
    assert not os.path.lexists(path)


def test_handoff_without_a_proxy_is_exit_125_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    args = [str(tmp_path / "none.sock"), str(_free_port()), "--", "touch", str(marker)]
    code = ("import sys, sandbox_cli.egress_handoff as h; h.WAIT = 0.2; "
            f"sys.exit(h.main({args!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 125 and "egress proxy" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not marker.exists()


def test_relayed_sockets_get_tcp_nodelay() -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        proxy._no_delay(client, server)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        for sock in (client, server, listener):
            sock.close()


def test_port_holder_for_a_proxy_image_other_than_the_sandboxs() -> None:
    assert not egress.uses_holder(_plan(sandbox_image="python:alpine"))
    plan = _plan(sandbox_image="busybox", attempt="0123abcd")
    assert egress.uses_holder(plan)
    argv = egress.holder_run_argv(plan)
    joined = " ".join(argv)
    for flag in ("run -d --rm --pull never", "--network none", "--init", "--cap-drop ALL",
                 "--security-opt no-new-privileges", "--user 65534:65534", "--read-only",
                 "--memory 64m", "--no-healthcheck", "--log-driver none",
                 "--hostname box", "sandbox-cli.egress=1", "sandbox-cli.attempt=0123abcd",
                 "target=/sandbox-egress/handoff,readonly"):
        assert flag in joined, flag
    assert argv[argv.index("python:alpine") + 1:] == [  # (its image need not have a sleep)
        "-I", "-S", egress.HANDOFF_PROGRAM, "/sandbox-egress/handoff/proxy.sock", "3128",
        "--sleep", "3600"]
    # The sandbox joins its network namespace (and so has its hostname: docker refuses both).
    spec = docker.RunSpec(name="box", image="busybox", volume="/v", user="1:1", home_label="h",
                          ttl_seconds=10, network_mode="container:abc")
    box = docker.run_argv(spec)
    assert box[box.index("--network") + 1] == "container:abc" and "--hostname" not in box
    assert box[box.index("--entrypoint") + 1] == "sleep"


@pytest.mark.parametrize("head", [
    b"CONNECT \x1b]0;pwned\x07a.test:443 HTTP/1.1\r\n\r\n",
    b"CONNECT a.test:443\nallowed HTTP/1.1\r\n\r\n",
    b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\rX: y\r\n\r\n",
    b"GET http://a.test/\x00 HTTP/1.1\r\n\r\n",
])
def test_request_heads_with_control_characters_are_refused(head: bytes) -> None:
    with pytest.raises(proxy._Refused) as refused:
        proxy._parse_head(head)
    assert refused.value.code == 400
    assert proxy._parse_head(b"GET http://a.test/ HTTP/1.1\r\nX: a\tb\r\n\r\n")[0] == "GET"


def test_egress_listing_shows_what_the_sandbox_sent_as_printable(tmp_path: Path) -> None:
    # An older log (or a proxy of an older version) may hold what the sandbox sent: the
    # listing never hands the terminal an escape sequence or a forged line.
    home = tmp_path / "home"
    store = StateStore(str(home))
    store.ensure_dirs()
    from sandbox_cli.state import SandboxRecord

    with store.transaction() as records:
        records["box"] = SandboxRecord(name="box", container_id="c" * 64, image="img",
                                       created_at="2026-12-01T00:00:00Z", expires_at=None,
                                       options={"egress_network": "bridge"})
    folder = Path(egress.log_dir(store, "box"))
    folder.mkdir(parents=True)
    entry = {"time": "2026-12-01T00:00:00Z", "host": "\x1b]0;x\x07a.test\nforged",
             "port": 443, "verdict": "refused", "method": "CONNECT", "reason": "no\x1b[2J"}
    (folder / "egress.log").write_text(json.dumps(entry) + "\n")
    proc = subprocess.run([*CLI, "egress", "box"], capture_output=True, text=True,
                          env={**os.environ, "SANDBOX_HOME": str(home), "NO_COLOR": "1"},
                          stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert proc.stdout.count("\n") == 1 and "\\x1b" in proc.stdout, proc.stdout


def test_proxy_on_a_python_too_old_says_so_in_its_errors_file(tmp_path: Path) -> None:
    # A proxy image with python3 older than 3.10 (Debian bullseye's 3.9): the reason goes to
    # --errors, where `sandbox start` reads it, before the program fails on 3.10 syntax.
    errors = tmp_path / "errors"
    code = ("import runpy, sys; sys.version_info = (3, 9, 2); "
            f"sys.argv = ['proxy', '--errors', {str(errors)!r}]; "
            f"runpy.run_path({egress.proxy_program_path()!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1 and "needs Python 3.10" in proc.stderr, proc.stderr
    assert "needs Python 3.10 or newer" in errors.read_text()
