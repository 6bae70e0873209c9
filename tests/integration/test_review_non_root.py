"""Run by a user who is not root, `purge` must remove whatever the code left, however the code
arranged its own files: a sticky folder (mode 1777) owned by the sandbox's user keeps anyone
but that user from removing what is in it, and `chmod a+rwX` leaves the sticky bit on."""

from __future__ import annotations

from tests.integration.test_non_root_user import User, _start, user  # noqa: F401


def test_purge_removes_what_the_code_put_in_a_sticky_folder(user: User) -> None:  # noqa: F811
    name = _start(user)
    made = user.sandbox("exec", name, "sh", "-c",
                        "mkdir -p /app/sticky/deep && touch /app/sticky/f /app/sticky/deep/g "
                        "&& chmod 1777 /app/sticky /app/sticky/deep")
    assert made.returncode == 0, made.stderr
    proc = user.sandbox("purge", name)
    assert proc.returncode == 0, proc.stderr
    assert not (user.sandbox_home / "volumes" / name).exists()
