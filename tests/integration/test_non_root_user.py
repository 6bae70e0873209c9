"""`sandbox` run by a user who is not root, as on most laptops and many CI runners.

The code in the sandbox must not run as that user's own uid (it would spend the user's per-uid
kernel quotas: inotify instances, processes, pipe buffers), yet everything it leaves must stay
readable and removable by that user, whatever the code does to its own files.

As root (CI), each test runs the CLI as a dedicated non-root user in the docker group, from the
source tree and the installed dependencies; run by a non-root user, it runs the CLI as is.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

import sandbox_cli
from tests.conftest import BUSYBOX_IMAGE, PYTHON_IMAGE

TEST_USER = "sandbox-test-user"


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", "--groups", "docker",
                        TEST_USER], check=True, capture_output=True, timeout=30)
        return pwd.getpwnam(TEST_USER)


class User:
    """Runs commands as the test user, with a private home and SANDBOX_HOME of its own."""

    def __init__(self, home: Path, uid: int, gid: int) -> None:
        self.home, self.uid, self.gid = home, uid, gid
        self.sandbox_home = home / "sandbox-home"
        # Where this run imports sandbox_cli and its dependencies from (a checkout under /root,
        # as CI's may be, is out of the user's reach; site-packages of a venv in /tmp is not).
        package = str(Path(sandbox_cli.__file__).resolve().parents[1])
        site = str(Path(typer.__file__).resolve().parents[1])
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                    "SANDBOX_HOME": str(self.sandbox_home), "NO_COLOR": "1",
                    "XDG_CONFIG_HOME": str(home / "config"),
                    "PYTHONPATH": f"{package}{os.pathsep}{site}",
                    "PYTHONDONTWRITEBYTECODE": "1"}

    def run(self, *argv: str, input: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        prefix: list[str] = []
        if os.getuid() == 0:
            prefix = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        return subprocess.run([*prefix, *argv], input=input, capture_output=True, env=self.env,
                              cwd=self.home, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def sandbox(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        python = "/usr/bin/python3" if os.getuid() == 0 else sys.executable
        return self.run(python, "-m", "sandbox_cli", *args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def user(docker_engine: None) -> Iterator[User]:
    if os.getuid() == 0:
        entry = _ensure_user()
        uid, gid = entry.pw_uid, entry.pw_gid
        if shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists():
            pytest.fail("running as root, these tests need setpriv and /usr/bin/python3")
    else:
        uid, gid = os.getuid(), os.getgid()
    home = Path(tempfile.mkdtemp(prefix="sandbox-user-"))
    os.chown(home, uid, gid)
    home.chmod(0o700)
    person = User(home, uid, gid)
    yield person
    person.sandbox("purge", "--all", timeout=120)
    shutil.rmtree(home, ignore_errors=True)


def _start(user: User, image: str = BUSYBOX_IMAGE) -> str:
    name = "u-" + uuid.uuid4().hex[:10]
    proc = user.sandbox("start", "--name", name, "--image", image, "--disk", "unlimited")
    assert proc.returncode == 0, proc.stderr
    return name


def test_code_runs_as_a_uid_that_is_not_the_users(user: User) -> None:
    name = _start(user)
    proc = user.sandbox("exec", name, "id", "-u")
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) not in (user.uid, 0)


def test_code_cannot_exhaust_the_users_inotify_instances(user: User) -> None:
    name = _start(user, PYTHON_IMAGE)
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    hog = subprocess.Popen(
        [*(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups"]
           if os.getuid() == 0 else []),
         "/usr/bin/python3" if os.getuid() == 0 else sys.executable, "-m", "sandbox_cli",
         "exec", name, "python3", "-c",
         "import ctypes, sys, time\n"
         "libc = ctypes.CDLL(None)\n"
         f"fds = [libc.inotify_init1(0) for _ in range({limit + 8})]\n"
         "print(sum(fd >= 0 for fd in fds), flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=user.env, cwd=user.home)
    try:
        assert hog.stdout is not None
        held = int(hog.stdout.readline() or b"0")
        assert held > 0  # the code took every instance its uid may have
        mine = user.run(sys.executable if os.getuid() != 0 else "/usr/bin/python3", "-c",
                        "import ctypes; print(ctypes.CDLL(None).inotify_init1(0))")
        assert int(mine.stdout) >= 0, "the sandbox spent the user's own inotify instances"
    finally:
        hog.kill()
        hog.wait(timeout=30)


def test_user_reads_writes_and_removes_what_the_code_made(user: User) -> None:
    name = _start(user)
    made = user.sandbox("exec", name, "sh", "-c",
                        "umask 077; mkdir -p out/deep && echo result > out/deep/r.txt")
    assert made.returncode == 0, made.stderr
    assert user.sandbox("read", name, "out/deep/r.txt").stdout == b"result\n"
    wrote = user.sandbox("write", name, "out/deep/note.txt", "from the host")
    assert wrote.returncode == 0, wrote.stderr
    # ...and the code may change what the host wrote.
    edit = user.sandbox("exec", name, "sh", "-c", "echo changed >> out/deep/note.txt")
    assert edit.returncode == 0, edit.stderr
    assert user.sandbox("read", name, "out/deep/note.txt").stdout == b"from the hostchanged\n"


def test_purge_removes_a_tree_the_code_locked_down(user: User) -> None:
    name = _start(user)
    locked = user.sandbox("exec", name, "sh", "-c",
                          "mkdir -p a/b/c && echo x > a/b/c/f && echo y > a/g && "
                          "chmod 000 a/b/c/f a/b/c && chmod 500 a/b && chmod 000 a")
    assert locked.returncode == 0, locked.stderr
    refused = user.sandbox("read", name, "a/g")
    assert refused.returncode == 4 and b"Traceback" not in refused.stderr, refused.stderr
    began = time.monotonic()
    proc = user.sandbox("purge", name)
    assert proc.returncode == 0, proc.stderr
    assert not (user.sandbox_home / "volumes" / name).exists()
    assert time.monotonic() - began < 60
