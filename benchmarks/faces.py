#!/usr/bin/env python3
"""Latency of one `exec` through each face: the CLI (`sandbox exec`, a process per call), the
Python API (Sandbox.exec in this process) and the MCP server (an `exec` tool call over stdio,
driven by the SDK's client), beside plain `docker exec`; and the import time of sandbox_cli.

    python benchmarks/faces.py [--runs N] [--image IMAGE]

Needs a Docker engine and the `mcp` extra. Runs in a private SANDBOX_HOME; removes what it made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

DEVNULL = subprocess.DEVNULL


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def _import_ms(runs: int) -> float:
    code = "import sandbox_cli"
    values = []
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], check=True,
                             capture_output=True, text=True).stderr
        line = next(ln for ln in err.splitlines() if ln.rstrip().endswith("| sandbox_cli"))
        values.append(int(line.split("|")[1]) / 1000)
    return statistics.median(values)


def _mcp_ms(name: str, runs: int) -> float:
    import anyio
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "sandbox_cli", "mcp"],
                                   env=dict(os.environ))
    times: list[float] = []

    async def main() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            box = (await client.call_tool("start", {})).structured_content["name"]
            for i in range(runs + 1):
                began = time.perf_counter()
                result = await client.call_tool("exec", {"name": box, "command": ["true"]})
                assert not result.is_error
                if i:
                    times.append((time.perf_counter() - began) * 1000)

    anyio.run(main)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--image", default=os.environ.get("SANDBOX_IMAGE", "python:alpine"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["SANDBOX_HOME"] = home
        os.environ["SANDBOX_IMAGE"] = args.image
        from sandbox_cli import Sandbox

        with Sandbox.start(image=args.image) as box:
            cid = box.info().container_id
            rows = {
                "docker exec": _median_ms(lambda: subprocess.run(
                    ["docker", "exec", cid, "true"], check=True), args.runs),
                "sandbox exec (CLI)": _median_ms(lambda: subprocess.run(
                    [sys.executable, "-m", "sandbox_cli", "exec", box.name, "true"],
                    check=True), args.runs),
                "Sandbox.exec (API)": _median_ms(lambda: box.exec(["true"]), args.runs),
                "exec tool (MCP)": _mcp_ms(box.name, args.runs),
            }
        print(f"import sandbox_cli: {_import_ms(args.runs):.1f} ms (-X importtime, median)")
        for label, value in rows.items():
            print(f"{label:<22} {value:7.1f} ms (median of {args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
