"""Per-user kernel limits must not be shared between sandboxes: the code of every sandbox runs
as uid 65534, so one sandbox that takes all of that uid's inotify instances (128 by default)
breaks file watching in every other sandbox on the host (of any home, any user) and in the
host's own `nobody` daemons: the cross-sandbox form of issue 9's inotify attack."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import PYTHON_IMAGE, Runner

HOG = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None)
fds = []
while len(fds) < 4096:
    fd = libc.inotify_init()
    if fd < 0:
        break
    fds.append(fd)
print(len(fds), flush=True)
os.close(1)
time.sleep(60)
"""

PROBE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
print("ok" if fd >= 0 else os.strerror(ctypes.get_errno()))
"""


def test_one_sandbox_cannot_take_another_sandboxs_inotify(
        start_box: Callable[..., str], sandbox: Runner) -> None:
    hog = start_box(image=PYTHON_IMAGE)
    victim = start_box(image=PYTHON_IMAGE)
    held = sandbox("exec", hog, "sh", "-c",
                   f"python3 -c '{HOG}' > /tmp/count 2>/dev/null & "
                   "while [ ! -s /tmp/count ]; do sleep 0.1; done; cat /tmp/count",
                   timeout=60)
    assert held.returncode == 0, held.stderr
    probe = sandbox("exec", victim, "python3", "-c", PROBE, timeout=60)
    assert probe.stdout.strip() == b"ok", (
        f"after {held.stdout.strip().decode()} inotify instances in {hog}, "
        f"{victim} gets: {probe.stdout.strip().decode()}")
