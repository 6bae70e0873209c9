"""The first process of a sandbox started with `--allow-host`: it hands its proxy a port.

Run by the sandbox image's python3 (mounted read-only, before any code of the user's runs):

    python3 -I -S egress_handoff.py SOCKET PORT -- PROGRAM [ARG]...
    python3 -I -S egress_handoff.py SOCKET PORT --sleep SECONDS    (the port holder)

It makes a TCP socket listening on the sandbox's own loopback (127.0.0.1:PORT), sends that
socket to the egress proxy over the Unix socket SOCKET (SCM_RIGHTS: the proxy, in a container
of its own on the egress network, then accepts the sandbox's connections itself, with no relay
in between), waits for the proxy's one-byte answer, drops its own copy and becomes PROGRAM
(the sandbox's sleep, or `run`'s command). The sandbox itself has no network at all
(`--network none`): that port is its only way out.

Standard library only, any python3 (3.7+). Exit 125 with one line on stderr when the proxy
does not take the socket in time: the command never runs without its proxy.
"""

from __future__ import annotations

import os
import socket
import sys
import time

WAIT = 120.0  # seconds for the proxy to be there (started beside us; `start` watches it)
FAILED = 125  # docker's own code for "the container could not run"


def _connect(path: str, deadline: float) -> socket.socket:
    """The proxy's Unix socket, retried until DEADLINE (the proxy may start after us)."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def hand_off(path: str, port: int, wait: float = WAIT) -> None:
    """Listen on 127.0.0.1:PORT, give the socket to the proxy at PATH, close our copy."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        proxy = _connect(path, time.monotonic() + wait)
        try:
            proxy.settimeout(wait)
            proxy.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    listener.fileno().to_bytes(4, sys.byteorder))])
            if proxy.recv(1) != b"k":
                raise OSError("the egress proxy refused the sandbox's port")
        finally:
            proxy.close()
    finally:
        listener.close()  # the proxy holds it now; our copy must not outlive this process


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] not in ("--", "--sleep"):
        sys.stderr.write("egress handoff: usage: SOCKET PORT (-- PROGRAM [ARG]... | --sleep S)\n")
        return FAILED
    try:
        hand_off(argv[0], int(argv[1]), WAIT)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"sandbox: the egress proxy did not take the sandbox's port: {exc}\n")
        return FAILED
    if argv[2] == "--sleep":  # the port holder: its image need not have a sleep
        time.sleep(float(argv[3]))
        return 0
    try:
        os.execvp(argv[3], argv[3:])
    except OSError as exc:
        # Worded as run's TTL shell words it (docker.TTL_SCRIPT, whose $0 this is), whose
        # place we take: `sandbox run` turns that line into its "command not found" error.
        found = not isinstance(exc, FileNotFoundError)
        sys.stderr.write(f"sandbox-ttl: exec: {argv[3]}: "
                         f"{exc.strerror.lower() if found and exc.strerror else 'not found'}\n")
        return 126 if found else 127
    return FAILED  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
