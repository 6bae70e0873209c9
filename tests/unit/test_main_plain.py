"""Which argv the typer-free fast paths take (anything else goes through typer)."""

from __future__ import annotations

import pytest

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


def test_plain_start_takes_image_name_and_the_egress_options_only() -> None:
    from sandbox_cli.__main__ import plain_start

    assert plain_start(["start", "--image", "img", "--name=box"]) == (
        "start", {"--image": ["img"], "--name": ["box"]}, [])
    assert plain_start(["start", "--allow-host", "a.test", "--allow-host=b.test:8000",
                        "--egress-network", "net", "--proxy-image", "py"]) == (
        "start", {"--allow-host": ["a.test", "b.test:8000"], "--egress-network": ["net"],
                  "--proxy-image": ["py"]}, [])
    assert plain_start(["run", "--allow-host", "a.test", "python", "-c", "x"]) == (
        "run", {"--allow-host": ["a.test"]}, ["python", "-c", "x"])
    assert plain_start(["run", "--image", "img", "--", "--x"]) == (
        "run", {"--image": ["img"]}, ["--x"])
    for typer_reads in (["start", "--image", "a", "--image", "b"],
                        ["start", "--egress-network", "a", "--egress-network", "b"],
                        ["start", "--allow-host"], ["start", "--allow-host", "-x"],
                        ["start", "--allow-host="], ["start", "--ttl", "1h"],
                        ["start", "--allow-host", "a", "--network"], ["start", "box"],
                        ["start", "--help"], ["run", "--allow-host", "a"],
                        ["run", "--image", "img", "--timeout", "3", "true"], ["exec"], []):
        assert plain_start(typer_reads) is None, typer_reads


class _Stream:
    """A stdout whose flush fails as the OS said."""

    def __init__(self, error: OSError | None) -> None:
        self.error, self.written = error, ""

    def flush(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, text: str) -> int:
        self.written += text
        return len(text)


def test_the_last_flush_before_os_exit_loses_nothing_silently(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """entry() ends by os._exit, so our code flushes: a full disk under `> file` is one line
    and exit 1 (not exit 0 with the output gone); a reader that left is no error."""
    import errno

    from sandbox_cli import __main__ as main_module

    for error, code, said in (
            (OSError(errno.ENOSPC, "No space left on device"), 1,
             "sandbox: error: could not write the output: No space left on device\n"),
            (BrokenPipeError(errno.EPIPE, "Broken pipe"), 0, ""),
            (None, 0, "")):
        err = _Stream(None)
        monkeypatch.setattr("sys.stdout", _Stream(error))
        monkeypatch.setattr("sys.stderr", err)
        assert main_module._flushed(0) == code
        assert err.written == said
    monkeypatch.setattr("sys.stdout", _Stream(OSError(errno.EIO, "I/O error")))
    monkeypatch.setattr("sys.stderr", _Stream(None))
    assert main_module._flushed(3) == 3  # the command's own failure code stays
