"""A command that cannot start: 127 not found, 126 not executable, for exec and run alike,
with our one line on stderr and nothing on stdout; typos and docker habits get a hint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, CLI, Runner


@pytest.mark.parametrize(("command", "code", "line"), [
    ("pyhton", 127, "sandbox: error: command not found in the sandbox: 'pyhton'"),
    ("/no/such/x", 127, "sandbox: error: command not found in the sandbox: '/no/such/x'"),
    ("/tmp", 126,
     "sandbox: error: command not executable in the sandbox: '/tmp' (permission denied)"),
])
def test_exec_and_run_agree(box: str, sandbox: Runner, command: str, code: int,
                            line: str) -> None:
    for args in (("exec", box, command), ("run", "--image", BUSYBOX_IMAGE, "--", command)):
        proc = sandbox(*args, timeout=60)
        assert (proc.returncode, proc.stdout, proc.stderr.decode()) == (code, b"", line + "\n")
        proc = sandbox(args[0], "--json", *args[1:], timeout=60)
        result = json.loads(proc.stdout)
        assert proc.returncode == code and result["exitCode"] == code
        assert result["stdout"] == "" and result["stderr"] == line + "\n"
        assert proc.stderr.decode() == line + "\n"


def test_output_that_only_looks_like_dockers_is_passed_on(box: str, sandbox: Runner) -> None:
    proc = sandbox("exec", box, "sh", "-c", "echo 'OCI runtime exec failed: fake'; echo more")
    assert proc.returncode == 0
    assert proc.stdout == b"OCI runtime exec failed: fake\nmore\n"


def test_endless_look_alike_output_streams_rather_than_piling_up(box: str,
                                                                 sandbox: Runner) -> None:
    # Held back until the exit code is known, such output would grow our memory without end:
    # past a bound it is passed on as it comes, and a reader sees it before the command ends.
    cmd = ("echo 'OCI runtime exec failed: fake'; head -c 200000 /dev/zero; "
           "sleep 30; exit 127")
    proc = subprocess.Popen([*CLI, "exec", box, "sh", "-c", cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(100_000)  # arrives long before the 30 s sleep ends
        assert first.startswith(b"OCI runtime exec failed: fake\n")
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.parametrize(("args", "expected"), [
    (("exec", "-it", "box", "sh"), "unknown option '-it': sandbox allocates a terminal by "
     "itself when stdin, stdout and stderr are terminals: drop -it"),
    (("exec", "box", "-it", "sh"), "unknown option '-it'"),
    (("exec", "-i", "box", "sh"), "unknown option '-i': sandbox forwards piped stdin"),
    (("exec", "box", "--timout", "5", "true"),
     "unknown option '--timout' (did you mean --timeout?); for the command, put `--` before it"),
    (("exec", "--timout", "5", "box", "true"),
     "unknown option '--timout' (did you mean --timeout?)"),
    (("run", "--cpu", "2", "--", "true"), "unknown option '--cpu' (did you mean --cpus?)"),
])
def test_docker_habits_and_typos_get_a_hint_before_any_docker_call(
        sandbox: Runner, fake_docker: tuple[Path, dict[str, str]], args: tuple[str, ...],
        expected: str) -> None:
    log, env = fake_docker
    proc = sandbox(*args, env=env)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith("sandbox: error: " + expected) and err.count("\n") == 1, err
    assert not log.exists()
