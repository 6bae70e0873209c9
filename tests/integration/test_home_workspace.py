"""The state file records each sandbox's workspace and reads it back, strictly: a path that is
not this home's volumes/NAME is refused, never followed; old records (no workspace) still work."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import BUSYBOX_IMAGE, Runner


def _state(home: Path) -> dict:
    return json.loads((home / "state.json").read_text())


def _set_workspace(home: Path, name: str, workspace: object) -> None:
    state = _state(home)
    if workspace is None:
        del state["sandboxes"][name]["workspace"]
    else:
        state["sandboxes"][name]["workspace"] = workspace
    (home / "state.json").write_text(json.dumps(state))


def test_the_workspace_is_recorded_and_reported(docker_engine: None, sandbox: Runner,
                                               home: Path) -> None:
    proc = sandbox("start", "--name", "t-ws", "--image", BUSYBOX_IMAGE, "--json", check=True)
    try:
        folder = str(home / "volumes" / "t-ws")
        assert _state(home)["sandboxes"]["t-ws"]["workspace"] == {"kind": "bind",
                                                                   "path": folder}
        assert json.loads(proc.stdout)["volume"] == folder
        listed = json.loads(sandbox("ls", "--json", check=True).stdout)
        assert [row["volume"] for row in listed if row["name"] == "t-ws"] == [folder]
    finally:
        sandbox("purge", "t-ws")


def test_a_workspace_outside_the_home_is_refused_never_followed(
        box: str, sandbox: Runner, home: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    for workspace in ({"kind": "bind", "path": str(victim)},
                      {"kind": "bind", "path": f"{home}/volumes/../../victim"},
                      {"kind": "bind", "path": f"{home}/volumes/other"},
                      {"kind": "volume", "path": str(victim)},
                      {"kind": "bind", "path": str(victim), "extra": 1}):
        _set_workspace(home, box, workspace)
        # The tampered entry is dropped: nothing reads, writes or lists the victim's folder.
        assert sandbox("write", box, "precious.txt", "overwritten").returncode == 3
        rows = json.loads(sandbox("ls", "--json", check=True).stdout)
        assert all(row["volume"] != str(victim) for row in rows)
    assert sandbox("purge", box).returncode == 0  # found by its label, removed
    assert (victim / "precious.txt").read_text() == "keep me"


def test_a_record_of_the_old_format_still_works(box: str, sandbox: Runner, home: Path) -> None:
    _set_workspace(home, box, None)
    sandbox("write", box, "note.txt", "hello", check=True)
    assert sandbox("exec", box, "cat", "/app/note.txt", check=True).stdout == b"hello"
    assert sandbox("read", box, "note.txt", check=True).stdout == b"hello"
    listed = json.loads(sandbox("ls", "--json", check=True).stdout)
    assert [row["volume"] for row in listed if row["name"] == box] == [
        str(home / "volumes" / box)]


def test_a_new_record_gets_its_workspace_on_the_next_write(
        start_box: Callable[..., str], sandbox: Runner, home: Path) -> None:
    first = start_box()
    _set_workspace(home, first, None)
    start_box()  # any writer rewrites the file: old entries gain the derived workspace
    assert _state(home)["sandboxes"][first]["workspace"] == {
        "kind": "bind", "path": str(home / "volumes" / first)}
