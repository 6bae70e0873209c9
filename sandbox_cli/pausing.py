"""`sandbox pause` / `sandbox resume`: freeze a sandbox's processes (docker pause, the cgroup
freezer) and thaw them.

A paused sandbox uses no CPU. Its files stay reachable (`read`, `write`, `copy-to` work on the
host folder), but nothing can run in it: `exec` is refused (exit 3) until it is resumed. The
flag is kept in the state file as well, so that refusal costs no docker call; a container
paused behind our back (`docker pause`) is told apart after the failed exec instead.

The TTL keeps running while paused: the expiry is wall-clock time (state file and label). The
frozen `sleep` cannot end, so Docker does not remove the container at its TTL; the sandbox
then reads as `expired`, and the next `ls`, `start` or `purge` removes its container (`docker
rm -f` ends a paused container too).
"""

from __future__ import annotations

from . import docker
from .errors import SandboxNotFound
from .state import SandboxRecord, StateStore

PAUSED_OPTION = "paused"  # in a record's options: `sandbox pause` froze it


def paused_message(name: str) -> str:
    """What exec (and kill, logs --follow) say about a paused sandbox."""
    return f"paused: `sandbox resume {name}`"


def is_paused(record: SandboxRecord) -> bool:
    """True when `sandbox pause` froze RECORD's sandbox (and no resume since)."""
    return record.options.get(PAUSED_OPTION) is True


def refuse_if_paused(record: SandboxRecord) -> None:
    """SandboxNotFound (exit 3) for a sandbox that `sandbox pause` froze."""
    if is_paused(record):
        raise SandboxNotFound(paused_message(record.name))


def _set_flag(store: StateStore, name: str, paused: bool) -> None:
    with store.transaction() as records:
        if name in records:
            if paused:
                records[name].options[PAUSED_OPTION] = True
            else:
                records[name].options.pop(PAUSED_OPTION, None)


def pause(store: StateStore, name: str) -> bool:
    """Freeze NAME's processes; False when it was paused already."""
    return _toggle(store, name, "pause", "already paused")


def resume(store: StateStore, name: str) -> bool:
    """Thaw NAME's processes; False when it was not paused."""
    return _toggle(store, name, "unpause", "is not paused")


def _toggle(store: StateStore, name: str, verb: str, no_change: str) -> bool:
    from .sandbox import container_ref, require

    record = require(store, name)
    argv = [docker.docker_binary(), verb, container_ref(record)]
    proc = docker.run_docker(argv, check=False)
    changed = proc.returncode == 0
    if not changed and no_change not in proc.stderr.lower():
        raise docker.classify_failure(argv, proc.returncode, proc.stderr)
    _set_flag(store, name, verb == "pause")
    return changed
