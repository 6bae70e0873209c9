"""Which argv the typer-free fast paths take (anything else goes through typer)."""

from __future__ import annotations

from sandbox_cli.__main__ import plain_file


def test_plain_read_and_write_take_only_plain_positionals() -> None:
    assert plain_file(["read", "box", "a.txt"]) == ("read", ["box", "a.txt"])
    assert plain_file(["write", "box", "a.txt"]) == ("write", ["box", "a.txt"])
    assert plain_file(["write", "box", "a.txt", "hi there"]) == (
        "write", ["box", "a.txt", "hi there"])
    assert plain_file(["write", "box", "a.txt", "-"]) == ("write", ["box", "a.txt", "-"])
    for typer_reads in (["read", "box"], ["read", "box", "a", "b"], ["read", "--help"],
                        ["read", "box", "-a"], ["read", "-v", "box", "a"],
                        ["read", "box", "a", "--max-size", "1m"], ["read", "box", ""],
                        ["write", "box", "a", "-x"], ["write", "box", "a", "--"],
                        ["write", "--", "box", "a"], ["write", "box", "a", "t", "u"],
                        ["exec", "box", "a"], []):
        assert plain_file(typer_reads) is None, typer_reads
