"""Configuration layers and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_cli import config
from sandbox_cli.errors import ConfigError, InvalidInput


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    user = tmp_path / "xdg"
    project = tmp_path / "project" / "sub"
    project.mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user))
    monkeypatch.chdir(project)
    return user / "sandbox-cli" / "config.yaml", project.parent / "sandbox.yaml"


def test_defaults_are_locked_down(dirs: tuple[Path, Path]) -> None:
    options = config.resolve({}, environ={}).options
    assert options == config.StartOptions()
    assert (options.image, options.network, options.ttl, options.keep) == (
        "python:alpine", False, "1h", False)


def test_precedence_flags_env_project_user(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    user.parent.mkdir(parents=True)
    user.write_text("image: user/img\nmemory: 2g\nttl: 5m\nenv: {A: user, B: user}\n")
    project.write_text("image: project/img\nmemory: 3g\nenv:\n  B: project\n  C: project\n")
    resolved = config.resolve({"memory": "4g", "env": {"C": "flag"}},
                              environ={"SANDBOX_IMAGE": "env/img"})
    options = resolved.options
    assert options.image == "env/img"  # env beats both files
    assert options.memory == "4g"  # flag beats all
    assert options.ttl == "5m"  # only the user file sets it
    assert options.env == {"A": "user", "B": "project", "C": "flag"}  # merged key by key
    assert resolved.files == [str(user), str(project)]


def test_project_file_that_loosens_is_reported(dirs: tuple[Path, Path]) -> None:
    _, project = dirs
    project.write_text("network: true\nports: ['8080:80']\n")
    resolved = config.resolve({}, environ={})
    assert resolved.loosened_by_project == ["network", "ports"]
    assert resolved.options.ports == ["127.0.0.1:8080:80/tcp"]


def test_falsy_and_resource_loosenings_are_reported(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    user.parent.mkdir(parents=True)
    user.write_text("read_only: true\nruntime: runsc\nmemory: 256m\npids: 64\nttl: 10m\n")
    project.write_text("read_only: false\nruntime: null\nmemory: 64g\npids: 100000\n"
                       "ttl: 365d\ncpus: 0.5\n")
    resolved = config.resolve({}, environ={})
    assert resolved.loosened_by_project == ["read_only", "runtime", "memory", "pids", "ttl"]
    overridden = config.resolve({"memory": "128m"}, environ={})
    assert "memory" not in overridden.loosened_by_project


def test_choosing_a_runtime_is_not_a_loosening(dirs: tuple[Path, Path]) -> None:
    _, project = dirs
    project.write_text("runtime: runsc\n")
    assert config.resolve({}, environ={}).loosened_by_project == []


def test_project_file_of_another_user_is_ignored(dirs: tuple[Path, Path]) -> None:
    import os

    _, project = dirs
    project.write_text("network: true\n")
    if os.getuid() != 0:
        pytest.skip("needs root to hand the file to another user")
    os.chown(project, 12345, 12345)
    resolved = config.resolve({}, environ={})
    assert resolved.ignored == [str(project)] and resolved.options.network is False


@pytest.mark.parametrize(("text", "line", "words"), [
    ("image: ok\nimagee: typo\n", 2, "unknown setting 'imagee'"),
    ("image: ok\nnetwork: maybe\n", 2, "network"),
    ("pids: many\n", 1, "pids"),
    ("ports: ['99999:1']\n", 1, "invalid port"),
    ("image: [unclosed\n", 2, ""),
    ("- a list\n", 1, "expected a mapping"),
])
def test_bad_files_name_file_and_line(dirs: tuple[Path, Path], text: str, line: int,
                                      words: str) -> None:
    _, project = dirs
    project.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.resolve({}, environ={})
    message = caught.value.message
    assert message.startswith(f"{project}:{line}:"), message
    assert words in message
    assert "\n" not in message


def test_bad_environment_value_is_named(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(InvalidInput, match="SANDBOX_TTL"):
        config.resolve({}, environ={"SANDBOX_TTL": "soon"})


def test_empty_file_is_fine(dirs: tuple[Path, Path]) -> None:
    _, project = dirs
    project.write_text("# nothing yet\n")
    assert config.resolve({}, environ={}).options == config.StartOptions()


def test_loosenings_are_described_in_words(dirs: tuple[Path, Path]) -> None:
    assert [config.describe(k, v) for k, v in (
        ("network", True), ("memory", "4g"), ("read_only", False), ("cpus", 2.0),
        ("cpus", 0.5), ("ports", ["127.0.0.1:8080:80/tcp"]), ("runtime", None),
        ("cap_add", ["NET_ADMIN", "SYS_PTRACE"]), ("image", "evil/img"))] == [
        "network on", "memory 4g", "read-only root off", "cpus 2", "cpus 0.5",
        "ports 127.0.0.1:8080:80/tcp", "runtime none", "capabilities NET_ADMIN SYS_PTRACE",
        "image evil/img"]


def test_a_project_image_is_a_loosening(dirs: tuple[Path, Path]) -> None:
    _, project = dirs
    project.write_text("image: someone/built-from-a-repo\n")
    assert config.resolve({}, environ={}).loosened_by_project == ["image"]
    assert config.resolve({"image": "mine/img"}, environ={}).loosened_by_project == []


@pytest.mark.parametrize("kind", ["link", "fifo", "dir", "big", "deep"])
def test_project_files_that_are_not_plain_settings_are_refused(dirs: tuple[Path, Path],
                                                               kind: str) -> None:
    import os

    _, project = dirs
    if kind == "link":
        real = project.parent / "real.yaml"
        real.write_text("memory: 2g\n")
        project.symlink_to(real)
    elif kind == "fifo":
        os.mkfifo(project)
    elif kind == "dir":
        project.mkdir()
    elif kind == "big":
        project.write_text("# " + "x" * (2 << 20) + "\n")
    else:
        project.write_text("env: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match=str(project)):
        config.resolve({}, environ={})
