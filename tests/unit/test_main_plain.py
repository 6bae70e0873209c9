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
