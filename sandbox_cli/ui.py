"""Everything shown to a person. The only module that imports rich, and only when it draws.

stdout carries data (names, bytes, JSON, tables); stderr carries talk (progress, warnings,
errors). A stream that is not a terminal (or TERM=dumb) gets plain lines; NO_COLOR keeps the
layout but drops colour and styles (rich honours it).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

PROG = "sandbox"
_SECRET_SAFE_KEYS = {"HOME", "SANDBOX_EXEC_ID"}


def is_terminal(stream: Any) -> bool:
    """True when STREAM is a terminal able to draw tables and progress bars."""
    return hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb"


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """TEXT safe for a terminal: control and other non-printable characters (newlines, escape
    sequences, bidi overrides, undecodable bytes) shown as \\n, \\x1b, \\u202e, ..., so a name
    from a container can neither drive the terminal nor forge a line of ours."""
    if text.isprintable():
        return text  # the common case costs one scan
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def error(message: str) -> None:
    """One line on stderr: `sandbox: error: MESSAGE` (escaped: never a second line)."""
    first = printable(message.strip()) if message.strip() else "unknown error"
    sys.stderr.write(f"{PROG}: error: {first}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    """One line of warning on stderr (escaped)."""
    sys.stderr.write(f"{PROG}: warning: {printable(message)}\n")
    sys.stderr.flush()


def info(message: str) -> None:
    """One line of talk on stderr (escaped)."""
    sys.stderr.write(f"{PROG}: {printable(message)}\n")
    sys.stderr.flush()


@contextmanager
def writing_stdout() -> Iterator[None]:
    """Turn a reader that went away into OutputClosed (a quiet exit), not an error."""
    from .errors import OutputClosed

    try:
        yield
    except BrokenPipeError:
        raise OutputClosed() from None


def data(text: str) -> None:
    """A line of data on stdout."""
    with writing_stdout():
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def emit_json(value: Any) -> None:
    """VALUE as JSON on stdout (one document, one trailing newline), exactly as
    json.dumps(VALUE, indent=2) but written piece by piece: a captured output of 16 MiB, where
    each NUL byte escapes to six characters, is never built as one string (that took ~15x the
    capture in memory)."""
    with writing_stdout():
        for chunk in _json_chunks(value, 0):
            sys.stdout.write(chunk)
        sys.stdout.write("\n")
        sys.stdout.flush()


_JSON_SLICE = 1 << 16


def _json_chunks(value: Any, level: int) -> Iterator[str]:
    if isinstance(value, str):
        yield '"'
        for start in range(0, len(value), _JSON_SLICE):
            yield json.dumps(value[start : start + _JSON_SLICE])[1:-1]
        yield '"'
    elif isinstance(value, (dict, list, tuple)) and value:
        is_dict = isinstance(value, dict)
        opening, closing = ("{", "}") if is_dict else ("[", "]")
        inner = "\n" + "  " * (level + 1)
        items: Iterable[tuple[Any, Any]] = (value.items() if isinstance(value, dict)
                                            else enumerate(value))
        for index, (key, item) in enumerate(items):
            yield (opening if index == 0 else ",") + inner
            if is_dict:
                yield json.dumps({key: None})[1:-7] + ": "  # the key as json.dumps writes it
            yield from _json_chunks(item, level + 1)
        yield "\n" + "  " * level + closing
    else:
        yield json.dumps(value)


def mask_argv(argv: Sequence[str]) -> list[str]:
    """ARGV with secret-looking values hidden: --env K=V values and URL credentials."""

    masked = []
    previous = ""
    for arg in argv:
        if previous in ("--env", "-e") and "=" in arg:
            key = arg.split("=", 1)[0]
            if key not in _SECRET_SAFE_KEYS:
                arg = f"{key}=***"
        arg = mask_url(arg)
        masked.append(arg)
        previous = arg
    return masked


def report_stop(outcome: Any, timeout: float | None, name: str) -> None:
    """After exec or run: say why the command could not start, what a timeout did (never
    claiming a stop that did not happen), and that the OOM killer struck. OUTCOME is an
    execute.Outcome or ExecResult (both have these fields); TIMEOUT is in seconds."""
    if outcome.not_started:
        error(outcome.not_started)
    if outcome.stop_failed:
        lead = f"timed out after {duration(timeout)}; " if outcome.timed_out else ""
        error(f"{lead}could not stop the command inside the container (no sh in the image, or "
              f"its process limit is reached): `sandbox purge {name}` ends it")
    elif outcome.timed_out:
        error(f"timed out after {duration(timeout)}; the command was stopped in the container")
    if outcome.oom_killed:
        limit = f" (limit {outcome.memory})" if outcome.memory else ""
        info(f"killed: out of memory{limit}")


def duration(seconds: float | None) -> str:
    """A span with its unit, as people write it: 1 s, 2.5 s, 5 min, 1 h 30 min."""
    if seconds is None:
        return "?"
    if seconds < 60 or seconds % 60:
        return f"{seconds:g} s"
    minutes = int(seconds // 60)
    if minutes < 60 or (minutes % 60 and minutes < 600):
        hours, rest = divmod(minutes, 60)
        return f"{hours} h {rest} min" if hours else f"{minutes} min"
    return f"{minutes / 60:g} h"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """'1 file', '2 files', '1 sandbox', '0 sandboxes'."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def mask_url(text: str) -> str:
    """TEXT with any URL credentials (user:token@ or token@) replaced by ***."""
    import re

    return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)


def trace_docker(argv: Sequence[str]) -> None:
    """--verbose: show a docker command line on stderr before it runs."""
    sys.stderr.write("+ " + shlex.join(mask_argv(argv)) + "\n")
    sys.stderr.flush()


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


LS_COLUMNS = ("name", "status", "image", "network", "ports", "expires_at", "volume")


def relative_time(iso: str, now: float | None = None) -> str:
    """An ISO 8601 UTC time as `in 42m` or `3m ago` (ls on a terminal, where STATUS says
    `expired`); ISO itself when it does not parse."""
    import time

    from .state import parse_iso

    when = parse_iso(iso)
    if when is None:
        return iso
    delta = when - (time.time() if now is None else now)
    seconds = abs(int(delta))
    if seconds < 60:
        span = f"{seconds}s"
    elif seconds < 3600:
        span = f"{seconds // 60}m"
    elif seconds < 86400:
        span = f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    else:
        span = f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    return f"in {span}" if delta >= 0 else f"{span} ago"


def sandbox_table(rows: Sequence[dict[str, Any]]) -> None:
    """`sandbox ls`: a table on a terminal, with the expiry relative (`in 42m`) so it fits 80
    columns; tab-separated lines without a header otherwise, the expiry ISO 8601 (a stable
    format for scripts)."""
    terminal = is_terminal(sys.stdout)

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if key == "network":
            return "on" if value else "off"
        if key == "ports":
            return printable(",".join(value or []) or "-")
        if key == "status" and row.get("engine"):  # on another engine than the environment's
            return printable(f"{value} on {row['engine']}")
        if key == "expires_at":
            if row.get("keep"):
                return "never"
            return printable((relative_time(value) if terminal else value) if value else "-")
        return printable(str(value if value not in (None, "") else "-"))

    if not terminal:
        for row in rows:
            data("\t".join(cell(row, k) for k in LS_COLUMNS))
        return
    from rich.console import Console
    from rich.table import Table

    styled = "NO_COLOR" not in os.environ
    table = Table(box=None, header_style="bold" if styled else "", pad_edge=False)
    for key in LS_COLUMNS:  # at 80 columns, image and volume give way, never these
        table.add_column(key.replace("_at", "").upper(),
                         no_wrap=key in ("name", "status", "expires_at"))
    for row in rows:
        table.add_row(*(cell(row, k) for k in LS_COLUMNS))
    if not rows:
        info("no sandboxes (start one with `sandbox start`)")
        return
    Console(no_color=not styled, highlight=False).print(table)


class _CopyBar:
    """A rich progress bar counting files, with the bytes copied so far."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.task = bar.add_task("copying", total=None, copied="0 B")
        self.copied = 0

    def begin(self, files: int) -> None:
        self.bar.update(self.task, total=files)

    def advance(self, size: int) -> None:
        self.copied += size
        self.bar.update(self.task, advance=1, copied=human_bytes(self.copied))


@contextmanager
def copy_progress() -> Iterator[_CopyBar | None]:
    """A progress bar on a terminal stderr while files are copied; None elsewhere."""
    if not is_terminal(sys.stderr):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("copying"), BarColumn(), MofNCompleteColumn(),
               TextColumn("files, {task.fields[copied]}"))
    with Progress(*columns, transient=True, console=_stderr_console()) as bar:
        yield _CopyBar(bar)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def doctor_report(checks: Sequence[dict[str, Any]]) -> None:
    """`sandbox doctor`: one line a check, with the fix under each problem."""
    for check in checks:
        mark = " ok " if check["ok"] else "FAIL"  # the same width: the names line up
        data(f"[{mark}] {check['name']}: {check['detail']}")
        if not check["ok"] and check.get("fix"):
            data(f"       fix: {check['fix']}")
