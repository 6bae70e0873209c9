"""Input checks: every refusal is an InvalidInput with a one-line message."""

from __future__ import annotations

import pytest

from sandbox_cli import validate
from sandbox_cli.errors import InvalidInput


@pytest.mark.parametrize("name", ["box", "my-box_1.2", "A1", "x" * 63])
def test_good_names(name: str) -> None:
    assert validate.name(name) == name


@pytest.mark.parametrize("name", ["", "a", "-box", ".box", "../x", "a/b", "a b", "x" * 64, "é1"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate.name(name)


@pytest.mark.parametrize(("spec", "expected"), [
    ("8088:80", "127.0.0.1:8088:80/tcp"),
    ("80", "127.0.0.1::80/tcp"),
    ("0.0.0.0:8088:80/udp", "0.0.0.0:8088:80/udp"),
    ("[::1]:8088:80", "[::1]:8088:80/tcp"),
    ("127.0.0.1::80", "127.0.0.1::80/tcp"),
])
def test_ports_bind_loopback_unless_told(spec: str, expected: str) -> None:
    assert validate.port(spec) == expected


@pytest.mark.parametrize("spec", ["0:80", "70000:80", "abc", "1.2.3.4.5:80:80", "80/icmp",
                                  "a:b:c:d", "8080:", "[::1]80:80", "host:80:80"])
def test_bad_ports(spec: str) -> None:
    with pytest.raises(InvalidInput):
        validate.port(spec)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("90", 90), ("1h30m", 5400),
    ("1.5m", 90),
])
def test_durations(text: str, seconds: int) -> None:
    assert validate.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5s", "abc", "5x", "400d", "s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidInput):
        validate.duration(text)


def test_env_pairs() -> None:
    assert validate.env_pair("A=b=c", {}) == ("A", "b=c")
    assert validate.env_pair("TOKEN", {"TOKEN": "s3cret"}) == ("TOKEN", "s3cret")
    for bad in ("1X=y", "A B=c", "=v", "MISSING"):
        with pytest.raises(InvalidInput):
            validate.env_pair(bad, {})


@pytest.mark.parametrize("ref", ["python:alpine", "python", "ghcr.io/o/n:1.2", "localhost:5000/x",
                                 "sandbox-test/python:bookworm", "a/b@sha256:" + "0" * 64])
def test_good_images(ref: str) -> None:
    assert validate.image(ref) == ref


@pytest.mark.parametrize("ref", ["", "UPPER/Case", "-bad", "a b", "x:", "a//b", "x:y:z"])
def test_bad_images(ref: str) -> None:
    with pytest.raises(InvalidInput):
        validate.image(ref)


@pytest.mark.parametrize(("path", "parts"), [
    ("a/b.txt", ("a", "b.txt")), ("./a//b", ("a", "b")), ("/app/x", ("x",)),
])
def test_sandbox_paths(path: str, parts: tuple[str, ...]) -> None:
    assert validate.sandbox_path(path) == parts


@pytest.mark.parametrize("path", ["", ".", "/app", "../x", "a/../../x", "/etc/passwd", "a\0b",
                                  "/application/x"])
def test_bad_sandbox_paths(path: str) -> None:
    with pytest.raises(InvalidInput):
        validate.sandbox_path(path)


def test_root_allowed_only_when_asked() -> None:
    assert validate.sandbox_path(".", allow_root=True) == ()


@pytest.mark.parametrize("pattern", ["", "/etc/*", "../x", "a/../../b", "!x", "a\0b"])
def test_bad_globs(pattern: str) -> None:
    with pytest.raises(InvalidInput):
        validate.glob(pattern)


def test_limits() -> None:
    assert validate.memory("512M") == "512m"
    for bad in ("0", "lots", "-1g"):
        with pytest.raises(InvalidInput):
            validate.memory(bad)
    with pytest.raises(InvalidInput):
        validate.cpus(0)
    with pytest.raises(InvalidInput):
        validate.pids(1)
    assert validate.container_dir("src") == "/app/src"
    with pytest.raises(InvalidInput):
        validate.container_dir("-x")


def test_sizes_below_the_engine_minimum_are_refused() -> None:
    assert validate.memory("6m") == "6m"
    assert validate.memory("6291456") == "6291456"
    for small in ("2", "5m", "6291455", "1k"):
        with pytest.raises(InvalidInput, match="below the minimum of 6m"):
            validate.memory(small)
    assert validate.tmpfs_size("4k") == "4k"
    for bad in ("0", "1", "64x", "64m,exec", ""):
        with pytest.raises(InvalidInput, match="tmpfs size"):
            validate.tmpfs_size(bad)


def test_cpus_above_the_host_count_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    assert validate.host_cpus(2.0) == 2.0
    with pytest.raises(InvalidInput, match="more than the 2 CPUs of this host"):
        validate.host_cpus(2.5)
    monkeypatch.setenv("DOCKER_HOST", "tcp://builder:2376")  # a remote daemon counts its own
    assert validate.host_cpus(16.0) == 16.0


def test_a_host_port_published_twice_is_refused() -> None:
    ok = [validate.port(p) for p in ("8080:80", "8081:80", "8080:80/udp", "10.0.0.1:8080:81",
                                     "80", "81")]
    assert validate.distinct_ports(ok) == ok
    for pair in (("8080:80", "8080:81"), ("0.0.0.0:9000:1", "127.0.0.1:9000:2"),
                 ("[::]:9000:1", "9000:2")):
        with pytest.raises(InvalidInput, match="published twice"):
            validate.distinct_ports([validate.port(p) for p in pair])
