"""The state file: concurrent writers, untrusted contents, derived paths."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from sandbox_cli.state import SandboxRecord, StateStore, home_label


def _record(name: str) -> SandboxRecord:
    return SandboxRecord(name=name, container_id="c" * 64, image="img",
                         created_at="2026-01-01T00:00:00Z", expires_at="2999-01-01T00:00:00Z")


def _add_many(home: str, prefix: str, count: int) -> None:
    store = StateStore(home)
    for i in range(count):
        with store.transaction() as records:
            records[f"{prefix}-{i}"] = _record(f"{prefix}-{i}")


def test_parallel_writers_lose_nothing(tmp_path: Path) -> None:
    home = str(tmp_path)
    workers = [multiprocessing.Process(target=_add_many, args=(home, f"w{n}", 25))
               for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(StateStore(home).load()) == 8 * 25


def test_unreadable_file_is_kept_aside_not_overwritten(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.ensure_dirs()
    Path(store.path).write_text("{not json")
    assert store.load() == {}
    with store.transaction() as records:
        records["box"] = _record("box")
    aside = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json"
    assert list(store.load()) == ["box"]


def test_hostile_entries_are_dropped(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.ensure_dirs()
    good = json.loads(json.dumps(_record("box").to_json()))
    Path(store.path).write_text(json.dumps({"version": 1, "sandboxes": {
        "box": good,
        "../../etc": {**good, "name": "../../etc"},
        "alias": {**good, "name": "box"},  # key and name disagree
        "weird": "not an object",
    }}))
    assert list(store.load()) == ["box"]


def test_volume_path_is_derived_from_the_name(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    assert store.volume_path("box") == str(tmp_path / "volumes" / "box")


def test_expiry(tmp_path: Path) -> None:
    record = _record("box")
    assert not record.expired()
    record.expires_at = "2000-01-01T00:00:00Z"
    assert record.expired()
    record.keep = True
    assert not record.expired()


def test_home_labels_differ(tmp_path: Path) -> None:
    assert home_label(str(tmp_path / "a")) != home_label(str(tmp_path / "b"))


def test_temp_file_names_are_not_predictable(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A link named like the old temporary file (state.json.tmp-PID) is never written through."""
    import os

    store = StateStore(str(tmp_path))
    store.ensure_dirs()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    (tmp_path / "state.json.tmp-4242").symlink_to(victim)
    with store.transaction() as records:
        records["box"] = _record("box")
    assert victim.read_text() == "precious"
    assert list(store.load()) == ["box"]
    assert not [p for p in tmp_path.glob("state.json.tmp-*") if not p.is_symlink()]


def test_workspace_is_recorded_and_checked(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    with store.transaction() as records:
        records["box"] = _record("box")
    saved = json.loads(Path(store.path).read_text())["sandboxes"]["box"]
    folder = str(tmp_path / "volumes" / "box")
    assert saved["workspace"] == {"kind": "bind", "path": folder}
    assert store.workspace_path(store.load()["box"]) == folder
    for bad in ({"kind": "bind", "path": "/etc"}, {"kind": "bind", "path": folder + "/"},
                {"kind": "volume", "path": folder}, {"kind": "bind"}, "x", ["bind", folder],
                {"kind": 1, "path": folder}):
        Path(store.path).write_text(json.dumps(
            {"version": 1, "sandboxes": {"box": {**saved, "workspace": bad}}}))
        assert store.load() == {}, bad
    del saved["workspace"]  # the old format: derived from the name
    Path(store.path).write_text(json.dumps({"version": 1, "sandboxes": {"box": saved}}))
    assert store.load()["box"].workspace == {"kind": "bind", "path": folder}


def test_lock_wait_gives_up_with_the_holder(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl
    import os

    from sandbox_cli.state import LockBusy

    store = StateStore(str(tmp_path))
    store.ensure_dirs()
    monkeypatch.setenv("SANDBOX_LOCK_TIMEOUT", "0.2")
    held = os.open(store.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LockBusy, match=f"held by pid {os.getpid()}"), store.transaction():
            pass
    finally:
        os.close(held)
    with store.transaction() as records:  # free again
        records["box"] = _record("box")


def test_home_label_is_the_sha256_prefix_every_version_put_on_containers(tmp_path: Path) -> None:
    """The label is on live containers and volumes: the built-in SHA-256 that spares loading
    OpenSSL must give the very value hashlib gave."""
    import hashlib
    import os

    for home in (str(tmp_path), "/", str(tmp_path / "é ü")):
        want = hashlib.sha256(os.path.realpath(home).encode()).hexdigest()[:16]
        assert home_label(home) == want
