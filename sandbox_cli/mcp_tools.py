"""The tools of `sandbox mcp` (mcp_server.py), with their JSON schemas and structured
results. Imported only when the server runs: it loads the `mcp` SDK and pydantic, which
read these annotations at run time (hence the module-level types)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

from . import api
from .errors import InvalidInput, SandboxError
from .mcp_server import (
    DEFAULT_TIMEOUT,
    MAX_OUTPUT,
    MAX_TIMEOUT,
    READ_MAX,
    WRITE_MAX,
    Session,
    _log,
)


class StartResult(TypedDict):
    name: str
    image: str
    network: bool
    ports: list[str]
    expires_at: str | None
    keep: bool
    allow_hosts: list[str]

class ExecOutput(TypedDict):
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    oom_killed: bool
    duration_ms: int
    not_started: str

class WriteResult(TypedDict):
    path: str
    bytes: int

class ReadResult(TypedDict):
    path: str
    content: str
    base64: bool
    bytes: int

class CopyOutput(TypedDict):
    files: int
    bytes: int
    destination: str
    skipped_links: int

class ListResult(TypedDict):
    sandboxes: list[api.SandboxInfo]  # the `ls --json` row, one definition for both faces

class DisconnectResult(TypedDict):
    name: str
    disconnected: list[str]

class PurgeResult(TypedDict):
    removed: list[str]


Name = Annotated[str, Field(description="Sandbox name, as start returned it.")]
Path = Annotated[str, Field(description="File path relative to /app.")]


def _fail(exc: SandboxError) -> Exception:
    """A SandboxError as the SDK's ToolError: an error result the model reads."""
    return ToolError(f"{exc.message} (exit code {exc.exit_code})")


def build_server(session: Session) -> MCPServer[None]:
    """The MCPServer with the eight tools, bound to SESSION."""
    lim = session.limits
    server = MCPServer(
        "sandbox", log_level="WARNING", instructions=(
            "Run untrusted code in locked-down Docker sandboxes: start one, exec commands in "
            "it (no shell unless you run one, e.g. ['sh', '-c', '...']), write and read files "
            "below /app, copy host files in from the server's root, purge it when done. "
            f"Images: {', '.join(lim.images)}. Network: {'on request' if lim.network else 'none'}."
            f" At most {lim.max_sandboxes} sandboxes at once."))

    @server.tool(description="Start a locked-down sandbox; returns its name.")
    def start(
        image: Annotated[str | None, Field(description="Image; default the server's first "
                                                       "--image.")] = None,
        network: Annotated[bool, Field(description="Give it a network (only if the server "
                                                   "allows).")] = False,
        ports: Annotated[list[str] | None, Field(description="Publish HOST:CONTAINER on "
                                                             "loopback (needs network).")] = None,
        ttl: Annotated[str | None, Field(description="Lifetime, e.g. 10m; at most the "
                                                     "server's.")] = None,
        keep: Annotated[bool, Field(description="Keep it when this session ends (it still "
                                                "expires at its TTL).")] = False,
        allow_hosts: Annotated[list[str] | None, Field(description="Hosts (HOST[:PORT]) it "
                                                       "may reach through a proxy, and "
                                                       "nothing else; at most the server's "
                                                       "--allow-host.")] = None,
    ) -> StartResult:
        try:
            box = session.start(image, network, ports or [], ttl, keep, allow_hosts or [])
            row = box.info()
        except SandboxError as exc:
            raise _fail(exc) from None
        return StartResult(name=box.name, image=row.image, network=row.network,
                           ports=row.ports, expires_at=row.expires_at, keep=keep,
                           allow_hosts=row.allow_hosts)

    @server.tool(name="exec", description="Run a command (argv list, no shell) in a sandbox "
                 "and wait; output is capped, a timeout stops it (exit code 124).")
    def exec_(
        name: Name,
        command: Annotated[list[str], Field(description="Command and arguments.",
                                            min_length=1)],
        stdin: Annotated[str | None, Field(description="Text given on stdin.")] = None,
        timeout: Annotated[float, Field(description="Seconds (default 60, at most 600).",
                                        gt=0, le=MAX_TIMEOUT)] = DEFAULT_TIMEOUT,
        workdir: Annotated[str | None, Field(description="Directory in the container "
                                                         "(default /app).")] = None,
        env: Annotated[dict[str, str] | None, Field(description="Extra environment.")] = None,
    ) -> ExecOutput:
        try:
            result = session.get(name).exec(command, stdin=stdin, timeout=timeout, env=env,
                                            workdir=workdir, max_output=MAX_OUTPUT)
        except SandboxError as exc:
            raise _fail(exc) from None
        return ExecOutput(exit_code=result.exit_code, stdout=result.stdout,
                          stderr=result.stderr, timed_out=result.timed_out,
                          stdout_truncated=result.stdout_truncated,
                          stderr_truncated=result.stderr_truncated,
                          oom_killed=result.oom_killed, duration_ms=result.duration_ms,
                          not_started=result.not_started)

    @server.tool(description="Write a file below /app (text, or base64 with base64=true).")
    def write_file(
        name: Name, path: Path,
        content: Annotated[str, Field(description="The file's content.")],
        base64: Annotated[bool, Field(description="content is base64 (binary files).")]
        = False,
    ) -> WriteResult:
        try:
            data = _decode(content, base64)
            written = session.get(name).write_bytes(path, data)
        except SandboxError as exc:
            raise _fail(exc) from None
        return WriteResult(path=path, bytes=written)

    @server.tool(description="Read a file below /app: text, or base64 (base64=true in the "
                 "result) when it is not UTF-8 or binary=true was asked.")
    def read_file(
        name: Name, path: Path,
        binary: Annotated[bool, Field(description="Always return base64.")] = False,
        max_bytes: Annotated[int, Field(description="Refuse a larger file (at most 8 MiB).",
                                        gt=0, le=READ_MAX)] = READ_MAX,
    ) -> ReadResult:
        try:
            data = session.get(name).read_bytes(path, max_size=max_bytes)
        except SandboxError as exc:
            raise _fail(exc) from None
        if not binary:
            try:
                return ReadResult(path=path, content=data.decode("utf-8"), base64=False,
                                  bytes=len(data))
            except UnicodeDecodeError:
                pass
        return ReadResult(path=path, content=base64.b64encode(data).decode("ascii"),
                          base64=True, bytes=len(data))

    @server.tool(description="Copy host files matching a gitignore-style pattern (relative "
                 "to the server's root, .gitignore honoured, links skipped) into the sandbox.")
    def copy_to(
        name: Name,
        pattern: Annotated[str, Field(description="e.g. 'src/**'")],
        dest: Annotated[str, Field(description="Folder relative to /app.")] = ".",
        exclude: Annotated[list[str] | None, Field(description="Patterns to leave out.")]
        = None,
    ) -> CopyOutput:
        try:
            done = session.get(name).copy_to(pattern, dest, exclude=exclude or [],
                                             source_root=lim.root)
        except SandboxError as exc:
            raise _fail(exc) from None
        return CopyOutput(files=done.files, bytes=done.bytes, destination=done.destination,
                          skipped_links=done.skipped_links)

    @server.tool(name="list", description="The sandboxes of this session, as `sandbox ls "
                 "--json` lists them.")
    def list_() -> ListResult:
        mine = set(session.names())
        try:
            rows = api.list_sandboxes(home=session.home, on_message=_log)
        except SandboxError as exc:
            raise _fail(exc) from None
        return ListResult(sandboxes=[row for row in rows if row.name in mine])

    @server.tool(description="Detach a sandbox from every network.")
    def disconnect(name: Name) -> DisconnectResult:
        try:
            left = session.get(name).disconnect()
        except SandboxError as exc:
            raise _fail(exc) from None
        return DisconnectResult(name=name, disconnected=left)

    @server.tool(description="Remove a sandbox: its container and files.")
    def purge(name: Name) -> PurgeResult:
        try:
            session.get(name).purge()
        except SandboxError as exc:
            raise _fail(exc) from None
        session.forget(name)
        return PurgeResult(removed=[name])

    return server


def _decode(content: str, is_base64: bool) -> bytes:
    """write_file's content as bytes, within WRITE_MAX."""
    if is_base64:
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("content is not valid base64") from None
    else:
        data = content.encode("utf-8", errors="surrogatepass")
    if len(data) > WRITE_MAX:
        raise InvalidInput(f"content is over {WRITE_MAX >> 20} MiB: copy_to large files")
    return data


