"""Exact argv shapes of every docker call, without a daemon."""

from __future__ import annotations

import pytest

from sandbox_cli import docker
from sandbox_cli.__main__ import split_command_line


def _spec(**overrides: object) -> docker.RunSpec:
    base: dict[str, object] = dict(name="box", image="python:alpine", volume="/h/volumes/box",
                                   user="1000:1000", home_label="abc", ttl_seconds=3600,
                                   expires_at="2026-01-01T01:00:00Z")
    base.update(overrides)
    return docker.RunSpec(**base)  # type: ignore[arg-type]


D = "/opt/bin/docker"


@pytest.fixture(autouse=True)
def _plain_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_DOCKER", D)


def test_run_argv_is_locked_down_by_default() -> None:
    assert docker.run_argv(_spec()) == [
        D, "run", "-d", "--rm", "--pull", "never",
        "--name", "box", "--hostname", "box",
        "--label", "sandbox-cli.managed=1", "--label", "sandbox-cli.home=abc",
        "--label", "sandbox-cli.name=box", "--label", "sandbox-cli.user=1000:1000",
        "--label", "sandbox-cli.keep=0",
        "--label", "sandbox-cli.expires=2026-01-01T01:00:00Z",
        "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", "0:0", "--pids-limit", "256", "--memory", "1g", "--memory-swap", "1g",
        "--cpus", "1", "--init", "--no-healthcheck", "--log-driver", "none",
        "--env", "HOME=/tmp",
        "--mount", "type=bind,source=/h/volumes/box,target=/app", "--workdir", "/app",
        "--read-only",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=256m,mode=1777",
        "--tmpfs", "/var/tmp:rw,nosuid,nodev,size=256m,mode=1777",
        "--entrypoint", "sleep", "python:alpine", "3600",
    ]


def test_writable_root_is_a_loosening() -> None:
    assert "--read-only" not in docker.run_argv(_spec(read_only=False))
    assert "--tmpfs" not in docker.run_argv(_spec(read_only=False))


def test_execs_run_as_the_sandbox_user() -> None:
    argv = docker.exec_argv("box", ["id"], marker="m", user="1000:1000")
    assert argv[:4] == [D, "exec", "--user", "1000:1000"]


def test_run_argv_loosenings_are_explicit() -> None:
    argv = docker.run_argv(_spec(
        network=True, ports=["127.0.0.1:8088:80/tcp"], env_file="/tmp/e", ttl_seconds=None,
        read_only=True, runtime="runsc", cap_add=["NET_BIND_SERVICE"], memory="2g", cpus=1.5,
        pids_limit=64, keep=True,
    ))
    joined = " ".join(argv)
    assert "--network bridge" in joined
    assert "--publish 127.0.0.1:8088:80/tcp" in joined
    assert "--read-only --tmpfs /tmp:rw,nosuid,nodev,size=256m" in joined
    assert "--runtime runsc" in joined
    assert "--cap-add NET_BIND_SERVICE" in joined
    assert "--memory 2g --memory-swap 2g --cpus 1.5" in joined
    assert "--pids-limit 64" in joined
    assert "sandbox-cli.keep=1" in joined
    # env values never reach argv (where `ps` would show them): they travel in a file
    assert argv[argv.index("/tmp/e") - 1] == "--env-file"
    assert argv[-2:] == ["python:alpine", docker.SLEEP_FOREVER]


def test_one_shot_create_and_start() -> None:
    argv = docker.create_argv(_spec(ttl_seconds=None), ["python", "-c", "print(1)"],
                              workdir="/app/src", stdin=True)
    assert argv[:5] == [D, "create", "--rm", "--pull", "never"]
    assert argv[-8:] == ["--workdir", "/app/src", "--interactive",
                         "--entrypoint", "python", "python:alpine", "-c", "print(1)"]
    same = docker.run_argv(_spec(ttl_seconds=None))[6:-4]
    user = same.index("--user") + 1
    assert argv[5:-8] == [*same[:user], "1000:1000", *same[user + 1:]]  # the command's own user
    assert "--tty" in docker.create_argv(_spec(), ["sh"], tty=True)
    assert docker.start_attached_argv("box", stdin=True) == [
        D, "start", "--attach", "--interactive", "box"]
    assert docker.start_attached_argv("box") == [D, "start", "--attach", "box"]


def test_mount_quotes_paths_with_commas() -> None:
    argv = docker.run_argv(_spec(volume='/h/a,b"c/box'))
    assert argv[argv.index("--mount") + 1] == 'type=bind,"source=/h/a,b""c/box",target=/app'


def test_exec_argv() -> None:
    assert docker.exec_argv("box", ["python", "-c", "print(1)"], marker="m1",
                            env_file="/tmp/e", workdir="/app/src", stdin=True) == [
        D, "exec", "-i", "--env", "SANDBOX_EXEC_ID=m1", "--env-file", "/tmp/e",
        "--workdir", "/app/src", "box", "python", "-c", "print(1)",
    ]
    assert docker.exec_argv("box", ["true"], marker="m", tty=True, stdin=True)[2:4] == ["-i", "-t"]


def test_other_argv_builders() -> None:
    assert docker.remove_argv(["a", "b"]) == [D, "rm", "-f", "a", "b"]
    assert docker.network_disconnect_argv("bridge", "box") == [
        D, "network", "disconnect", "--force", "bridge", "box"]
    assert docker.build_argv("o/n", "https://github.com/o/n.git#main:dir") == [
        D, "build", "--tag", "o/n", "--", "https://github.com/o/n.git#main:dir"]
    assert docker.list_argv("abc") == [
        D, "ps", "-a", "-q", "--no-trunc",
        "--filter", "label=sandbox-cli.managed=1", "--filter", "label=sandbox-cli.home=abc"]
    assert docker.list_argv("abc", "n1")[-2:] == ["--filter", "label=sandbox-cli.attempt=n1"]
    assert docker.inspect_argv(["i1", "i2"]) == [D, "inspect", "--type", "container", "i1", "i2"]
    assert docker.port_argv("i1") == [D, "port", "i1"]
    kill = docker.kill_exec_argv("box", "m1", 1234)
    assert kill[:5] == [D, "exec", "box", "sh", "-c"]
    assert kill[-3:] == ["sandbox-kill", "m1", "1234"]


def test_docker_binary_is_resolved_in_our_own_path(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: object) -> None:
    monkeypatch.setenv("SANDBOX_DOCKER", "/opt/other-docker")
    assert docker.remove_argv(["a"])[0] == "/opt/other-docker"
    monkeypatch.setenv("SANDBOX_DOCKER", "docker")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert docker.docker_binary() == "docker"  # not found: Popen fails, mapped to exit 5


def test_env_file_is_private_and_removed() -> None:
    import os
    import stat

    with docker.env_file({"A": "1", "TOKEN": "s=3"}) as path:
        assert path is not None
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with open(path) as handle:
            assert handle.read() == "A=1\nTOKEN=s=3\n"
    assert not os.path.exists(path)
    with docker.env_file({}) as none:
        assert none is None


@pytest.mark.parametrize(("stderr", "kind"), [
    ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon "
     "running?", "DockerUnavailable"),
    ("permission denied while trying to connect to the Docker daemon socket", "DockerUnavailable"),
    ("Error response from daemon: No such container: box", "SandboxNotFound"),
    ("docker: Error response from daemon: No such image: x:latest", "ImageError"),
    ('docker: Error response from daemon: Conflict. The container name "/box" is already in use '
     'by container "abc".', "NameInUse"),
    ("something else entirely", "DockerError"),
])
def test_failures_are_classified(stderr: str, kind: str) -> None:
    error = docker.classify_failure([D, "run"], 125, stderr)
    assert type(error).__name__ == kind
    assert "\n" not in error.message


@pytest.mark.parametrize(("args", "leading", "expected"), [
    (["box", "python", "-c", "x"], 1, ["box", "--", "python", "-c", "x"]),
    (["box", "--timeout", "5", "node", "-e", "x"], 1,
     ["box", "--timeout", "5", "--", "node", "-e", "x"]),
    (["--timeout", "5", "box", "ls", "-la"], 1, ["--timeout", "5", "box", "--", "ls", "-la"]),
    (["box", "--", "ls", "--json"], 1, ["box", "--", "ls", "--json"]),
    (["box", "--json", "ls"], 1, ["box", "--json", "--", "ls"]),
    (["--copy", "src/**", "python", "-m", "pytest"], 0,
     ["--copy", "src/**", "--", "python", "-m", "pytest"]),
    (["box"], 1, ["box"]),
])
def test_command_line_split(args: list[str], leading: int, expected: list[str]) -> None:
    assert split_command_line(args, {"--timeout", "--copy", "-e", "--env"}, leading) == expected


def test_run_gets_an_in_container_ttl() -> None:
    spec = docker.RunSpec(name="b", image="img", volume="/v", user="1:1", home_label="h",
                          ttl_seconds=60, attempt="n1")
    argv = docker.create_argv(spec, ["python", "-c", "print(1)"])
    assert argv[-10:] == ["--entrypoint", "/bin/sh", "img", "-c", docker.TTL_SCRIPT, "sandbox-ttl",
                          "60", "python", "-c", "print(1)"]
    assert "sandbox-cli.attempt=n1" in argv
    plain = docker.create_argv(docker.RunSpec(name="b", image="img", volume="/v", user="1:1",
                                              home_label="h", ttl_seconds=None), ["true"])
    assert plain[-3:] == ["--entrypoint", "true", "img"]
