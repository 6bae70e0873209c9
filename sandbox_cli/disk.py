"""A size cap for a sandbox's folder: a sparse ext4 image of its own, loop-mounted on the folder.

Docker cannot cap a bind mount, and a container can otherwise fill the host's disk and inodes
through /app. So the folder is made a small file system: mkfs bounds both its bytes and its
inodes, and the data stays on disk (nothing is held in memory). The image is sparse, so an unused
cap costs a few hundred KB. Mounting needs root and loop devices; elsewhere `supported()` names
what is missing and the folder stays uncapped (start and doctor say so).

Unmounting checks that what is mounted on the folder is our own image before touching it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess

from .errors import SandboxError

BYTES_PER_INODE = 16384  # ext4's default ratio: a 1 GiB cap holds at most 65,536 entries
_TOOL_TIMEOUT = 30  # seconds; mkfs of a sparse image and a loop mount take a few ms


class DiskError(SandboxError):
    """The size-capped folder could not be made or released."""


def supported() -> str | None:
    """None when capped folders can be made here; else the reason they cannot."""
    if os.getuid() != 0:
        return "mounting a size-capped folder needs root"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices on this host"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if _tool(tool) is None:
            return f"{tool} is not installed (e2fsprogs, mount)"
    return None


def _tool(name: str) -> str | None:
    import shutil  # here: only a capped start looks for the tools

    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _run(argv: list[str]) -> None:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=_TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskError(f"{os.path.basename(argv[0])} failed: {exc}") from None
    if proc.returncode != 0:
        detail = next((ln for ln in proc.stderr.splitlines() if ln.strip()), "no output")
        raise DiskError(f"{os.path.basename(argv[0])} failed: {detail}")


def image_path(disks_dir: str, name: str) -> str:
    """Where sandbox NAME's image lives (NAME is a validated sandbox name)."""
    return os.path.join(disks_dir, f"{name}.img")


def attach(disks_dir: str, folder: str, name: str, size: int, owner: tuple[int, int]) -> str:
    """Make a SIZE-byte image for NAME and mount it on FOLDER (an empty directory), its root
    owned by OWNER. Returns the image's path. On failure nothing is left mounted or on disk."""
    os.makedirs(disks_dir, mode=0o700, exist_ok=True)
    image = image_path(disks_dir, name)
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    try:
        inodes = max(1024, size // BYTES_PER_INODE)
        _run([_tool("mkfs.ext4") or "mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0",
              "-N", str(inodes), "-E",
              f"lazy_itable_init=1,nodiscard,root_owner={owner[0]}:{owner[1]}", image])
        _run([_tool("mount") or "mount", "-o", "loop,nosuid,nodev", image, folder])
    except BaseException:
        os.unlink(image)
        raise
    with contextlib.suppress(OSError):  # harmless if it stays: an empty folder
        os.rmdir(os.path.join(folder, "lost+found"))
    return image


def _mounted_image(folder: str) -> str | None:
    """The backing file of the loop device mounted exactly on FOLDER, or None. The kernel
    records a mount point by its real path (links resolved, bytes escaped as octal), so
    FOLDER is compared the same way: a home reached through a link is still recognised."""
    try:
        with open("/proc/self/mountinfo", "rb") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    real = os.fsencode(os.path.realpath(folder))
    for line in reversed(lines):  # the last mount on a path is the one in force
        fields = line.split()
        if len(fields) < 10 or _unescape(fields[4]) != real:
            continue
        dash = fields.index(b"-") if b"-" in fields else -1
        source = os.fsdecode(fields[dash + 2]) if 0 < dash < len(fields) - 2 else ""
        if not source.startswith("/dev/loop"):
            return None
        try:
            with open(f"/sys/block/{os.path.basename(source)}/loop/backing_file",
                      encoding="utf-8", errors="surrogateescape") as backing:
                return backing.read().rstrip("\n")
        except OSError:
            return None
    return None


def _unescape(field: bytes) -> bytes:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040); other bytes,
    UTF-8 included, are as they are."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8) & 0xFF]), field)


def mounted(disks_dir: str, folder: str, name: str) -> bool:
    """True when NAME's own image is what is mounted on FOLDER."""
    return _mounted_image(folder) == os.path.realpath(image_path(disks_dir, name))


def detach(disks_dir: str, folder: str, name: str) -> None:
    """Unmount NAME's image from FOLDER (only when it is that image) and delete the image."""
    image = image_path(disks_dir, name)
    if _mounted_image(folder) == os.path.realpath(image):
        real = os.path.realpath(folder)  # the path the kernel knows the mount by
        try:
            _run([_tool("umount") or "umount", real])
        except DiskError:
            _run([_tool("umount") or "umount", "--lazy", real])  # busy: detach now, free later
    with contextlib.suppress(FileNotFoundError):
        os.unlink(image)
