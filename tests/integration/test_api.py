"""The Python API (sandbox_cli.Sandbox) against the real engine: the same core as the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX_IMAGE, PYTHON_IMAGE, Runner

pytestmark = pytest.mark.usefixtures("docker_engine")


@pytest.fixture
def api(home: Path):
    """sandbox_cli with a private home; every sandbox of that home purged afterwards."""
    import sandbox_cli

    yield sandbox_cli
    for row in sandbox_cli.list_sandboxes():
        subprocess.run([sys.executable, "-m", "sandbox_cli", "purge", row.name],
                       capture_output=True, timeout=120)


def test_exec_stdin_timeout_exit_codes(api) -> None:
    with api.Sandbox.start(image=PYTHON_IMAGE) as box:
        code = "import sys; print('out'); print('err', file=sys.stderr)"
        result = box.exec(["python3", "-c", code])
        assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "err\n")
        assert result.stdout_bytes == b"out\n" and not result.timed_out
        assert box.exec(["cat"], stdin="piped").stdout == "piped"
        assert box.exec(["cat"], stdin=b"\0\xff").stdout_bytes == b"\0\xff"
        assert box.exec(["cat"]).stdout == ""  # no stdin given: EOF at once, no hang
        assert box.exec("sh", ["-c", "exit 7"]).exit_code == 7  # the seed's exec(cmd, args)
        assert box.exec(["sh", "-c", "echo $K"], env={"K": "v"}).stdout == "v\n"
        assert box.exec(["pwd"], workdir="/tmp").stdout == "/tmp\n"
        slow = box.exec(["sleep", "30"], timeout=1)
        assert (slow.exit_code, slow.timed_out) == (124, True)
        missing = box.exec(["no-such-command"])
        assert missing.exit_code == 127 and "not found" in missing.not_started
        capped = box.exec(["head", "-c", "100000", "/dev/zero"], max_output=1000)
        assert len(capped.stdout_bytes) == 1000 and capped.stdout_truncated
    assert api.list_sandboxes() == []  # purged on leaving `with`


def test_exec_stream_bounded(api) -> None:
    with api.Sandbox.start(image=BUSYBOX_IMAGE) as box:
        seen: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        with box.exec_stream(["sh", "-c", "echo a; echo b >&2; head -c 3000000 /dev/zero"]) as s:
            for stream, chunk in s:
                assert len(chunk) <= 1 << 16
                seen[stream] += chunk
            assert s.result.exit_code == 0
        assert seen["stdout"].startswith(b"a\n") and len(seen["stdout"]) == 3000002
        assert seen["stderr"] == b"b\n"
        # Leaving early stops the command inside the container.
        with box.exec_stream(["sh", "-c", "yes"]) as s:
            next(iter(s))
        assert box.exec(["sh", "-c", "ps | grep -c '[y]es' || true"]).stdout.strip() == "0"
        timed = box.exec_stream(["sleep", "30"], timeout=1)
        assert list(timed) == [] and timed.result.timed_out


def test_files_text_binary_and_refusals(api) -> None:
    with api.Sandbox.start(image=BUSYBOX_IMAGE) as box:
        box.write_text("hello.txt", "Hello, world!")
        assert box.read_text("hello.txt") == "Hello, world!"
        box.write_bytes("dir/a.bin", bytes(range(256)))
        assert box.read_bytes("dir/a.bin") == bytes(range(256))
        assert box.exec(["cat", "/app/hello.txt"]).stdout == "Hello, world!"
        with pytest.raises(api.UnsafePath) as refused:
            box.read_bytes("hello.txt", max_size=4)
        assert refused.value.exit_code == 4
        box.exec(["ln", "-s", "/etc/passwd", "/app/link"])
        with pytest.raises(api.UnsafePath):
            box.read_text("link")
        with pytest.raises(api.InvalidInput) as bad:
            box.write_text("../escape", "x")
        assert bad.value.exit_code == 2


def test_copy_to(api, tmp_path: Path) -> None:
    src = tmp_path / "project"
    (src / "src").mkdir(parents=True)
    (src / "src" / "main.py").write_text("print('hi')\n")
    (src / "src" / "skip.log").write_text("no\n")
    (src / "src" / "out").symlink_to("/etc")
    with api.Sandbox.start(image=PYTHON_IMAGE) as box:
        done = box.copy_to("src/**", ".", exclude=["*.log"], source_root=str(src))
        assert (done.files, done.skipped_links) == (1, 1)
        assert box.exec(["python3", "src/main.py"]).stdout == "hi\n"
        assert box.exec(["ls", "src"]).stdout == "main.py\n"
        with pytest.raises(api.InvalidInput):
            box.copy_to("../*", source_root=str(src))


def test_disconnect_purge_keep_attach_cli(api, sandbox: Runner) -> None:
    box = api.Sandbox.start(image=BUSYBOX_IMAGE, network=True)
    assert box.disconnect() == ["bridge"]
    assert box.info().network is False
    box.purge()
    with pytest.raises(api.SandboxNotFound) as gone:
        box.exec(["true"])
    assert gone.value.exit_code == 3
    with api.Sandbox.start(image=BUSYBOX_IMAGE, keep=True) as kept:
        pass
    assert [row.name for row in api.list_sandboxes()] == [kept.name]
    assert api.list_sandboxes()[0].keep is True and api.list_sandboxes()[0].expires_at is None
    # Started by the CLI, used by the API, and the other way round.
    sandbox("start", "--name", "from-cli", "--image", BUSYBOX_IMAGE, check=True)
    with api.Sandbox.attach("from-cli") as same:
        same.write_text("f.txt", "api")
    assert sandbox("read", "from-cli", "f.txt", check=True).stdout == b"api"
    listed = {row.name: row.to_json() for row in api.list_sandboxes()}
    import json

    cli_rows = {row["name"]: row for row in json.loads(sandbox("ls", "--json").stdout)}
    assert listed == cli_rows
    assert api.Sandbox.attach(kept.name).exec(["true"]).exit_code == 0
    sandbox("purge", "from-cli", kept.name, check=True)


def test_errors_carry_exit_codes_and_never_exit(api) -> None:
    with pytest.raises(api.SandboxNotFound) as missing:
        api.Sandbox.attach("no-such-box")
    assert missing.value.exit_code == 3 and isinstance(missing.value, api.SandboxError)
    with pytest.raises(api.InvalidInput) as bad:
        api.Sandbox.start(image=BUSYBOX_IMAGE, ports=["8080:80"])  # ports need a network
    assert bad.value.exit_code == 2
    with pytest.raises(api.InvalidInput):
        api.Sandbox.start(image=BUSYBOX_IMAGE, ttl="forever")
    with pytest.raises(api.InvalidInput):
        api.Sandbox.start(image=BUSYBOX_IMAGE, env={"A": "x\ny"})
    with pytest.raises(api.InvalidInput):
        api.Sandbox.start(image=BUSYBOX_IMAGE, allow_hosts=["pypi.org"])
    with pytest.raises(api.ImageError) as image:
        api.Sandbox.start(image="sandbox-test/no-such-image:none")
    assert image.value.exit_code == 6
    assert api.list_sandboxes() == []  # nothing half-made


def test_messages_go_to_callback_not_stdout(api, home: Path, tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "sandbox.yaml").write_text("memory: 2g\n")
    heard: list[str] = []
    cwd = os.getcwd()
    os.chdir(project)
    try:  # the API reads sandbox.yaml as the CLI does, and says what it loosens
        with api.Sandbox.start(image=BUSYBOX_IMAGE, on_message=heard.append) as box:
            assert box.exec(["true"]).exit_code == 0
        with api.Sandbox.start(image=BUSYBOX_IMAGE, use_config=False,
                               on_message=heard.append):
            pass
    finally:
        os.chdir(cwd)
    assert heard == [f"warning: {project / 'sandbox.yaml'} loosens the defaults: memory 2g"]
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_threads_on_separate_sandboxes(api) -> None:
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with api.Sandbox.start(image=BUSYBOX_IMAGE) as box:
                box.write_text("n.txt", str(i))
                results[i] = box.exec(["cat", "/app/n.txt"]).stdout
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors and results == {i: str(i) for i in range(4)}
    assert api.list_sandboxes() == []


def test_import_is_cheap() -> None:
    code = ("import sys, sandbox_cli; from sandbox_cli import Sandbox, SandboxError; "
            "print(sorted(m for m in ('typer', 'rich', 'yaml', 'pathspec', 'mcp', 'click') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"
