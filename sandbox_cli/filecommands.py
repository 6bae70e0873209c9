"""The CLI's `read` and `write`, shared by the typer commands (cli.py) and the typer-free
fast path for their plain forms (__main__.plain_file): one body for each, whichever parsed."""

from __future__ import annotations

import os
import sys

from . import sandbox, ui
from .state import StateStore


def write(name: str, path: str, text: str | None) -> None:
    """TEXT's bytes to PATH in NAME's /app; stdin's (binary-safe) when TEXT is None or `-`
    (`-` is stdin, as for most tools: a lone dash as content comes through stdin too)."""
    source = os.fsencode(text) if text not in (None, "-") else sys.stdin.buffer
    sandbox.write_file(StateStore(), name, path, source)


def read(name: str, path: str, limit: int) -> None:
    """PATH's bytes from NAME's /app to stdout, refused past LIMIT bytes."""
    with ui.writing_stdout():
        sys.stdout.flush()
        sandbox.read_file(StateStore(), name, path, sys.stdout.fileno(), limit)
