"""Every command against the real engine, as a user drives it from a shell."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, CLI, PYTHON_IMAGE, Runner, docker_inspect


def _labelled(home: Path) -> list[str]:
    from sandbox_cli.state import home_label

    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}", "--filter",
                          f"label=sandbox-cli.home={home_label(str(home))}"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- start ---------------------------------------------------------------------------------

def test_start_prints_the_name_alone(docker_engine: None, sandbox: Runner, home: Path) -> None:
    proc = sandbox("start", "--image", BUSYBOX_IMAGE, check=True)
    name = proc.stdout.decode().strip()
    assert proc.stdout.decode() == name + "\n" and name.startswith("box-")
    assert _labelled(home) == [name]
    assert (home / "volumes" / name).is_dir()
    assert docker_inspect(name, "{{.Config.WorkingDir}}") == "/app"
    sandbox("purge", name, check=True)
    assert _labelled(home) == []


def test_start_json_and_image_from_environment(docker_engine: None, sandbox: Runner,
                                               home: Path) -> None:
    proc = sandbox("start", "--json", "--name", "jbox", env={"SANDBOX_IMAGE": BUSYBOX_IMAGE},
                   check=True)
    data = json.loads(proc.stdout)
    assert data["name"] == "jbox" and data["image"] == BUSYBOX_IMAGE
    assert data["volume"] == str(home / "volumes" / "jbox")
    assert data["network"] is False and data["keep"] is False and data["expires_at"]
    again = sandbox("start", "--name", "jbox", "--image", BUSYBOX_IMAGE)
    assert again.returncode == 2 and b"already exists" in again.stderr
    sandbox("purge", "jbox", check=True)


def test_missing_image_is_a_clear_error(docker_engine: None, sandbox: Runner,
                                        home: Path) -> None:
    proc = sandbox("start", "--image", "sandbox-test/does-not-exist:nope")
    assert proc.returncode == 6
    last = proc.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("sandbox: error: could not pull image")
    assert b"Traceback" not in proc.stderr
    assert _labelled(home) == [] and list((home / "volumes").iterdir()) == []


# --- exec ----------------------------------------------------------------------------------

def test_exec_pipes_stdin(pybox: str, sandbox: Runner) -> None:
    proc = sandbox("exec", pybox, "python", "-", input=b"print(6*7)\n")
    assert (proc.returncode, proc.stdout) == (0, b"42\n")


def test_exec_streams_separately_and_passes_the_exit_code(box: str, sandbox: Runner) -> None:
    proc = sandbox("exec", box, "sh", "-c", "printf out; printf err >&2; exit 3")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"out", b"err")


def test_exec_arguments_are_not_shell_parsed(box: str, sandbox: Runner) -> None:
    proc = sandbox("exec", box, "echo", "$HOME", "a b", ";", "-e", "--json", check=True)
    assert proc.stdout == b"$HOME a b ; -e --json\n"


def test_exec_output_arrives_as_it_comes(box: str, home: Path) -> None:
    proc = subprocess.Popen([*CLI, "exec", box, "sh", "-c", "echo first; sleep 4; echo second"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    began = time.monotonic()
    first = proc.stdout.readline()
    waited = time.monotonic() - began
    rest = proc.stdout.read()
    proc.wait()
    assert first == b"first\n" and rest == b"second\n"
    assert waited < 3.5, f"first line took {waited:.1f}s: output was held back"


def test_exec_json(box: str, sandbox: Runner) -> None:
    proc = sandbox("exec", "--json", box, "sh", "-c", "echo hi; echo oops >&2; exit 5")
    assert proc.returncode == 5
    data = json.loads(proc.stdout)
    assert {k: data[k] for k in ("exitCode", "stdout", "stderr", "failed", "timedOut")} == {
        "exitCode": 5, "stdout": "hi\n", "stderr": "oops\n", "failed": True, "timedOut": False}


def test_exec_env_and_workdir(box: str, sandbox: Runner) -> None:
    sandbox("write", box, "sub/marker", "x", check=True)
    proc = sandbox("exec", "-e", "GREETING=hello world", "-w", "sub", box, "sh", "-c",
                   'echo "$GREETING"; pwd; ls', check=True)
    assert proc.stdout == b"hello world\n/app/sub\nmarker\n"


def test_exec_timeout_stops_the_command_inside(box: str, sandbox: Runner) -> None:
    began = time.monotonic()
    proc = sandbox("exec", "--timeout", "2", box, "sh", "-c", "sleep 300 & sleep 301")
    assert proc.returncode == 124
    assert time.monotonic() - began < 15
    assert b"timed out" in proc.stderr
    ps = sandbox("exec", box, "ps", check=True).stdout.decode()
    assert "sleep 300" not in ps and "sleep 301" not in ps


def test_exec_unknown_sandbox(docker_engine: None, sandbox: Runner) -> None:
    proc = sandbox("exec", "nope-box", "true")
    assert proc.returncode == 3
    assert proc.stderr.decode().count("\n") == 1 and b"no sandbox named 'nope-box'" in proc.stderr


# --- write / read --------------------------------------------------------------------------

def test_write_and_read_binary_via_stdin(box: str, sandbox: Runner, home: Path) -> None:
    payload = bytes(range(256)) * 4096 + b"\x00\xff"
    sandbox("write", box, "deep/er/blob.bin", input=payload, check=True)
    assert (home / "volumes" / box / "deep/er/blob.bin").read_bytes() == payload
    assert sandbox("read", box, "deep/er/blob.bin", check=True).stdout == payload
    inside = sandbox("exec", box, "md5sum", "/app/deep/er/blob.bin", check=True).stdout
    import hashlib

    assert inside.split()[0].decode() == hashlib.md5(payload).hexdigest()


def test_write_text_and_read_what_the_container_wrote(box: str, sandbox: Runner) -> None:
    sandbox("write", box, "/app/hello.txt", "Hello, world!", check=True)
    assert sandbox("read", box, "hello.txt", check=True).stdout == b"Hello, world!"
    sandbox("exec", box, "sh", "-c", "echo made inside > out.txt", check=True)
    assert sandbox("read", box, "out.txt", check=True).stdout == b"made inside\n"
    missing = sandbox("read", box, "nope.txt")
    assert missing.returncode == 4 and b"no such file" in missing.stderr


# --- copy-to -------------------------------------------------------------------------------

def test_copy_to_keeps_relative_paths(box: str, sandbox: Runner, tmp_path: Path,
                                      home: Path) -> None:
    src = tmp_path / "proj"
    for rel in ("src/a/b.py", "src/c.txt", "src/skip.log", "other/d.py", "src/.git/config"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    (src / ".gitignore").write_text("*.log\n")
    proc = sandbox("copy-to", box, "src/**", ".", cwd=src, check=True)
    assert proc.stdout == b""
    assert proc.stderr.decode().startswith("sandbox: copied 2 files")
    root = home / "volumes" / box
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "src/a/b.py", "src/c.txt"]
    listing = sandbox("exec", box, "cat", "/app/src/a/b.py", check=True).stdout
    assert listing == b"src/a/b.py"

    sandbox("copy-to", box, "*.py", "dest/in", "--exclude", "other/**", cwd=src, check=True)
    assert (root / "dest/in/src/a/b.py").is_file() and not (root / "dest/in/other").exists()

    proc = sandbox("copy-to", box, "src/**", "all", "--no-ignore", "--json", cwd=src, check=True)
    assert json.loads(proc.stdout)["files"] == 4
    nothing = sandbox("copy-to", box, "*.rs", cwd=src)
    assert nothing.returncode == 2 and b"no files match" in nothing.stderr


# --- network -------------------------------------------------------------------------------

def test_published_port_answers_then_disconnect_cuts_it(start_box, sandbox: Runner) -> None:
    port = _free_port()
    name = start_box("--network", "-p", f"{port}:8000", image=PYTHON_IMAGE)
    assert docker_inspect(name, "{{json .HostConfig.PortBindings}}") == (
        f'{{"8000/tcp":[{{"HostIp":"127.0.0.1","HostPort":"{port}"}}]}}')
    sandbox("exec", name, "sh", "-c",
            "nohup python -m http.server 8000 >/dev/null 2>&1 &", check=True)
    url = f"http://127.0.0.1:{port}/"
    body = b""
    for _ in range(50):
        try:
            body = urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            time.sleep(0.2)
    assert b"Directory listing" in body
    proc = sandbox("disconnect", name, check=True)
    assert b"disconnected from bridge" in proc.stderr
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2).read()
    assert docker_inspect(name, "{{json .NetworkSettings.Networks}}") == "{}"
    again = sandbox("disconnect", name, check=True)
    assert b"already without network" in again.stderr
    listed = json.loads(sandbox("ls", "--json", check=True).stdout)
    assert [r["network"] for r in listed if r["name"] == name] == [False]


def test_ports_need_network(docker_engine: None, sandbox: Runner, home: Path) -> None:
    proc = sandbox("start", "-p", "8080:80", "--image", BUSYBOX_IMAGE)
    assert proc.returncode == 2 and b"--network" in proc.stderr
    assert _labelled(home) == []


# --- purge, keep, ttl, state ---------------------------------------------------------------

def test_keep_survives_a_bare_purge(docker_engine: None, sandbox: Runner, home: Path) -> None:
    kept = sandbox("start", "--keep", "--image", BUSYBOX_IMAGE, check=True).stdout.decode().strip()
    temp = sandbox("start", "--image", BUSYBOX_IMAGE, check=True).stdout.decode().strip()
    proc = sandbox("purge", "--json", check=True)
    assert json.loads(proc.stdout) == {"removed": [temp]}
    assert _labelled(home) == [kept]
    assert not (home / "volumes" / temp).exists() and (home / "volumes" / kept).exists()
    sandbox("purge", "--all", check=True)
    assert _labelled(home) == [] and list((home / "volumes").iterdir()) == []


def test_lost_state_file_strands_nothing(docker_engine: None, sandbox: Runner,
                                         home: Path) -> None:
    names = [sandbox("start", "--image", BUSYBOX_IMAGE, check=True).stdout.decode().strip()
             for _ in range(2)]
    (home / "state.json").unlink()
    listed = json.loads(sandbox("ls", "--json", check=True).stdout)
    assert sorted(r["name"] for r in listed) == sorted(names)
    # A bare purge leaves young unrecorded containers to a `start` that may be in progress...
    assert json.loads(sandbox("purge", "--json", check=True).stdout) == {"removed": []}
    # ...but names and --all find them by label.
    sandbox("purge", names[0], check=True)
    sandbox("purge", "--all", check=True)
    assert _labelled(home) == [] and list((home / "volumes").iterdir()) == []


def test_ttl_expiry(docker_engine: None, sandbox: Runner, home: Path) -> None:
    """The container goes at its TTL; the folder stays (see test_lifecycle_expiry)."""
    name = sandbox("start", "--ttl", "2s", "--image", BUSYBOX_IMAGE,
                   check=True).stdout.decode().strip()
    deadline = time.monotonic() + 30
    while _labelled(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _labelled(home) == [], "Docker did not remove the container when its TTL ran out"
    time.sleep(6)  # past the expiry grace
    (row,) = json.loads(sandbox("ls", "--json", check=True).stdout)
    assert row["name"] == name and row["status"] == "expired"
    assert (home / "volumes" / name).exists()
    gone = sandbox("exec", name, "true")
    assert gone.returncode == 3 and b"expired" in gone.stderr
    sandbox("purge", name, check=True)


def test_purge_unknown_name(docker_engine: None, sandbox: Runner) -> None:
    proc = sandbox("purge", "ghost-box")
    assert proc.returncode == 3 and b"ghost-box" in proc.stderr


def test_ls_plain_and_json(box: str, sandbox: Runner, home: Path) -> None:
    plain = sandbox("ls", check=True).stdout.decode().splitlines()
    assert len(plain) == 1 and plain[0].split("\t")[:3] == [box, "running", BUSYBOX_IMAGE]
    (row,) = json.loads(sandbox("ls", "--json", check=True).stdout)
    assert {"name", "container_id", "image", "status", "volume", "network", "ports", "keep",
            "created_at", "expires_at"} <= set(row)
    assert row["volume"] == str(home / "volumes" / box) and row["status"] == "running"


def test_twelve_parallel_starts_are_all_recorded(docker_engine: None, sandbox: Runner,
                                                 home: Path) -> None:
    with ThreadPoolExecutor(12) as pool:
        procs = list(pool.map(lambda _: sandbox("start", "--image", BUSYBOX_IMAGE), range(12)))
    try:
        assert [p.returncode for p in procs] == [0] * 12
        names = sorted(p.stdout.decode().strip() for p in procs)
        state = json.loads((home / "state.json").read_text())
        assert sorted(state["sandboxes"]) == names
        assert _labelled(home) == names
    finally:
        sandbox("purge", "--all")


# --- run -----------------------------------------------------------------------------------

def test_run_is_one_shot(docker_engine: None, sandbox: Runner, home: Path,
                         tmp_path: Path) -> None:
    work = tmp_path / "w"
    (work / "src").mkdir(parents=True)
    (work / "src" / "main.py").write_text("import sys; print('ran'); sys.exit(7)\n")
    proc = sandbox("run", "--image", PYTHON_IMAGE, "--copy", "src/**", "--", "python",
                   "src/main.py", cwd=work)
    assert (proc.returncode, proc.stdout) == (7, b"ran\n")
    assert _labelled(home) == [] and list((home / "volumes").iterdir()) == []
    plain = sandbox("run", "--image", BUSYBOX_IMAGE, "echo", "-n", "x", check=True)
    assert plain.stdout == b"x"
    timed = sandbox("run", "--image", BUSYBOX_IMAGE, "--timeout", "1", "sleep", "60")
    assert timed.returncode == 124
    assert _labelled(home) == []


def test_run_cleans_up_on_ctrl_c(docker_engine: None, home: Path) -> None:
    proc = subprocess.Popen([*CLI, "run", "--image", BUSYBOX_IMAGE, "sh", "-c",
                             "echo up; sleep 120"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"interrupted" in err
    assert _labelled(home) == [] and list((home / "volumes").iterdir()) == []


# --- build-repo ----------------------------------------------------------------------------

@pytest.fixture
def git_server(tmp_path: Path):
    base = tmp_path / "git"
    repo = base / "demo"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "Dockerfile").write_text(
        f"FROM {BUSYBOX_IMAGE}\nRUN echo built-from-git > /built.txt\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    port = _free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--base-path={base}",
                               "--export-all", f"--port={port}", "--listen=127.0.0.1", str(base)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"git://127.0.0.1:{port}/demo"
    daemon.terminate()
    daemon.wait()


def test_build_repo_from_a_git_server(docker_engine: None, sandbox: Runner, git_server: str,
                                      home: Path) -> None:
    tag = f"sandbox-test/built:{os.getpid()}"
    try:
        proc = sandbox("build-repo", git_server, "--branch", "main", "--dir", "app", "--tag", tag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{tag}\n".encode()
        assert proc.stderr  # build output streams to stderr
        out = sandbox("run", "--image", tag, "cat", "/built.txt", check=True).stdout
        assert out == b"built-from-git\n"
        failed = sandbox("build-repo", git_server, "--branch", "no-such-branch", "--tag", tag)
        assert failed.returncode == 6
        assert failed.stderr.decode().splitlines()[-1].startswith("sandbox: error: build of")
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


# --- errors --------------------------------------------------------------------------------

def test_unreachable_daemon_is_one_line(sandbox: Runner) -> None:
    proc = sandbox("ls", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 5
    assert proc.stderr.decode().count("\n") == 1 and b"Docker daemon" in proc.stderr


def test_missing_docker_binary(sandbox: Runner) -> None:
    proc = sandbox("ls", env={"SANDBOX_DOCKER": "/nonexistent/docker"})
    assert proc.returncode == 5 and b"docker CLI not found" in proc.stderr


def test_verbose_shows_docker_commands_with_secrets_masked(docker_engine: None,
                                                           sandbox: Runner) -> None:
    proc = sandbox("--verbose", "run", "--image", BUSYBOX_IMAGE, "-e", "TOKEN=hunter2", "--",
                   "sh", "-c", 'echo "$TOKEN"', check=True)
    assert proc.stdout == b"hunter2\n"
    err = proc.stderr.decode()
    assert "docker create --rm" in err and "docker start --attach" in err
    assert "hunter2" not in err


def test_usage_errors_are_one_line(sandbox: Runner) -> None:
    for args in (["start", "--bogus"], ["exec"], ["start", "--cpus", "many"]):
        proc = sandbox(*args)
        assert proc.returncode == 2, args
        assert proc.stderr.decode().count("\n") == 1, proc.stderr
        assert b"Traceback" not in proc.stderr


def test_doctor(docker_engine: None, sandbox: Runner) -> None:
    proc = sandbox("doctor", "--json", env={"SANDBOX_IMAGE": BUSYBOX_IMAGE})
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["ok"] is True
    assert [c["name"] for c in data["checks"]] == [
        "docker CLI", "docker daemon", "engine", "runtimes", "storage", "default image",
        "state folder", "disk cap"]
    bad = sandbox("doctor", env={"SANDBOX_IMAGE": "sandbox-test/absent:1"})
    assert bad.returncode == 1 and b"fix: " in bad.stdout


def test_module_entry_point_matches_console_script() -> None:
    assert CLI[:3] == [sys.executable, "-m", "sandbox_cli"]
