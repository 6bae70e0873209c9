"""`sandbox diff`: what the code changed under /app since copy-to put files there.

The tree is walked as copy-from walks it (tree.walk: no link followed, nothing but regular
files opened, never blocking, bounded memory) and compared with copy-to's manifest. A file whose
size, inode, mtime and ctime are those recorded just after the copy is unchanged without being
read (the container can reset an mtime, never a ctime); any other of the same size is hashed in
chunks. Changes are written as they are found, in git's patch format, so `sandbox diff NAME |
git apply` in the source tree applies them: text files as unified diffs against the original kept
in the home (manifest.py), binary files (a NUL in the first 8000 bytes), files over TEXT_MAX and
files whose original was not kept as "Binary files ... differ" (named, never dumped).
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import tree
from .errors import UnsafePath
from .manifest import ORIGINAL_MAX, Item, is_binary, load, original

if TYPE_CHECKING:
    from .state import SandboxRecord, StateStore

TEXT_MAX = ORIGINAL_MAX  # bytes of a file shown as text; larger ones are named as binary
CONTEXT = 3
NOTES_MAX = 20  # lines of notes on stderr
_CHUNK = 1 << 20
STREAM_MAX = 16 << 30  # bytes of an engine volume's tar stream one diff reads (tree.TarTree)


@dataclass
class Change:
    """One changed file: status 'added', 'modified' or 'deleted'."""

    path: str
    status: str
    old_mode: int = 0
    new_mode: int = 0
    binary: bool = False
    insertions: int = 0
    deletions: int = 0
    note: str = ""  # why a text file is shown as binary

    def to_json(self) -> dict[str, object]:
        value: dict[str, object] = {"path": self.path, "status": self.status,
                                    "binary": self.binary, "insertions": self.insertions,
                                    "deletions": self.deletions}
        if self.old_mode:
            value["oldMode"] = f"{git_mode(self.old_mode):o}"
        if self.new_mode:
            value["newMode"] = f"{git_mode(self.new_mode):o}"
        return value


def git_mode(mode: int) -> int:
    """100755 when the owner may execute, else 100644 (the only modes git records)."""
    return 0o100755 if mode & stat.S_IXUSR else 0o100644


_ESCAPES = {7: "a", 8: "b", 9: "t", 10: "n", 11: "v", 12: "f", 13: "r", 34: '"', 92: "\\"}


def quote(path: str) -> str:
    """PATH as git writes it (core.quotePath): C-quoted when it has a control character,
    a quote, a backslash or a non-ASCII byte (octal escapes), else as is."""
    raw = os.fsencode(path)
    if all(0x20 <= b < 0x7F and b not in (34, 92) for b in raw):
        return path
    out = []
    for b in raw:
        if b in _ESCAPES:
            out.append("\\" + _ESCAPES[b])
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _name(prefix: str, path: str) -> str:
    quoted = quote(path)
    return f'"{prefix}{quoted[1:]}' if quoted.startswith('"') else prefix + quoted


def _range(start: int, stop: int) -> str:
    """A hunk's range as unified diffs write it (difflib's rule, which git's matches)."""
    beginning, length = start + 1, stop - start
    if length == 1:
        return str(beginning)
    if not length:
        beginning -= 1
    return f"{beginning},{length}"


def _line(mark: bytes, line: bytes) -> bytes:
    if line.endswith(b"\n"):
        return mark + line
    return mark + line + b"\n\\ No newline at end of file\n"


def hunks(old: bytes, new: bytes) -> tuple[list[bytes], int, int]:
    """The unified hunks from OLD to NEW (lines of bytes), insertions and deletions."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    out: list[bytes] = []
    plus = minus = 0
    matcher = difflib.SequenceMatcher(None, a, b)
    for group in matcher.get_grouped_opcodes(CONTEXT):
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n"
                   .encode())
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out.extend(_line(b" ", line) for line in a[i1:i2])
                continue
            if tag in ("replace", "delete"):
                out.extend(_line(b"-", line) for line in a[i1:i2])
                minus += i2 - i1
            if tag in ("replace", "insert"):
                out.extend(_line(b"+", line) for line in b[j1:j2])
                plus += j2 - j1
    return out, plus, minus


def patch(change: Change, old: bytes | None, new: bytes | None) -> list[bytes]:
    """CHANGE as git's patch text. OLD/NEW: the contents (None: shown as binary)."""
    path = change.path
    head = [f"diff --git {_name('a/', path)} {_name('b/', path)}\n"]
    if change.status == "added":
        head.append(f"new file mode {git_mode(change.new_mode):o}\n")
    elif change.status == "deleted":
        head.append(f"deleted file mode {git_mode(change.old_mode):o}\n")
    elif git_mode(change.old_mode) != git_mode(change.new_mode):
        head += [f"old mode {git_mode(change.old_mode):o}\n",
                 f"new mode {git_mode(change.new_mode):o}\n"]
    out = [line.encode() for line in head]
    a_name = "/dev/null" if change.status == "added" else _name("a/", path)
    b_name = "/dev/null" if change.status == "deleted" else _name("b/", path)
    if change.binary or (change.status != "added" and old is None) \
            or (change.status != "deleted" and new is None):
        change.binary = True
        out.append(f"Binary files {a_name} and {b_name} differ\n".encode())
        return out
    body, change.insertions, change.deletions = hunks(old or b"", new or b"")
    if body:
        out += [f"--- {a_name}\n".encode(), f"+++ {b_name}\n".encode(), *body]
    return out


@dataclass
class DiffResult:
    """The changes found, the entries the walk left out by kind, the notes for stderr."""

    changes: list[Change]  # kept only when no EMIT was given (--stat, --json)
    skipped: tree.Skipped
    notes: list[str]
    count: int = 0
    recorded: int = 0  # files in the manifest


def _look(ws: tree.Source, rel: tuple[str, ...], item: Item | None) -> tuple[bool, bytes | None]:
    """One pass over file REL: (whether it still holds ITEM's bytes, its contents when it has
    at most TEXT_MAX bytes, else None). At most ITEM's size + 1 or TEXT_MAX + 1 bytes are read,
    whichever is more; the whole of a large file only when its size is the one recorded."""
    import hashlib

    src = ws.open(rel)
    try:
        same_size = item is not None and src.size == item.size
        limit = max(item.size + 1 if item is not None and same_size else 0, TEXT_MAX + 1)
        digest = hashlib.sha256() if same_size else None
        if digest is None and src.size > TEXT_MAX:
            return False, None  # changed, and too large to show: not read at all
        kept: list[bytes] | None = []
        done = 0
        while done < limit:
            chunk = src.read(min(_CHUNK, limit - done))
            if not chunk:
                break
            done += len(chunk)
            if digest is not None:
                digest.update(chunk)
            if kept is not None and done <= TEXT_MAX:
                kept.append(chunk)
            else:
                kept = None
        ended = done < limit
        unchanged = bool(digest is not None and item is not None and ended
                         and done == item.size and digest.hexdigest() == item.sha)
        return unchanged, b"".join(kept) if ended and kept is not None else None
    finally:
        src.close()


def _quick(entry: tree.Entry, item: Item) -> bool | None:
    """False when ENTRY surely differs from ITEM, True when it is surely the same without
    reading it (inode, mtime and ctime as recorded: the container cannot reset a ctime),
    None when its bytes must tell."""
    if entry.size != item.size or git_mode(entry.mode) != git_mode(item.mode):
        return False
    if item.ino and entry.ino and (entry.ino, entry.mtime_ns, entry.ctime_ns) == (
            item.ino, item.mtime_ns, item.ctime_ns):
        return True
    return None


def compare(store: StateStore, record: SandboxRecord, ws: tree.Source,
            emit: Callable[[list[bytes]], None] | None) -> DiffResult:
    """Walk WS against RECORD's manifest; each change's patch goes to EMIT as found."""
    items = load(store, record)
    seen: set[str] = set()
    result = DiffResult([], tree.Skipped(), [], recorded=len(items))

    def everything(rel: tuple[str, ...], is_dir: bool, inherited: bool) -> tuple[bool, bool]:
        return True, True

    for rel, entry, _ in ws.items(everything, result.skipped):
        path = "/".join(rel)
        if not entry.is_file:
            if entry.kind == "hardlink":  # a second name of a file (tar streams): not gone
                seen.add(path)
            result.skipped.add(entry.kind)
            continue
        item = items.get(path)
        try:
            if item is not None:
                seen.add(path)
                quick = _quick(entry, item)
                if quick:
                    continue
                same, new = _look(ws, rel, item if quick is None else None)
                if same:
                    continue
                change = Change(path, "modified", item.mode, entry.mode)
                old = original(store, record.name, item.sha) if item.kept else None
                if old is None and len(result.notes) < NOTES_MAX:
                    result.notes.append(f"/app/{path}: its original was not kept (binary, over "
                                        f"{TEXT_MAX >> 20} MiB or past the budget): named only")
            else:
                change, old = Change(path, "added", 0, entry.mode), None
                new = _look(ws, rel, None)[1]
        except UnsafePath as exc:
            result.skipped.add("locked" if "lease" in exc.message else "changed")
            continue
        change.binary = (new is None or is_binary(new) or (old is not None and is_binary(old)))
        _finish(change, old, new, result, emit)
    for path in sorted(set(items) - seen):
        item = items[path]
        change = Change(path, "deleted", item.mode, 0)
        old = original(store, record.name, item.sha) if item.kept else None
        change.binary = old is None or is_binary(old)
        _finish(change, old, None, result, emit)
    return result


def _finish(change: Change, old: bytes | None, new: bytes | None, result: DiffResult,
            emit: Callable[[list[bytes]], None] | None) -> None:
    lines = patch(change, old, new)
    result.count += 1
    if emit is not None:
        emit(lines)
    else:
        result.changes.append(change)


def stat_lines(changes: list[Change]) -> Iterator[str]:
    """git diff --stat, roughly: ' PATH | N +++--' a file, then the totals."""
    width = max((len(quote(c.path)) for c in changes), default=0)
    for change in changes:
        shown = quote(change.path).ljust(width)
        if change.binary:
            yield f" {shown} | Bin"
        else:
            count = change.insertions + change.deletions
            bar = "+" * min(change.insertions, 40) + "-" * min(change.deletions, 40)
            yield f" {shown} | {count} {bar}".rstrip()
    plus = sum(c.insertions for c in changes)
    minus = sum(c.deletions for c in changes)
    files = len(changes)
    yield (f" {files} file{'s' * (files != 1)} changed, {plus} insertion{'s' * (plus != 1)}(+), "
           f"{minus} deletion{'s' * (minus != 1)}(-)")


def diff(store: StateStore, name: str,
         emit: Callable[[list[bytes]], None] | None) -> DiffResult:
    """`sandbox diff NAME`: compare NAME's /app with its manifest (an expired sandbox's files
    too, as `read` can)."""
    from .export import workspace
    from .sandbox import require

    record = require(store, name, expired_ok=True)
    with workspace(store, record, STREAM_MAX, "") as ws:
        return compare(store, record, ws, emit)
