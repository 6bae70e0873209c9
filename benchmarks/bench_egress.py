#!/usr/bin/env python3
"""Benchmark egress by allow-list: what the proxy costs.

    python benchmarks/bench_egress.py [--image IMAGE] [--reps N] [--json]

Cases (each pair run alternately, medians reported):
- download: 50 MB over HTTP from a server container on docker's bridge, fetched by a sandbox
  through its egress proxy (`--allow-host IP:8000`) and by one started with `--network`
  (direct). Timed inside the sandbox, so exec overhead is left out. Goal: ratio <= 1.2.
- start: `sandbox start --allow-host ...` against plain `sandbox start`. Goal: <= 150 ms extra.

Needs a Docker engine and an image with python3 (default: sandbox-test/python:bookworm).
Everything runs in a private SANDBOX_HOME; every container it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

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
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="sandbox-bench-egress-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    env.update(SANDBOX_HOME=home, XDG_CONFIG_HOME=os.path.join(home, "xdg"))
    cli = [sys.executable, "-m", "sandbox_cli"]
    server = f"bench-egress-{uuid.uuid4().hex[:8]}"

    def sandbox(*argv: str) -> str:
        return subprocess.run([*cli, *argv], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()

    results: dict[str, object] = {}
    try:
        _docker("run", "-d", "--rm", "--name", server, "--user", "65534:65534",
                "--cap-drop", "ALL", "--entrypoint", "sh", args.image, "-c",
                f"cd /tmp && head -c {SIZE} /dev/zero > big && exec python3 -m http.server 8000")
        ip = _docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", server)
        url = f"http://{ip}:8000/big"
        time.sleep(1.5)
        proxied = sandbox("start", "--image", args.image, "--allow-host", f"{ip}:8000")
        direct = sandbox("start", "--image", args.image, "--network")
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
        p, n = statistics.median(times["proxy"]), statistics.median(times["network"])
        results["download_50mb"] = {"proxy_s": round(p, 3), "network_s": round(n, 3),
                                    "ratio": round(p / n, 2), "goal": 1.2}
        sandbox("purge", "--all")
        starts: dict[str, list[float]] = {"allow_host": [], "plain": []}
        for rep in range(args.reps):
            order = [("allow_host", ["--allow-host", f"{ip}:8000"]), ("plain", [])]
            if rep % 2:
                order.reverse()
            for label, extra in order:
                began = time.perf_counter()
                sandbox("start", "--image", args.image, *extra)
                starts[label].append(time.perf_counter() - began)
                sandbox("purge", "--all")
        a, b = statistics.median(starts["allow_host"]), statistics.median(starts["plain"])
        results["start"] = {"allow_host_ms": round(a * 1000), "plain_ms": round(b * 1000),
                            "extra_ms": round((a - b) * 1000), "goal_extra_ms": 150}
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


if __name__ == "__main__":
    sys.exit(main())
