#!/usr/bin/env python3
"""Benchmark egress by allow-list: what the proxy costs.

    python benchmarks/bench_egress.py [--image IMAGE] [--reps N] [--json] [--sandbox CMD]
                                      [--only download|start]

Cases (each pair run alternately, medians reported beside each other with their ratio, every
sample and the load average before and after: on a shared machine, read a figure together with
the load it was taken at):
- download: 50 MB over HTTP from a server container on docker's bridge, fetched by a sandbox
  through its egress proxy (`--allow-host IP:8000`) and by one started with `--network`
  (direct). Timed inside the sandbox, so exec overhead is left out. Goal: ratio <= 1.2.
- start: `sandbox start --allow-host ...` against plain `sandbox start`. Goal: <= 150 ms extra.

Needs a Docker engine and an image with python3 (default: sandbox-test/python:bookworm).
Everything runs in a private SANDBOX_HOME; every container it makes is removed at the end.
`--sandbox CMD` is the sandbox command line (default: `sandbox` beside this Python, else
`python -m sandbox_cli`): take final figures from a regular (non-editable) install.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

MB = 1_000_000
SIZE = 50 * MB
DOWNLOAD = """
import sys, time, urllib.request
t = time.perf_counter()
with urllib.request.urlopen(sys.argv[1], timeout=120) as r:
    n = 0
    while True:
        chunk = r.read(1 << 20)
        if not chunk:
            break
        n += len(chunk)
print(n, time.perf_counter() - t)
"""


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default=os.environ.get("SANDBOX_IMAGE",
                                                          "sandbox-test/python:bookworm"))
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sandbox", help="sandbox command line")
    parser.add_argument("--only", choices=("download", "start"))
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="sandbox-bench-egress-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    env.update(SANDBOX_HOME=home, XDG_CONFIG_HOME=os.path.join(home, "xdg"))
    cli = _cli(args.sandbox)
    server = f"bench-egress-{uuid.uuid4().hex[:8]}"

    def sandbox(*argv: str) -> str:
        return subprocess.run([*cli, *argv], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()

    results: dict[str, object] = {"cli": shlex.join(cli), "load_before": _load()}
    try:
        _docker("run", "-d", "--rm", "--name", server, "--user", "65534:65534",
                "--cap-drop", "ALL", "--entrypoint", "sh", args.image, "-c",
                f"cd /tmp && head -c {SIZE} /dev/zero > big && exec python3 -m http.server 8000")
        ip = _docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", server)
        url = f"http://{ip}:8000/big"
        time.sleep(1.5)
        if args.only != "start":
            results["download_50mb"] = _download(sandbox, args, ip, url)
        if args.only != "download":
            results["start"] = _start(sandbox, args, ip)
        results["load_after"] = _load()
    finally:
        subprocess.run([*cli, "purge", "--all"], env=env, capture_output=True)
        subprocess.run(["docker", "rm", "-f", server], capture_output=True)
        subprocess.run(["rm", "-rf", home])
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for case, values in results.items():
            print(case, values)
    return 0


def _cli(given: str | None) -> list[str]:
    """The sandbox command: --sandbox, else `sandbox` beside this Python, else -m."""
    if given:
        return shlex.split(given)
    beside = os.path.join(os.path.dirname(sys.executable), "sandbox")
    return [beside] if os.access(beside, os.X_OK) else [sys.executable, "-m", "sandbox_cli"]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _download(sandbox: Any, args: argparse.Namespace, ip: str, url: str) -> dict[str, object]:
    """50 MB through the proxy and on --network, alternately; timed inside the sandbox."""
    proxied = sandbox("start", "--image", args.image, "--allow-host", f"{ip}:8000")
    direct = sandbox("start", "--image", args.image, "--network")
    try:
        times: dict[str, list[float]] = {"proxy": [], "network": []}
        for rep in range(args.reps + 1):
            order = [("proxy", proxied), ("network", direct)]
            if rep % 2:
                order.reverse()
            for label, name in order:
                out = sandbox("exec", name, "python3", "-c", DOWNLOAD, url).split()
                assert int(out[0]) == SIZE, out
                if rep:  # the first round warms caches
                    times[label].append(float(out[1]))
    finally:
        sandbox("purge", "--all")
    p, n = statistics.median(times["proxy"]), statistics.median(times["network"])
    return {"proxy_ms": round(p * 1000), "network_ms": round(n * 1000),
            "ratio": round(p / n, 2), "goal": 1.2,
            "pair_ratios_median": round(statistics.median(
                a / b for a, b in zip(times["proxy"], times["network"], strict=True)), 2),
            "proxy_samples_ms": [round(t * 1000) for t in times["proxy"]],
            "network_samples_ms": [round(t * 1000) for t in times["network"]]}


def _start(sandbox: Any, args: argparse.Namespace, ip: str) -> dict[str, object]:
    """`start --allow-host` against plain `start`, alternately (each removed before the
    next)."""
    starts: dict[str, list[float]] = {"allow_host": [], "plain": []}
    for rep in range(args.reps + 1):
        order = [("allow_host", ["--allow-host", f"{ip}:8000"]), ("plain", [])]
        if rep % 2:
            order.reverse()
        for label, extra in order:
            began = time.perf_counter()
            sandbox("start", "--image", args.image, *extra)
            if rep:  # the first round warms caches
                starts[label].append(time.perf_counter() - began)
            sandbox("purge", "--all")
    a, b = statistics.median(starts["allow_host"]), statistics.median(starts["plain"])
    return {"allow_host_ms": round(a * 1000), "plain_ms": round(b * 1000),
            "extra_ms": round((a - b) * 1000), "ratio": round(a / b, 2), "goal_extra_ms": 150,
            "pair_extra_median_ms": round(1000 * statistics.median(
                x - y for x, y in zip(starts["allow_host"], starts["plain"], strict=True))),
            "allow_host_samples_ms": [round(t * 1000) for t in starts["allow_host"]],
            "plain_samples_ms": [round(t * 1000) for t in starts["plain"]]}


if __name__ == "__main__":
    sys.exit(main())
