"""The click that typer runs on, and the exception types to catch around it.

typer 0.26+ carries its own copy of click and defines Abort/Exit itself; older typer runs on
click, whose Abort/Exit typer re-exports. Both worlds are covered here, so the rest of the
package never cares which typer is installed.
"""

from __future__ import annotations

import typer

try:
    from typer import _click as click  # type: ignore[attr-defined, unused-ignore]
except ImportError:  # pragma: no cover - typer < 0.26
    import click  # type: ignore[no-redef, import-not-found, unused-ignore]

USAGE_ERRORS: tuple[type[Exception], ...] = (click.exceptions.UsageError,)
CLICK_ERRORS: tuple[type[Exception], ...] = (click.exceptions.ClickException,)
ABORTS: tuple[type[BaseException], ...] = tuple(
    {typer.Abort, getattr(click.exceptions, "Abort", typer.Abort)})
EXITS: tuple[type[BaseException], ...] = tuple(
    {typer.Exit, getattr(click.exceptions, "Exit", typer.Exit)})

__all__ = ["ABORTS", "CLICK_ERRORS", "EXITS", "USAGE_ERRORS", "click"]
