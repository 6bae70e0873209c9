"""The state file: concurrent writers, untrusted contents, derived paths."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

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
    good = json.loads(json.dumps(_record("box").__dict__))
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
