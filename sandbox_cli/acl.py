"""POSIX ACLs on a sandbox's folder, so that two users share it: you and the sandbox's own user.

When you are not root, the code in the sandbox runs as a uid that is not yours (its own), so that
it cannot spend your per-user kernel quotas (inotify instances and watches, processes, pipe
buffers, message queues). The folder then carries an access ACL letting that uid in, and a
default ACL that every file and folder made in it inherits: you and the sandbox user both get
read and write, whoever made the entry, whatever its umask. The code can still tighten its own
files (it owns them); `purge` has a way round that (sandbox.py), and `read`/`write` refuse.

The xattr format is the kernel's (include/uapi/linux/posix_acl_xattr.h); no library needed.
"""

from __future__ import annotations

import os
import struct

_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF
RWX = 7
ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"


def _blob(named_users: dict[int, int], owner: int, group: int, other: int) -> bytes:
    """An ACL xattr value: owner/group/other perms plus NAMED_USERS {uid: perms}, with a mask
    that lets the named users' perms through. Entries sorted by tag, then id, as required."""
    entries = [(_USER_OBJ, owner, _UNDEFINED)]
    entries += [(_USER, perms, uid) for uid, perms in sorted(named_users.items())]
    entries += [(_GROUP_OBJ, group, _UNDEFINED), (_MASK, RWX, _UNDEFINED),
                (_OTHER, other, _UNDEFINED)]
    return struct.pack("<I", _VERSION) + b"".join(
        struct.pack("<HHI", tag, perms, uid) for tag, perms, uid in entries)


def share(dir_fd: int, users: list[int]) -> None:
    """Give USERS full access to the directory DIR_FD and to everything later made in it (an
    access and a default ACL; group and other get nothing). Raises OSError (e.g. EOPNOTSUPP)
    when the file system has no ACLs."""
    path = f"/proc/self/fd/{dir_fd}"  # the directory we hold, never a path the code can swap
    named = {uid: RWX for uid in users}
    os.setxattr(path, ACCESS, _blob(named, RWX, 0, 0))
    os.setxattr(path, DEFAULT, _blob(named, RWX, 0, 0))


def supported(dir_fd: int) -> bool:
    """True when the file system of DIR_FD keeps POSIX ACLs."""
    try:
        os.getxattr(f"/proc/self/fd/{dir_fd}", ACCESS)
    except OSError as exc:
        import errno

        return exc.errno == errno.ENODATA  # no ACL yet, but ACLs are supported
    return True
