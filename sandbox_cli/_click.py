"""The click that typer runs on: typer 0.26+ carries its own copy, older typer uses click."""

from __future__ import annotations

try:
    from typer import _click as click  # type: ignore[attr-defined, unused-ignore]
except ImportError:  # pragma: no cover - typer < 0.26
    import click  # type: ignore[no-redef, unused-ignore]

__all__ = ["click"]
