"""Choosing host files for copy-to: gitignore-style patterns below a root folder, as git would.

Patterns follow git's wildmatch rules (`*`, `?`, `[...]`, `**`, `\\` escapes, a trailing `/` for
folders, a leading or inner `/` anchoring to the folder of the file they come from) and are
matched by our own matcher, never a backtracking regular expression: each pattern is cut at its
stars into fixed-length pieces, each piece found at its leftmost place in one pass (the classic
greedy wildcard algorithm), so a match costs at most pattern length times name length, never
exponential. Patterns are bounded in length (PATTERN_MAX).

What git would ignore is left out: the `.gitignore` of every folder walked (deeper files
override higher ones, and the last matching line of a file wins), and, when the root is inside a
git work tree, `.git/info/exclude` and the `.gitignore` files from the work tree's top down to the
root. `.git` itself and the user's `--exclude` patterns always win over a file's `!` lines.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import validate, volume
from .errors import InvalidInput

GITIGNORE_MAX = 1 << 20  # bytes of a .gitignore read; the rest is left out
PATTERN_MAX = 1024  # characters in one pattern: bounds the cost of a match
_GITIGNORE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_BUILTIN = ".git"  # never copied while ignores are on, whatever a .gitignore says
_POSIX_CLASSES = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9", "graph": "\\x21-\\x7e", "lower": "a-z", "print": "\\x20-\\x7e",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"), "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z", "xdigit": "0-9a-fA-F",
}


class _Never(Exception):
    """A malformed pattern (unterminated `[`, trailing `\\`): git's wildmatch matches nothing."""


# --- one path component ----------------------------------------------------------------------

class _Segment:
    """A pattern for one path component: fixed-length pieces separated by stars.

    Each piece is a regular expression of fixed length without any repetition, so searching
    for it cannot backtrack; after a star the leftmost place of the next piece is always the
    best one, so the pieces are found in one left-to-right pass.
    """

    __slots__ = ("exact", "head", "head_len", "middle", "tail", "tail_len")

    def __init__(self, pieces: list[list[str]], stars: bool) -> None:
        def build(piece: list[str]) -> re.Pattern[str]:
            return re.compile("".join(piece), re.DOTALL)

        self.exact = None if stars else build(pieces[0])
        self.head = build(pieces[0]) if stars and pieces[0] else None
        self.head_len = len(pieces[0])
        self.tail = build(pieces[-1]) if stars and pieces[-1] else None
        self.tail_len = len(pieces[-1]) if stars else 0
        self.middle = [build(p) for p in pieces[1:-1] if p] if stars else []

    def match(self, name: str) -> bool:
        if self.exact is not None:
            return self.exact.fullmatch(name) is not None
        end = len(name) - self.tail_len
        if end < self.head_len:
            return False
        if self.head is not None and self.head.match(name) is None:
            return False
        pos = self.head_len
        for piece in self.middle:
            found = piece.search(name, pos, end)
            if found is None:
                return False
            pos = found.end()
        return self.tail is None or self.tail.fullmatch(name, end) is not None


def _bracket(text: str, start: int) -> tuple[str, int]:
    """The character class opening at TEXT[START] ('['), as a regex, and the index after it."""
    i = start + 1
    negate = i < len(text) and text[i] in "!^"
    i += negate
    items: list[str] = []
    first = True
    while True:
        if i >= len(text):
            raise _Never()
        ch = text[i]
        if ch == "]" and not first:
            i += 1
            break
        first = False
        if ch == "[" and text.startswith("[:", i):
            close = text.find(":]", i + 2)
            if close >= 0:
                name = text[i + 2 : close]
                if name not in _POSIX_CLASSES:
                    raise _Never()
                items.append(_POSIX_CLASSES[name])
                i = close + 2
                continue
        if ch == "\\":
            i += 1
            if i >= len(text):
                raise _Never()
            ch = text[i]
        i += 1
        if i + 1 < len(text) and text[i] == "-" and text[i + 1] != "]":
            high = text[i + 1]
            i += 2
            if high == "\\":
                if i >= len(text):
                    raise _Never()
                high = text[i]
                i += 1
            if ch <= high:  # a reversed range matches nothing, as in git
                items.append(f"{re.escape(ch)}-{re.escape(high)}")
            continue
        items.append(re.escape(ch))
    if not items:
        return ("." if negate else "(?!)"), i
    return f"[{'^' if negate else ''}{''.join(items)}]", i


def _segment(text: str) -> _Segment:
    """Compile one component pattern (no '/'); raises _Never when git would match nothing."""
    pieces: list[list[str]] = [[]]
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "*":
            if pieces[-1] or len(pieces) == 1:
                pieces.append([])
            i += 1
        elif ch == "?":
            pieces[-1].append(".")
            i += 1
        elif ch == "[":
            regex, i = _bracket(text, i)
            pieces[-1].append(regex)
        elif ch == "\\":
            if i + 1 >= len(text):
                raise _Never()
            pieces[-1].append(re.escape(text[i + 1]))
            i += 2
        else:
            pieces[-1].append(re.escape(ch))
            i += 1
    return _Segment(pieces, len(pieces) > 1)


# --- a whole pattern -------------------------------------------------------------------------

_GLOBSTAR = None  # a `**` component: any number of components
_ANY = _segment("*")


@dataclass(frozen=True)
class Rule:
    """One gitignore line, compiled. BASE is the folder of its file (components from the top)."""

    text: str
    negate: bool
    dir_only: bool
    basename: bool  # no '/' in the pattern: matched against the last component at any depth
    parts: tuple[_Segment | None, ...]  # _GLOBSTAR (None) or a component pattern
    never: bool = False

    def match(self, rel: tuple[str, ...], is_dir: bool) -> bool:
        """Whether REL (components below BASE, at least one) is matched."""
        if self.never or (self.dir_only and not is_dir):
            return False
        if self.basename:
            segment = self.parts[0]
            return segment is not None and segment.match(rel[-1])
        return _match_parts(self.parts, rel)


def _fits(chunk: Sequence[_Segment | None], rel: tuple[str, ...], at: int) -> bool:
    return all(seg is not None and seg.match(rel[at + k]) for k, seg in enumerate(chunk))


def _match_parts(parts: tuple[_Segment | None, ...], rel: tuple[str, ...]) -> bool:
    """Components against component patterns, `**` taking any number: the same greedy pass
    as within a name (each chunk between two `**` found at its leftmost place)."""
    chunks: list[list[_Segment | None]] = [[]]
    for seg in parts:
        if seg is _GLOBSTAR:
            chunks.append([])
        else:
            chunks[-1].append(seg)
    if len(chunks) == 1:
        return len(rel) == len(parts) and _fits(parts, rel, 0)
    head, tail = chunks[0], chunks[-1]
    end = len(rel) - len(tail)
    if end < len(head) or not _fits(head, rel, 0) or not _fits(tail, rel, end):
        return False
    pos = len(head)
    for chunk in chunks[1:-1]:
        if not chunk:
            continue
        while pos + len(chunk) <= end and not _fits(chunk, rel, pos):
            pos += 1
        if pos + len(chunk) > end:
            return False
        pos += len(chunk)
    return True


def _trim_trailing_spaces(line: str) -> str:
    """Trailing spaces go unless escaped with a backslash (git's trim_trailing_spaces)."""
    stripped = line.rstrip(" ")
    if stripped != line and stripped.endswith("\\"):
        backslashes = len(stripped) - len(stripped.rstrip("\\"))
        if backslashes % 2:
            return stripped + " "
    return stripped


def parse_rule(line: str) -> Rule | None:
    """A gitignore line as a Rule; None for a blank line or a comment."""
    text = _trim_trailing_spaces(line)
    if not text or text.startswith("#"):
        return None
    negate = text.startswith("!")
    pattern = text[1:] if negate else text
    dir_only = pattern.endswith("/")
    if dir_only:
        pattern = pattern[:-1]
    basename = "/" not in pattern
    pattern = pattern.removeprefix("/")
    if not pattern:
        return None
    try:
        if basename:
            compiled: tuple[_Segment | None, ...] = (_segment(pattern),)
        else:
            pieces = pattern.split("/")
            compiled = tuple(_GLOBSTAR if p == "**" else _segment(p) for p in pieces)
            if pieces[-1] == "**":  # `dir/**`: everything inside, not dir itself
                compiled += (_ANY,)
    except _Never:
        return Rule(text, negate, dir_only, basename, (), never=True)
    return Rule(text, negate, dir_only, basename, compiled)


def pattern(value: str) -> str:
    """A user's pattern (copy-to PATTERN, --exclude, run --copy): validated and bounded."""
    validate.glob(value)
    if len(value) > PATTERN_MAX:
        raise InvalidInput(f"pattern too long ({len(value)} characters; at most {PATTERN_MAX})")
    return value


# --- ignore files ----------------------------------------------------------------------------

def _read_bounded(path: str) -> bytes | None:
    """PATH's first GITIGNORE_MAX bytes if it is a regular file (never a link, FIFO or device;
    opened without following a final link and without blocking); None when absent or not one."""
    try:
        fd = os.open(path, _GITIGNORE_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.ENOTDIR,
                         errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = volume.read_at_most(fd, GITIGNORE_MAX)
        extra = os.read(fd, 1) if len(data) == GITIGNORE_MAX else b""
    finally:
        os.close(fd)
    if extra:  # cut short: drop the partial last line rather than misread it
        data = data[: data.rfind(b"\n") + 1]
    return data


def _ignore_rules(path: str) -> tuple[Rule, ...]:
    """The rules of the ignore file at PATH (none when it is missing or not a regular file).

    Lines are split at '\\n' only (a trailing '\\r' dropped), as git does; a line longer than
    PATTERN_MAX is left out with a warning, so no file can make matching slow.
    """
    data = _read_bounded(path)
    if not data:
        return ()
    rules = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.decode("utf-8", errors="surrogateescape").removesuffix("\r")
        if len(line) > PATTERN_MAX:
            from . import ui

            ui.warn(f"{path}:{number}: pattern longer than {PATTERN_MAX} characters; ignored")
            continue
        rule = parse_rule(line)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _work_tree(root: str) -> tuple[str, tuple[str, ...], str | None]:
    """The top of the git work tree holding ROOT, ROOT's components below it, and the git
    folder whose info/exclude applies. Without a work tree (or one whose `.git` is not the
    user's, which git itself would refuse): ROOT, (), None."""
    here = root
    while True:
        dot_git = os.path.join(here, ".git")
        try:
            st = os.lstat(dot_git)
        except OSError:
            st = None
        if st is not None and (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            if st.st_uid != os.geteuid():
                return root, (), None
            prefix = tuple(p for p in os.path.relpath(root, here).split(os.sep) if p != ".")
            return here, prefix, _git_dir(here, dot_git, st)
        parent = os.path.dirname(here)
        if parent == here:
            return root, (), None
        here = parent


def _git_dir(top: str, dot_git: str, st: os.stat_result) -> str | None:
    """The git folder holding info/exclude: `.git`, or for a linked work tree (a `.git` file
    `gitdir: ...`) its common folder."""
    if stat.S_ISDIR(st.st_mode):
        return dot_git
    text = (_read_bounded(dot_git) or b"").decode("utf-8", errors="replace").strip()
    if not text.startswith("gitdir:"):
        return None
    git_dir = os.path.join(top, text[len("gitdir:"):].strip())
    common = (_read_bounded(os.path.join(git_dir, "commondir")) or b"").decode(
        "utf-8", errors="replace").strip()
    return os.path.normpath(os.path.join(git_dir, common)) if common else git_dir


# --- the walk --------------------------------------------------------------------------------

@dataclass
class Selection:
    """Files chosen (as path components relative to the root) and links left out."""

    files: list[tuple[str, ...]] = field(default_factory=list)
    skipped_links: int = 0


# Rules of one ignore file with the number of components of the folder it belongs to (from
# the top of the work tree); a folder's groups are its parent's plus its own .gitignore's.
_Group = tuple[int, tuple[Rule, ...]]


def _ignored(groups: Sequence[_Group], path: tuple[str, ...], is_dir: bool) -> bool:
    """git's verdict on PATH (components from the top): the last matching line of the deepest
    file that has one decides; a `!` line re-includes."""
    for depth, rules in reversed(groups):
        rel = path[depth:]
        for rule in reversed(rules):
            if rule.match(rel, is_dir):
                return not rule.negate
    return False


def _compile_user(patterns: Iterable[str]) -> list[Rule]:
    rules = []
    for text in patterns:
        rule = parse_rule(pattern(text))
        rules.append(rule if rule is not None else Rule(text, False, False, True, (), True))
    return rules


@dataclass
class _Walk:
    root: str
    prefix: tuple[str, ...]  # ROOT's components below the top of the work tree
    includes: list[Rule]
    excludes: list[Rule]
    use_gitignore: bool
    used: list[bool]  # per include pattern: chose at least one file
    selection: Selection = field(default_factory=Selection)

    def refused(self, groups: Sequence[_Group], rel: tuple[str, ...], is_dir: bool) -> bool:
        """Left out: `.git`, a user's --exclude, then the ignore files (in that order, so no
        `!` line of a file brings back what the first two leave out)."""
        if self.use_gitignore and rel[-1] == _BUILTIN:
            return True
        if any(rule.match(rel, is_dir) for rule in self.excludes):
            return True
        return self.use_gitignore and _ignored(groups, self.prefix + rel, is_dir)

    def matching(self, rel: tuple[str, ...], is_dir: bool) -> frozenset[int]:
        return frozenset(i for i, rule in enumerate(self.includes) if rule.match(rel, is_dir))

    def run(self, groups: list[_Group]) -> None:
        # (folder, ignore groups in force there, include patterns matching the folder itself)
        stack: list[tuple[tuple[str, ...], list[_Group], frozenset[int]]] = [
            ((), groups, frozenset())]
        while stack:
            rel_dir, groups, inherited = stack.pop()
            folder = os.path.join(self.root, *rel_dir)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except PermissionError:
                continue
            if (rel_dir and self.use_gitignore  # the root's own was read with the work tree's
                    and any(e.name == ".gitignore" for e in entries)):
                own = _ignore_rules(os.path.join(folder, ".gitignore"))
                if own:
                    groups = [*groups, (len(self.prefix) + len(rel_dir), own)]
            for entry in entries:
                self.visit(entry, (*rel_dir, entry.name), groups, inherited, stack)

    def visit(self, entry: os.DirEntry[str], rel: tuple[str, ...], groups: list[_Group],
              inherited: frozenset[int], stack: list[Any]) -> None:
        mode = entry.stat(follow_symlinks=False).st_mode
        is_dir = stat.S_ISDIR(mode)
        if self.refused(groups, rel, is_dir):
            return  # an ignored folder is never entered: nothing below it comes back
        chosen = inherited | self.matching(rel, is_dir)
        if is_dir:
            stack.append((rel, groups, chosen))
        elif chosen and stat.S_ISREG(mode):
            self.selection.files.append(rel)
            for index in chosen:
                self.used[index] = True
        elif chosen and stat.S_ISLNK(mode):
            self.selection.skipped_links += 1


def _top_groups(top: str, prefix: tuple[str, ...], git_dir: str | None) -> list[_Group]:
    """The ignore rules in force at the root: info/exclude, then the .gitignore of the top and
    of each folder down to the root. Refuses a root that git ignores (all below it is)."""
    groups: list[_Group] = []
    if git_dir is not None:
        exclude = _ignore_rules(os.path.join(git_dir, "info", "exclude"))
        if exclude:
            groups.append((0, exclude))
    folder = top
    for depth in range(len(prefix) + 1):
        own = _ignore_rules(os.path.join(folder, ".gitignore"))
        if own:
            groups.append((depth, own))
        if depth < len(prefix):
            if _ignored(groups, prefix[: depth + 1], True):
                shown = os.path.join(top, *prefix[: depth + 1])
                raise InvalidInput(f"{shown} is ignored by git's rules (.gitignore): nothing "
                                   "below it is copied; use --no-ignore to copy it anyway")
            folder = os.path.join(folder, prefix[depth])
    return groups


def select_files(root: str, patterns: Sequence[str], excludes: Sequence[str] = (),
                 use_gitignore: bool = True) -> Selection:
    """Regular files below ROOT matching any of PATTERNS and none of EXCLUDES / ignore files.

    Symbolic links are never followed (so nothing outside ROOT is read), not even an ignore
    file that is one. Each pattern must choose at least one file, or InvalidInput names it.
    """
    includes = _compile_user(patterns)
    excludes_rules = _compile_user(excludes)
    if use_gitignore:
        top, prefix, git_dir = _work_tree(root)
        groups = _top_groups(top, prefix, git_dir)
    else:
        prefix, groups = (), []
    walk = _Walk(root, prefix, includes, excludes_rules, use_gitignore, [False] * len(includes))
    walk.run(groups)
    unused = [p for p, used in zip(patterns, walk.used, strict=True) if not used]
    if unused:
        shown = " nor ".join(repr(p) for p in unused)
        hint = "" if not use_gitignore else " (that .gitignore leaves in)"
        raise InvalidInput(f"no files match {shown} under {root}{hint}")
    walk.selection.files.sort()
    return walk.selection


def _suffix(text: str) -> str:
    """The literal extension ('.py') of the last component of pattern TEXT, or ''."""
    last = text.rstrip("/").rsplit("/", 1)[-1]
    ext = last[last.rfind("."):] if "." in last.lstrip(".") else ""
    return "" if any(ch in ext for ch in "*?[\\") else ext


def check_dest(root: str, patterns: Sequence[str], dest: str) -> None:
    """Refuse a DEST that looks like a second match of an unquoted pattern the shell expanded
    (`copy-to BOX *.py` run as `copy-to BOX a.py b.py`): a file in the source, a name matching
    the pattern, or one with the pattern's extension. A DEST ending in '/' is taken as meant."""
    if len(patterns) != 1 or dest.endswith("/"):
        return
    text = patterns[0]
    parts = validate.sandbox_path(dest, allow_root=True)
    if not parts:
        return
    suspicious = bool(_suffix(text)) and parts[-1].endswith(_suffix(text))
    rule = parse_rule(text)
    suspicious = suspicious or (rule is not None and rule.match(parts, False))
    try:
        st = os.lstat(os.path.join(root, *parts))
        suspicious = suspicious or not stat.S_ISDIR(st.st_mode)
    except OSError:
        pass
    if suspicious:
        raise InvalidInput(
            f"DEST {dest!r} looks like a second file matching the pattern, as when the shell "
            f"expands an unquoted pattern: quote the pattern (e.g. '*.py'), or end DEST with "
            f"'/' if it is a folder")
