"""tree.TarTree, the Source of an engine volume: names no real tree holds ('..', absolute),
members whose folders did not come first, links and hard links, and the stream's budget."""

from __future__ import annotations

import io
import tarfile

import pytest

from sandbox_cli import tree
from sandbox_cli.errors import UnsafePath

_LINK_META = (1234, 5678, 0o644, 1_700_000_000)  # every member's uid, gid, mode (but run's), mtime


def _tar(*members: tuple[str, bytes, bytes | None]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
                info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "./a/f"
            info.size = len(data or b"")
            info.mode = 0o4755 if name.endswith("run") else _LINK_META[2]
            info.uid, info.gid, info.mtime = _LINK_META[0], _LINK_META[1], _LINK_META[3]
            tar.addfile(info, io.BytesIO(data) if data else None)
    out.seek(0)
    return out


def _all(rel: tuple[str, ...], is_dir: bool, inherited: bool) -> tuple[bool, bool]:
    return True, True


def test_hostile_names_and_kinds_are_skipped_and_counted() -> None:
    stream = _tar((".", tarfile.DIRTYPE, None), ("./a", tarfile.DIRTYPE, None),
                  ("./a/f", tarfile.REGTYPE, b"hi"), ("../evil", tarfile.REGTYPE, b"x"),
                  ("/abs", tarfile.REGTYPE, b"x"), ("./a/../x", tarfile.REGTYPE, b"x"),
                  ("./b/c/deep", tarfile.REGTYPE, b"deep"), ("./l", tarfile.SYMTYPE, None),
                  ("./h", tarfile.LNKTYPE, None), ("./p", tarfile.FIFOTYPE, None),
                  ("./nl\nname", tarfile.REGTYPE, b"n"), ("./run", tarfile.REGTYPE, b"r"))
    source = tree.TarTree(stream, 1 << 20)
    skipped = tree.Skipped()
    files = {}
    for rel, entry, chosen in source.items(_all, skipped):
        assert chosen
        if entry.is_file:
            opened = source.open(rel)
            files["/".join(rel)] = opened.read(100)
        else:
            skipped.add(entry.kind)
    assert files == {"a/f": b"hi", "b/c/deep": b"deep", "run": b"r"}
    assert skipped.as_dict() == {"fifo": 1, "hardlink": 1, "link": 1, "name": 4}


def test_an_excluded_folder_hides_what_it_holds_even_out_of_order() -> None:
    stream = _tar(("./keep/f", tarfile.REGTYPE, b"1"), ("./skip", tarfile.DIRTYPE, None),
                  ("./skip/g", tarfile.REGTYPE, b"2"), ("./skip/sub/h", tarfile.REGTYPE, b"3"))

    def choose(rel: tuple[str, ...], is_dir: bool, inherited: bool) -> tuple[bool, bool]:
        return rel[0] != "skip", True

    got = [rel for rel, _, _ in tree.TarTree(stream, 1 << 20).items(choose, tree.Skipped())]
    assert got == [("keep", "f")]


def test_the_stream_is_held_to_its_budget_and_a_stale_item_cannot_be_opened() -> None:
    stream = _tar(("./a", tarfile.REGTYPE, b"x" * 10), ("./b", tarfile.REGTYPE, b"y" * 10))
    source = tree.TarTree(stream, 15, " (raise it with --max-total)")
    items = source.items(_all, tree.Skipped())
    rel, _, _ = next(items)
    assert rel == ("a",)
    with pytest.raises(UnsafePath, match=r"/app/b: stopped.*--max-total"):
        next(items)
    with pytest.raises(UnsafePath, match="changed"):
        source.open(("a",))


def test_a_hard_links_second_name_is_fetched_on_its_own_after_the_stream_ends() -> None:
    """The engine holds the container's lock until a cp's stream is read to its end: the
    second name's own cp must come after FINISH, and it is asked for the file the link's
    header describes (owner, group, mode, mtime)."""
    stream = _tar(("./a", tarfile.DIRTYPE, None), ("./a/f", tarfile.REGTYPE, b"hi"),
                  ("./h", tarfile.LNKTYPE, None), ("./z", tarfile.REGTYPE, b"z"))
    closed: list[tuple[str, ...]] = []
    events: list[str] = []

    def fetch(parts: tuple[str, ...], want: tuple[int, int, int, int]
              ) -> tuple[tree.Opened, object] | None:
        events.append(f"fetch {'/'.join(parts)} {want}")
        return (tree.Opened(2, 0o100644, stream=io.BytesIO(b"hi")),
                lambda: closed.append(parts))

    source = tree.TarTree(stream, 1 << 20, fetch=fetch,  # type: ignore[arg-type]
                          finish=lambda: events.append("finish"))
    files = {}
    for rel, entry, _ in source.items(_all, tree.Skipped()):
        assert entry.is_file
        events.append("/".join(rel))
        files["/".join(rel)] = source.open(rel).read(10)
    assert files == {"a/f": b"hi", "h": b"hi", "z": b"z"} and closed == [("h",)]
    uid, gid, mode, mtime = _LINK_META
    assert events == ["a/f", "z", "finish", f"fetch h {(uid, gid, mode, mtime)}", "h"]
