"""`sandbox mcp` driven by the official SDK's own stdio client, as an MCP client would."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from sandbox_cli.api import SandboxInfo
from tests.conftest import BUSYBOX_IMAGE, PYTHON_IMAGE

pytestmark = pytest.mark.usefixtures("docker_engine")

TOOLS = {"start", "exec", "write_file", "read_file", "copy_to", "list", "disconnect", "purge"}
Session = Callable[[ClientSession], Awaitable[None]]


def _serve(home: Path, root: Path, session: Session, *extra: str, timeout: float = 180) -> None:
    """Run `sandbox mcp --root ROOT EXTRA...` and SESSION against it, bounded in time."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sandbox_cli", "mcp", "--root", str(root), "--image", BUSYBOX_IMAGE,
              "--image", PYTHON_IMAGE, *extra],
        env={key: value for key, value in os.environ.items()
             if key.startswith(("SANDBOX_", "XDG_", "PATH", "HOME", "PYTHON"))},
        cwd=str(root))

    async def main() -> None:
        with anyio.fail_after(timeout):
            async with stdio_client(params) as (read, write), \
                    ClientSession(read, write) as client:
                await client.initialize()
                await session(client)

    anyio.run(main)


async def _call(client: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def _refused(client: ClientSession, tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return " ".join(getattr(block, "text", "") for block in result.content)


def _left(home: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "sandbox_cli", "ls", "--json"],
                         capture_output=True, timeout=60, check=True).stdout
    return json.loads(out)


def _wait_empty(home: Path, seconds: float = 30) -> list[dict[str, Any]]:
    end = time.monotonic() + seconds
    rows = _left(home)
    while rows and time.monotonic() < end:
        time.sleep(0.5)
        rows = _left(home)
    return rows


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    (path / "src").mkdir(parents=True)
    (path / "src" / "main.py").write_text("print('from the root')\n")
    (path / "src" / "escape").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.txt").write_text("secret\n")
    return path


def test_session_does_what_the_seed_shows(home: Path, root: Path) -> None:
    async def session(client: ClientSession) -> None:
        tools = await client.list_tools()
        assert {tool.name for tool in tools.tools} == TOOLS
        exec_tool = next(tool for tool in tools.tools if tool.name == "exec")
        assert exec_tool.input_schema["properties"]["command"]["type"] == "array"
        assert exec_tool.output_schema is not None
        list_tool = next(tool for tool in tools.tools if tool.name == "list")
        row_schema = next(iter(list_tool.output_schema["$defs"].values()))
        assert set(row_schema["properties"]) == set(SandboxInfo.__dataclass_fields__)

        name = (await _call(client, "start", image=PYTHON_IMAGE))["name"]
        ran = await _call(client, "exec", name=name, command=["python3", "--version"])
        assert ran["exit_code"] == 0 and ran["stdout"].startswith("Python 3")
        assert (await _call(client, "exec", name=name, command=["sh", "-c", "exit 3"])
                )["exit_code"] == 3
        assert (await _call(client, "exec", name=name, command=["cat"], stdin="in")
                )["stdout"] == "in"
        slow = await _call(client, "exec", name=name, command=["sleep", "30"], timeout=1)
        assert (slow["exit_code"], slow["timed_out"]) == (124, True)
        big = await _call(client, "exec", name=name,
                          command=["head", "-c", "1000000", "/dev/zero"])
        assert big["stdout_truncated"] and len(big["stdout"]) == 256 * 1024

        await _call(client, "write_file", name=name, path="hello.txt", content="Hello, world!")
        text = await _call(client, "read_file", name=name, path="hello.txt")
        assert (text["content"], text["base64"]) == ("Hello, world!", False)
        blob = bytes(range(256))
        await _call(client, "write_file", name=name, path="b.bin",
                    content=base64.b64encode(blob).decode(), base64=True)
        back = await _call(client, "read_file", name=name, path="b.bin")
        assert back["base64"] and base64.b64decode(back["content"]) == blob

        copied = await _call(client, "copy_to", name=name, pattern="src/**")
        assert (copied["files"], copied["skipped_links"]) == (1, 1)
        assert (await _call(client, "exec", name=name, command=["python3", "src/main.py"])
                )["stdout"] == "from the root\n"

        listed = (await _call(client, "list"))["sandboxes"]
        assert [row["name"] for row in listed] == [name]
        assert listed == _left(home)  # every field of `ls --json`, as the CLI prints it
        assert await _call(client, "disconnect", name=name) == {"name": name,
                                                                "disconnected": []}
        assert await _call(client, "purge", name=name) == {"removed": [name]}
        assert (await _call(client, "list"))["sandboxes"] == []

    _serve(home, root, session)
    assert _left(home) == []


def test_refusals(home: Path, root: Path, tmp_path: Path) -> None:
    async def session(client: ClientSession) -> None:
        assert "not allowed by this server" in await _refused(client, "start",
                                                              image="alpine:latest")
        assert "no network" in await _refused(client, "start", network=True)
        assert "longer than this server allows" in await _refused(client, "start", ttl="2h")
        name = (await _call(client, "start"))["name"]
        # a refused path (exit code 2) and a refused file (a link: exit code 4)
        assert "exit code 2" in await _refused(client, "write_file", name=name,
                                               path="../x", content="x")
        await _call(client, "exec", name=name, command=["ln", "-s", "/etc/passwd", "/app/l"])
        assert "exit code 4" in await _refused(client, "read_file", name=name, path="l")
        # the root: no climbing out, no link followed out of it, no absolute pattern
        assert "'..' is not allowed" in await _refused(client, "copy_to", name=name,
                                                       pattern="../secret/*")
        assert "must be relative" in await _refused(
            client, "copy_to", name=name, pattern=str(tmp_path / "secret" / "*"))
        assert "no files match" in await _refused(client, "copy_to", name=name,
                                                  pattern="src/escape/**")
        copied = await _call(client, "copy_to", name=name, pattern="**")
        assert (copied["files"], copied["skipped_links"]) == (1, 1)  # the link: skipped
        ran = await _call(client, "exec", name=name, command=["find", "/app/src"])
        assert "key.txt" not in ran["stdout"] and "escape" not in ran["stdout"]
        # only this session's sandboxes, and at most --max-sandboxes of them
        assert "only sandboxes this server started" in await _refused(
            client, "exec", name="someone-else", command=["true"])
        await _call(client, "start")
        assert "at most 2 sandboxes" in await _refused(client, "start")

    _serve(home, root, session, "--max-sandboxes", "2")
    assert _wait_empty(home) == []  # both purged when the client went away


def test_keep_survives_the_session_but_expires(home: Path, root: Path) -> None:
    kept: list[str] = []

    async def session(client: ClientSession) -> None:
        kept.append((await _call(client, "start", keep=True, ttl="10m"))["name"])
        await _call(client, "start")

    _serve(home, root, session)
    rows = _left(home)
    end = time.monotonic() + 30
    while len(rows) > 1 and time.monotonic() < end:
        time.sleep(0.5)
        rows = _left(home)
    assert [row["name"] for row in rows] == kept
    assert rows[0]["expires_at"]  # a TTL always: a crash strands nothing past it
    subprocess.run([sys.executable, "-m", "sandbox_cli", "purge", *kept], timeout=120,
                   capture_output=True)


def test_without_the_extra(home: Path, tmp_path: Path) -> None:
    fake = tmp_path / "no-mcp" / "mcp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    proc = subprocess.run([sys.executable, "-m", "sandbox_cli", "mcp"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(fake.parent)})
    assert proc.returncode == 2
    assert proc.stderr == ("sandbox: error: sandbox mcp needs the MCP SDK: "
                           "pip install 'sandbox-cli[mcp]'\n")
    assert proc.stdout == ""


def test_allow_hosts_up_to_the_servers_own(home: Path, root: Path) -> None:
    async def session(client: ClientSession) -> None:
        assert "not allowed by this server" in await _refused(
            client, "start", image=PYTHON_IMAGE, allow_hosts=["other.example.test"])
        assert "not allowed by this server" in await _refused(
            client, "start", image=PYTHON_IMAGE, allow_hosts=["*.example.test"])
        started = await _call(client, "start", image=PYTHON_IMAGE,
                              allow_hosts=["pypi.example.test"])
        assert started["allow_hosts"] == ["pypi.example.test"]
        assert started["network"] is False
        env = await _call(client, "exec", name=started["name"],
                          command=["sh", "-c", "echo $HTTPS_PROXY"])
        assert env["stdout"].startswith("http://")

    _serve(home, root, session, "--allow-host", "pypi.example.test")
    assert _wait_empty(home) == []
