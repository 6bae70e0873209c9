"""Adversarial checks of the container itself: the locked-down defaults as Docker reports them and
as a process inside sees them, and an exec that is timed out or interrupted leaving nothing
running in the container (security model: "a timeout must end the process in the container")."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLI, Runner, docker_inspect


def sh(sandbox: Runner, name: str, script: str, **kwargs: object) -> str:
    """Run SCRIPT with sh inside sandbox NAME (must succeed); its stdout as text."""
    proc = sandbox("exec", name, "sh", "-c", script, check=True, **kwargs)
    return proc.stdout.decode()


def status_field(sandbox: Runner, name: str, field: str) -> str:
    """A line of /proc/self/status as a process inside the container sees it."""
    text = sh(sandbox, name, "cat /proc/self/status")
    match = re.search(rf"^{field}:\s*(\S+)", text, re.MULTILINE)
    assert match, f"{field} missing from /proc/self/status"
    return match.group(1)


# --- 1. defaults ---------------------------------------------------------------------------

def test_all_capabilities_dropped(box: str, sandbox: Runner) -> None:
    assert json.loads(docker_inspect(box, "{{json .HostConfig.CapDrop}}")) == ["ALL"]
    # The bounding set is what a setuid binary or a root exec could regain: it must be empty.
    assert int(status_field(sandbox, box, "CapBnd"), 16) == 0
    assert int(status_field(sandbox, box, "CapEff"), 16) == 0


def test_no_new_privileges(box: str, sandbox: Runner) -> None:
    opts = json.loads(docker_inspect(box, "{{json .HostConfig.SecurityOpt}}")) or []
    assert any(o.startswith("no-new-privileges") and not o.endswith("false") for o in opts)
    assert status_field(sandbox, box, "NoNewPrivs") == "1"


def test_code_runs_as_non_root_user(box: str, sandbox: Runner) -> None:
    # The idle main process (init and its sleep) is root without capabilities, so the code
    # can neither signal it nor open its descriptors; every exec runs as the sandbox user.
    assert docker_inspect(box, "{{.Config.User}}") == "0:0"
    assert sh(sandbox, box, "id -u").strip() != "0"
    assert status_field(sandbox, box, "Uid").split()[0] != "0"
    main = sh(sandbox, box, "grep -E '^(Uid|CapEff)' /proc/1/status")
    assert re.search(r"^Uid:\s+0\s", main, re.MULTILINE)
    assert re.search(r"^CapEff:\s+0+$", main, re.MULTILINE)


def test_resource_limits(box: str) -> None:
    assert int(docker_inspect(box, "{{.HostConfig.PidsLimit}}")) > 0
    memory = int(docker_inspect(box, "{{.HostConfig.Memory}}"))
    assert memory > 0
    # Equal memory and memory+swap: no swap on top of the memory limit.
    assert int(docker_inspect(box, "{{.HostConfig.MemorySwap}}")) == memory
    assert int(docker_inspect(box, "{{.HostConfig.NanoCpus}}")) > 0


def test_init_process(box: str, sandbox: Runner) -> None:
    assert docker_inspect(box, "{{.HostConfig.Init}}") == "true"
    # PID 1 is the init that reaps orphans, not the sleeping entrypoint.
    assert "init" in sh(sandbox, box, "tr '\\0' ' ' < /proc/1/cmdline")


def test_no_logs_and_no_health_checks(box: str) -> None:
    assert json.loads(docker_inspect(box, "{{json .HostConfig.LogConfig}}"))["Type"] == "none"
    assert json.loads(docker_inspect(box, "{{json .Config.Healthcheck}}"))["Test"] == ["NONE"]


def test_no_network(box: str, sandbox: Runner) -> None:
    assert docker_inspect(box, "{{.HostConfig.NetworkMode}}") == "none"
    assert sh(sandbox, box, "ls /sys/class/net").split() == ["lo"]


def test_published_ports_bind_loopback(start_box: Callable[..., str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("", 0))  # a free host port for the HOST:CONTAINER form
        free = probe.getsockname()[1]
    name = start_box("--network", "-p", "80", "-p", f"{free}:81/udp")
    bindings = json.loads(docker_inspect(name, "{{json .HostConfig.PortBindings}}"))
    assert set(bindings) == {"80/tcp", "81/udp"}
    ips = {b["HostIp"] for binds in bindings.values() for b in binds}
    assert ips == {"127.0.0.1"}
    live = json.loads(docker_inspect(name, "{{json .NetworkSettings.Ports}}"))
    assert {b["HostIp"] for binds in live.values() for b in binds or []} == {"127.0.0.1"}


def test_host_environment_does_not_leak(start_box: Callable[..., str], sandbox: Runner,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    leak_key = "SANDBOX_TEST_LEAK_" + uuid.uuid4().hex[:8].upper()
    leak_value = "host-only-" + uuid.uuid4().hex
    monkeypatch.setenv(leak_key, leak_value)  # in the environment of `sandbox start`
    name = start_box("-e", "GIVEN_KEY=given-value")
    inside = sh(sandbox, name, "env")
    # The main process is root, out of the code's reach: read its environment as root.
    inside += subprocess.run(["docker", "exec", "--user", "0:0", name, "sh", "-c",
                              "tr '\\0' '\\n' < /proc/1/environ"], capture_output=True,
                             text=True, check=True, timeout=60).stdout
    assert leak_value not in inside
    assert leak_key not in inside
    assert "GIVEN_KEY=given-value" in inside
    config_env = docker_inspect(name, "{{json .Config.Env}}")
    assert leak_value not in config_env and "GIVEN_KEY=given-value" in config_env
    # Nor through exec, whose docker client also runs with the host environment.
    assert leak_value not in sh(sandbox, name, "env", env={leak_key: leak_value})


def test_read_only_root_keeps_tmp_and_app_writable(start_box: Callable[..., str],
                                                   sandbox: Runner) -> None:
    name = start_box()  # the default
    assert docker_inspect(name, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    tmpfs = json.loads(docker_inspect(name, "{{json .HostConfig.Tmpfs}}")) or {}
    assert {"/tmp", "/var/tmp"} <= set(tmpfs)
    mounts = sh(sandbox, name, "cat /proc/mounts").splitlines()
    root_options = [line.split()[3] for line in mounts if line.split()[1] == "/"]
    assert root_options and root_options[-1].split(",")[0] == "ro", mounts
    tmp_mounts = [line.split() for line in mounts if line.split()[1] == "/tmp"]
    assert tmp_mounts and tmp_mounts[-1][2] == "tmpfs", mounts
    assert sh(sandbox, name, "echo x > /tmp/t && echo y > /app/a && cat /tmp/t /app/a") == "x\ny\n"


def test_app_writable_and_host_reads_and_deletes_everything(box: str, sandbox: Runner,
                                                            home: Path) -> None:
    folder = home / "volumes" / box
    # The container writes, then locks down what it wrote as tightly as it can.
    sh(sandbox, box, "mkdir -p a/b && echo written-inside > a/b/f && ln -s /etc/passwd a/l "
                     "&& mkfifo a/fifo && chmod 000 a/b/f a/b a")
    assert sandbox("read", box, "a/b/f", check=True).stdout == b"written-inside\n"
    assert sandbox("purge", box, check=True).returncode == 0
    assert not os.path.lexists(folder)


# --- 10. timeout and Ctrl-C end everything in the container --------------------------------

def processes(name: str) -> str:
    """`ps` inside NAME, zombies left out (init reaps them a moment later)."""
    out = subprocess.run(["docker", "exec", name, "ps", "-o", "pid,stat,args"],
                         capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if " Z " not in f" {line} ")


def wait_for(predicate: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# A background child, a child in its own session, and a double-forked child (its parent exits,
# it is reparented to init); each one's argv carries a unique number we look for afterwards.
SPAWN = ("sleep 3001 & "
         "setsid sleep 3002 & "
         "( sleep 3003 & ) ; "
         "( ( setsid sh -c 'sleep 3004 & sleep 3005' & ) & ) ; "
         "sleep 3000")
SPAWNED = [str(n) for n in range(3000, 3006)]


def test_timeout_kills_background_setsid_and_double_forked_children(box: str,
                                                                    sandbox: Runner) -> None:
    began = time.monotonic()
    proc = sandbox("exec", "--timeout", "2", box, "sh", "-c", SPAWN, timeout=60)
    elapsed = time.monotonic() - began
    assert proc.returncode == 124, proc.stderr
    assert b"timed out" in proc.stderr
    left = processes(box)
    assert not [n for n in SPAWNED if f"sleep {n}" in left], left
    assert elapsed < 30


def test_timeout_kills_child_that_scrubs_its_environment(box: str, sandbox: Runner) -> None:
    proc = sandbox("exec", "--timeout", "2", box, "sh", "-c",
                   "env -i setsid sh -c 'sleep 3101 & exit 0' </dev/null >/dev/null 2>&1; "
                   "sleep 3100", timeout=60)
    assert proc.returncode == 124
    assert "sleep 3101" not in processes(box)


def test_timeout_spares_a_concurrent_exec(box: str, sandbox: Runner, home: Path) -> None:
    other = subprocess.Popen([*CLI, "exec", box, "sleep", "3301"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: "sleep 3301" in processes(box)), "other exec never started"
        proc = sandbox("exec", "--timeout", "2", box, "sh", "-c", "sleep 3302 & sleep 3303",
                       timeout=60)
        assert proc.returncode == 124
        left = processes(box)
        assert "sleep 3302" not in left and "sleep 3303" not in left, left
        assert "sleep 3301" in left, "the timeout killed another exec's command"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def _reset_sigint() -> None:
    # A child started from a non-interactive shell may inherit SIGINT ignored; Python then
    # would not turn it into KeyboardInterrupt. A terminal's Ctrl-C always reaches it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("target", ["process-group", "sandbox-only"])
def test_ctrl_c_ends_the_command_in_the_container(box: str, home: Path, target: str) -> None:
    proc = subprocess.Popen([*CLI, "exec", box, "sh", "-c", "sleep 3201 & sleep 3200"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_reset_sigint)
    try:
        assert wait_for(lambda: "sleep 3200" in processes(box)), "command never started"
        if target == "process-group":  # what a terminal does on Ctrl-C
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    left = processes(box)
    assert "sleep 3200" not in left and "sleep 3201" not in left, left
