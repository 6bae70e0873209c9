"""What sandbox prints on stderr (and in ls cells) never carries raw control characters."""

from __future__ import annotations

import pytest

from sandbox_cli import ui


@pytest.mark.parametrize(("text", "shown"), [
    ("plain name ü", "plain name ü"),
    ("a\nsandbox: error: forged", "a\\nsandbox: error: forged"),
    ("\x1b[31mred\x07\r\t", "\\x1b[31mred\\x07\\r\\t"),
    ("\u202eevil\x9b", "\\u202eevil\\x9b"),
    ("bad\udcff", "bad\\xff"),  # an undecodable byte, as os.fsdecode gives it
])
def test_printable(text: str, shown: str) -> None:
    assert ui.printable(text) == shown


def test_error_warn_info_stay_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    ui.error("/app/x\nsandbox: error: forged")
    ui.warn("w\x1b]0;title\x07")
    ui.info("i\n")
    err = capsys.readouterr().err
    assert err.splitlines() == ["sandbox: error: /app/x\\nsandbox: error: forged",
                                "sandbox: warning: w\\x1b]0;title\\x07", "sandbox: i\\n"]


def test_ls_cells_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    ui.sandbox_table([{"name": "n", "status": "running", "image": "img\x1b[2J\nx",
                       "ports": ["a\tb"], "volume": "/v"}])
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\n") == 1
    assert "img\\x1b[2J\\nx" in out and "a\\tb" in out
