"""Attacks found in review, kept as regression tests against the real engine."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.conftest import BUSYBOX_IMAGE, CLI, Runner


def _containers_running(word: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "--format", "{{.Names}} {{.Command}}"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if word in line]


def test_env_values_never_steer_the_docker_client(start_box, sandbox: Runner,
                                                  home: Path) -> None:
    # A planted "docker" and hostile client settings passed as container variables.
    trap = home.parent / "trap"
    trap.mkdir()
    (trap / "docker").write_text(f"#!/bin/sh\ntouch {trap}/ran\nexit 0\n")
    (trap / "docker").chmod(0o755)
    hostile = ["-e", f"PATH={trap}", "-e", "DOCKER_HOST=unix:///nonexistent.sock",
               "-e", f"HOME={trap}"]
    name = start_box(*hostile[2:])  # the container's own PATH must still find `sleep`
    proc = sandbox("exec", *hostile, name, "/bin/sh", "-c", 'echo "$PATH $DOCKER_HOST"',
                   check=True)
    assert proc.stdout.decode() == f"{trap} unix:///nonexistent.sock\n"
    run = sandbox("run", "--image", BUSYBOX_IMAGE, *hostile, "--", "/bin/sh", "-c",
                  'echo "$HOME"', check=True)
    assert run.stdout.decode() == f"{trap}\n"
    assert not (trap / "ran").exists()


def test_run_into_a_closed_pipe_leaves_no_container(docker_engine: None, home: Path) -> None:
    marker = f"yes run-pipe-{time.monotonic_ns()}"
    pipeline = f"{' '.join(CLI)} run --image {BUSYBOX_IMAGE} -- {marker} | head -1"
    out = subprocess.run(["sh", "-c", pipeline], capture_output=True, timeout=60)
    assert out.stdout.startswith(b"run-pipe-")
    deadline = time.monotonic() + 10
    while _containers_running(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _containers_running(marker) == []
    assert list((home / "volumes").iterdir()) == []


def test_exec_into_a_closed_pipe_stops_the_command(box: str, sandbox: Runner) -> None:
    """As `docker exec ... | head -1`: the command dies of SIGPIPE, exit 141, and nothing of
    ours on stderr (the relay once closed the pipe's fd twice: `error: Bad file
    descriptor`, exit 1, and a close of whatever file had got that number meanwhile)."""
    pipeline = (f"{' '.join(CLI)} exec {box} yes exec-pipe | head -1; "
                'echo "status=${PIPESTATUS[0]}" >&2')
    out = subprocess.run(["bash", "-c", pipeline], capture_output=True, timeout=60)
    assert out.stdout == b"exec-pipe\n"
    assert out.stderr == b"status=141\n", out.stderr
    ps = sandbox("exec", box, "ps", check=True).stdout.decode()
    assert "exec-pipe" not in ps


def test_timeout_kills_a_command_that_clears_its_environment(box: str, sandbox: Runner) -> None:
    proc = sandbox("exec", "--timeout", "2", box, "env", "-i", "sleep", "3401", timeout=60)
    assert proc.returncode == 124 and b"was stopped" in proc.stderr
    assert "sleep 3401" not in sandbox("exec", box, "ps", check=True).stdout.decode()


def test_a_dead_sandbox_is_exit_3(box: str, sandbox: Runner) -> None:
    subprocess.run(["docker", "rm", "-f", box], capture_output=True, check=True)
    proc = sandbox("exec", box, "true")
    assert proc.returncode == 3
    assert proc.stderr.decode().splitlines()[-1].startswith("sandbox: error: sandbox")


def test_hostile_image_references_are_refused(docker_engine: None, sandbox: Runner) -> None:
    for ref in ("-v/etc", "-p8080/tcp", "--privileged/x"):
        proc = sandbox("start", "--image", ref)
        assert proc.returncode == 2, (ref, proc.stderr)


def test_copy_to_keeps_the_executable_bit(box: str, sandbox: Runner, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o4777)  # setuid and world-writable bits are not carried over
    sandbox("copy-to", box, "run.sh", cwd=tmp_path, check=True)
    assert sandbox("exec", box, "./run.sh", check=True).stdout == b"ran\n"
    mode = sandbox("exec", box, "stat", "-c", "%a", "run.sh", check=True).stdout
    assert mode == b"775\n"  # the group's bits are the owner's: the sandbox user's, too


def test_exec_never_enters_a_foreign_container_of_the_same_name(box: str,
                                                                sandbox: Runner) -> None:
    subprocess.run(["docker", "rm", "-f", box], capture_output=True, check=True)
    subprocess.run(["docker", "run", "-d", "--name", box, BUSYBOX_IMAGE, "sleep", "60"],
                   capture_output=True, check=True)
    try:
        proc = sandbox("exec", box, "touch", "/entered")
        assert proc.returncode == 3, proc.stderr
        entered = subprocess.run(["docker", "exec", box, "ls", "/entered"], capture_output=True)
        assert entered.returncode != 0, "sandbox exec ran inside a container it did not start"
    finally:
        subprocess.run(["docker", "rm", "-f", box], capture_output=True)


def test_hangup_cleans_up_like_ctrl_c(box: str, sandbox: Runner, tmp_path: Path) -> None:
    import os
    import signal

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    proc = subprocess.Popen([*CLI, "exec", "-e", "SECRET=x", box, "sleep", "3501"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.monotonic() + 20
    while b"sleep 3501" not in sandbox("exec", box, "ps", check=True).stdout:
        assert time.monotonic() < deadline, "command never started"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGHUP)  # what a closed terminal sends
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 129 and b"hung up" in err
    assert b"sleep 3501" not in sandbox("exec", box, "ps", check=True).stdout
    assert list(private_tmp.iterdir()) == []  # the env file holding SECRET is gone


def test_run_into_true_keeps_a_pipe_exit_code(docker_engine: None, home: Path) -> None:
    pipeline = (f"{' '.join(CLI)} run --image {BUSYBOX_IMAGE} -- sh -c 'sleep 1; echo hi; "
                "exit 4' | true; echo $?")
    out = subprocess.run(["bash", "-c", pipeline.replace("| true; echo $?",
                                                         "| true; echo ${PIPESTATUS[0]}")],
                         capture_output=True, timeout=60)
    assert out.stdout.strip() in (b"4", b"141"), out
    assert b"docker rm failed" not in out.stderr
    assert list((home / "volumes").iterdir()) == []


def test_bad_env_values_are_refused(box: str, sandbox: Runner) -> None:
    for value in ("E=" + "x" * 70000, "E=a\nb"):
        proc = sandbox("exec", "-e", value, box, "true")
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
    proc = subprocess.run([*CLI, "exec", "-e", b"E=\xff", box, "true"], capture_output=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and b"not UTF-8" in proc.stderr
