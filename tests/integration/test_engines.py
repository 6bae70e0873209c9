"""The engine-specific part of the suite (issue 10): what must hold on every engine, local
Docker, a remote Docker that cannot see the client's files, gVisor and Podman, in both
workspaces (a bind-mounted host folder, an engine volume through tar streams).

Run on the main engine by the plain test command, and on the others by
tests/integration/test_engine_matrix.py (`-m engines` through scripts/setup-engines.sh run).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, CLI, DOCKER, PYTHON_IMAGE, Runner

pytestmark = pytest.mark.engines

ENGINE = os.environ.get("SANDBOX_TEST_ENGINE", "main")
NETNS = os.environ.get("SANDBOX_TEST_NETNS", "")
# auto picks a host folder where the engine sees this host's files, else an engine volume.
AUTO_STORAGE = "volume" if ENGINE == "remote" else "bind"
STORAGES = ["volume"] if ENGINE == "remote" else ["bind", "volume"]


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ebox(docker_engine: None, sandbox: Runner, storage: str):
    """A busybox sandbox in STORAGE, purged afterwards."""
    started: list[str] = []

    def start(*extra: str, image: str = BUSYBOX_IMAGE) -> str:
        out = sandbox("start", "--storage", storage, "--image", image, *extra, check=True)
        name = out.stdout.decode().strip()
        started.append(name)
        return name

    yield start
    if started:
        sandbox("purge", *started)


def _ls(sandbox: Runner) -> dict[str, dict]:
    rows = json.loads(sandbox("ls", "--json", check=True).stdout)
    return {row["name"]: row for row in rows}


def test_auto_storage_is_recorded_and_listed(docker_engine: None, sandbox: Runner) -> None:
    name = sandbox("start", "--image", BUSYBOX_IMAGE, check=True).stdout.decode().strip()
    try:
        row = _ls(sandbox)[name]
        assert row["storage"] == AUTO_STORAGE
        assert row["volume"].startswith("volume:") == (AUTO_STORAGE == "volume")
        # The recorded engine beats the environment: a wrong DOCKER_HOST now changes nothing.
        env = {"DOCKER_HOST": "unix:///nonexistent.sock", "SANDBOX_DOCKER": "docker-nowhere"}
        assert sandbox("exec", name, "true", env=env).returncode == 0
    finally:
        sandbox("purge", name)
    assert name not in _ls(sandbox)


def test_exec_stdin_exit_codes_and_timeout(ebox, sandbox: Runner) -> None:
    name = ebox()
    assert sandbox("exec", name, "cat", input=b"in\n").stdout == b"in\n"
    assert sandbox("exec", name, "sh", "-c", "exit 7").returncode == 7
    assert sandbox("exec", name, "no-such-command").returncode == 127
    # An orphan that scrubbed its environment and left the session still ends: the cut-off
    # is measured on the container's own clock (gVisor's counts from its own boot), and the
    # host-side kill is used only where the engine is local.
    began = time.monotonic()
    proc = sandbox("exec", "--timeout", "2", name, "sh", "-c",
                   "env -i setsid sleep 313 & sleep 60", timeout=60)
    assert proc.returncode == 124, proc.stderr
    assert time.monotonic() - began < 30
    left = sandbox("exec", name, "ps", "-o", "args", check=True).stdout.decode()
    assert "sleep 313" not in left and "sleep 60" not in left
    assert sandbox("exec", name, "true").returncode == 0  # the sandbox itself lives on


def test_api_exec_stream_timeout_ends_the_orphan_and_spares_the_sandbox(
        ebox, sandbox: Runner) -> None:
    """The API's streamed exec ends on timeout as the CLI's exec does: the same kill, with
    the host-side one only where the engine allows it (under gVisor, signalling runsc's
    host threads would end the sandbox itself)."""
    from sandbox_cli import Sandbox

    name = ebox()
    command = ["sh", "-c", "echo go; env -i setsid sleep 314 & sleep 61"]
    with Sandbox.attach(name).exec_stream(command, timeout=2) as stream:
        assert b"".join(chunk for _, chunk in stream) == b"go\n"
        assert (stream.result.exit_code, stream.result.timed_out) == (124, True)
    left = sandbox("exec", name, "ps", "-o", "args", check=True).stdout.decode()
    assert "sleep 314" not in left and "sleep 61" not in left
    assert sandbox("exec", name, "true").returncode == 0  # the sandbox itself lives on


def test_write_read_binary_one_megabyte(ebox, sandbox: Runner) -> None:
    name = ebox()
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    assert sandbox("write", name, "deep/dir/blob.bin", input=data).returncode == 0
    assert sandbox("read", name, "deep/dir/blob.bin").stdout == data
    assert sandbox("exec", name, "sh", "-c", "cat /app/deep/dir/blob.bin | wc -c",
                   check=True).stdout.strip() == b"1048576"
    # What the code writes, as the sandbox user, in folders we made.
    sandbox("exec", name, "sh", "-c", "echo made > /app/deep/dir/by-code", check=True)
    assert sandbox("read", name, "deep/dir/by-code").stdout == b"made\n"
    assert sandbox("read", name, "--max-size", "1k", "deep/dir/blob.bin").returncode == 4


def test_copy_to_keeps_structure(ebox, sandbox: Runner, tmp_path: Path) -> None:
    name = ebox()
    src = tmp_path / "work"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("a = 1\n")
    (src / "pkg" / "sub" / "b.py").write_text("b = 2\n")
    (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (src / "run.sh").chmod(0o755)
    proc = sandbox("copy-to", name, "**", "dst/", "--json", check=True)
    assert json.loads(proc.stdout)["files"] == 3
    found = sandbox("exec", name, "find", "/app/dst", "-type", "f", check=True).stdout.decode()
    assert sorted(found.split()) == ["/app/dst/pkg/a.py", "/app/dst/pkg/sub/b.py",
                                     "/app/dst/run.sh"]
    assert sandbox("exec", name, "/app/dst/run.sh", check=True).stdout == b"ran\n"
    assert sandbox("read", name, "dst/pkg/sub/b.py").stdout == b"b = 2\n"


def _get(port: str) -> bytes:
    """GET / on 127.0.0.1:PORT where the engine binds it (its own netns, for the engines of
    setup-engines.sh: what `ssh -L` is for a real remote engine)."""
    host_port = port.rsplit(":", 1)[1].split("-")[0]
    code = ("import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{host_port}/', timeout=5).read())")
    argv = ["python3", "-c", code]
    if NETNS:
        argv = ["nsenter", f"--net={NETNS}", *argv]
    return subprocess.run(argv, capture_output=True, timeout=30).stdout


def test_ports_then_disconnect(ebox, sandbox: Runner) -> None:
    name = ebox("--network", "-p", "127.0.0.1::8000")
    sandbox("write", name, "index.html", "hello\n", check=True)
    subprocess.Popen([*sandbox_cli(), "exec", name, "httpd", "-f", "-p", "8000", "-h", "/app"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, env=os.environ.copy())
    port = _ls(sandbox)[name]["ports"][0]
    body = b""
    for _ in range(50):
        body = _get(port)
        if body:
            break
        time.sleep(0.2)
    assert body == b"hello\n"
    assert sandbox("disconnect", name, check=True).returncode == 0
    assert _get(port) == b""


def sandbox_cli() -> list[str]:
    from tests.conftest import CLI

    return CLI


def test_purge_removes_container_and_volume(docker_engine: None, sandbox: Runner,
                                            storage: str) -> None:
    name = sandbox("start", "--storage", storage, "--image", BUSYBOX_IMAGE,
                   check=True).stdout.decode().strip()
    volume = _ls(sandbox)[name]["volume"]
    assert sandbox("purge", name, check=True).returncode == 0
    assert subprocess.run([DOCKER, "inspect", "--type", "container", name],
                          capture_output=True).returncode != 0
    if volume.startswith("volume:"):
        assert subprocess.run([DOCKER, "volume", "inspect", volume[7:]],
                              capture_output=True).returncode != 0
    else:
        assert not os.path.exists(volume)


def test_run_one_shot_with_copy(docker_engine: None, sandbox: Runner, storage: str,
                                tmp_path: Path, home: Path) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "main.py").write_text("print(open('/app/main.py').read().count('print'))\n")
    proc = sandbox("run", "--storage", storage, "--image", PYTHON_IMAGE, "--copy", "main.py",
                   "--", "python3", "/app/main.py", input=b"")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"2\n"
    assert _ls(sandbox) == {}


def test_doctor_reports_the_engine(docker_engine: None, sandbox: Runner) -> None:
    proc = sandbox("doctor", "--json", env={"SANDBOX_IMAGE": BUSYBOX_IMAGE})
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert proc.returncode == 0, checks
    assert ("Podman" if ENGINE == "podman" else "Docker") in checks["engine"]["detail"]
    assert checks["storage"]["detail"].startswith(f"auto picks {AUTO_STORAGE}")
    if ENGINE == "gvisor":
        assert "runsc usable" in checks["runtimes"]["detail"]


# --- the hostile container, in the workspace -----------------------------------------------

def test_read_refuses_links_fifos_devices_and_folders(ebox, sandbox: Runner,
                                                      storage: str) -> None:
    name = ebox()
    sandbox("exec", name, "sh", "-c", "ln -s /etc/passwd /app/link; ln -s /etc/passwd "
            "/app/passwd; mkdir /app/dir; ln -s /dev/zero /app/zero", check=True)
    paths = ["link", "passwd", "dir", "zero"]
    if ENGINE == "podman" and storage == "volume":
        # Podman's cp follows a final link; one named as its target's basename is not told
        # from a file (README, "Podman"): what comes is the container's own file.
        paths.remove("passwd")
    for path in paths:
        proc = sandbox("read", name, path)
        assert proc.returncode == 4, (path, proc.stderr)
        assert proc.stdout == b""
    fifo = sandbox("exec", name, "mkfifo", "/app/fifo")
    if fifo.returncode != 0:  # gVisor: mkfifo in a bind mount fails (README, "gVisor")
        assert ENGINE == "gvisor" and storage == "bind"
    else:
        proc = sandbox("read", name, "fifo", timeout=30)  # Podman's cp: "no such file"
        assert proc.returncode == 4 and proc.stdout == b""


def test_write_and_copy_to_never_go_through_a_planted_link(ebox, sandbox: Runner,
                                                           tmp_path: Path) -> None:
    name = ebox()
    sandbox("exec", name, "sh", "-c", "ln -s /tmp /app/d; ln -s /tmp/target /app/f",
            check=True)
    for proc in (sandbox("write", name, "d/x", "no"), sandbox("write", name, "f", "no")):
        assert proc.returncode in (0, 4), proc.stderr  # refused, or a real file put there
    work = tmp_path / "work"
    (work / "y").write_text("no")
    assert sandbox("copy-to", name, "y", "d/").returncode in (0, 4)
    left = sandbox("exec", name, "sh", "-c", "ls /tmp; cat /tmp/target 2>/dev/null; true",
                   check=True).stdout
    assert b"x" not in left.split() and b"y" not in left.split() and b"no" not in left
    for path in ("../x", "/etc/x", "a/../../x"):
        assert sandbox("write", name, path, "no").returncode == 2
        assert sandbox("read", name, path).returncode == 2


def test_large_files_through_files_not_pipes(ebox, sandbox: Runner, tmp_path: Path) -> None:
    """`write` from a regular file (read from where stdin stands), `copy-to` of a file
    larger than what goes with the headers, and `read` into a regular file and into a pipe
    whose reader stops early: the paths that hand bytes to the kernel (sendfile, splice)."""
    name = ebox()
    data = os.urandom(3 << 20) + b"tail"
    src = tmp_path / "big.bin"
    src.write_bytes(b"skipped" + data)
    with open(src, "rb") as stdin:
        stdin.seek(len(b"skipped"))
        proc = subprocess.run([*CLI, "write", name, "w/big.bin"], stdin=stdin,
                              capture_output=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    work = tmp_path / "work"
    (work / "tree").mkdir(parents=True, exist_ok=True)
    (work / "tree" / "big.bin").write_bytes(data)
    (work / "tree" / "small.txt").write_text("small\n")
    sandbox("copy-to", name, "tree/**", "c", check=True)
    for path in ("w/big.bin", "c/tree/big.bin"):
        out = tmp_path / "out.bin"
        with open(out, "wb") as stdout:
            proc = subprocess.run([*CLI, "read", name, path], stdout=stdout,
                                  stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == data, path
    assert sandbox("read", name, "c/tree/small.txt").stdout == b"small\n"
    reader = subprocess.run(["sh", "-c", f"{' '.join(CLI)} read {name} w/big.bin | head -c 10"],
                            capture_output=True, cwd=tmp_path, timeout=120)
    assert reader.stdout == data[:10]
    assert b"Traceback" not in reader.stderr


def test_egress_where_the_engine_sees_our_files(docker_engine: None, sandbox: Runner) -> None:
    """--allow-host on each engine: where the engine sees this machine's files (the local
    Docker, Podman), the sandbox reaches its proxy (which refuses what is not listed) and
    purge ends both at once; elsewhere (a remote engine; gVisor, whose sockets cannot be
    handed over) one line, exit 2, and nothing made."""
    proc = sandbox("start", "--image", PYTHON_IMAGE, "--allow-host", "allowed.test:8000")
    name = proc.stdout.decode().strip()
    try:
        if ENGINE in ("remote", "gvisor"):
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.count(b"\n") == 1 and b"--allow-host" in proc.stderr
            assert _ls(sandbox) == {}
            return
        assert proc.returncode == 0, proc.stderr
        code = ("import urllib.request as u\ntry: u.urlopen('http://denied.test/', timeout=20)"
                "\nexcept Exception as e: print(e)")
        out = sandbox("exec", name, "python3", "-c", code, check=True).stdout.decode()
        assert "403" in out, out
        assert _ls(sandbox)[name]["allow_hosts"] == ["allowed.test:8000"]
        assert "refused\tdenied.test:80" in sandbox("egress", name, check=True).stdout.decode()
    finally:
        began = time.monotonic()
        sandbox("purge", "--all", check=True)
        assert time.monotonic() - began < 8  # the proxy is killed, not asked to stop
    left = subprocess.run([DOCKER, "ps", "-aq", "--filter", "label=sandbox-cli.egress=1",
                           "--filter", f"label=sandbox-cli.name={name}"],
                          capture_output=True, text=True, timeout=60)
    assert left.returncode == 0 and left.stdout.strip() == ""

