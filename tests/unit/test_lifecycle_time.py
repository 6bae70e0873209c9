"""ls's relative expiry."""

from __future__ import annotations

from sandbox_cli.state import parse_iso
from sandbox_cli.ui import relative_time

NOW = parse_iso("2026-01-01T12:00:00Z") or 0.0


def test_relative_time() -> None:
    assert relative_time("2026-01-01T12:42:10Z", NOW) == "in 42m"
    assert relative_time("2026-01-01T11:57:00Z", NOW) == "3m ago"
    assert relative_time("2026-01-01T12:00:20Z", NOW) == "in 20s"
    assert relative_time("2026-01-01T14:05:00Z", NOW) == "in 2h05m"
    assert relative_time("2026-01-03T13:00:00Z", NOW) == "in 2d1h"
    assert relative_time("not a time", NOW) == "not a time"
