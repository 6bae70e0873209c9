#!/usr/bin/env python3
"""The start + exec + purge cycle of `sandbox` on each engine, against the raw docker (or
podman) commands doing the same, printed as a table.

    python benchmarks/bench_engines.py [--runs N] [--image IMAGE] [--sandbox CMD]
                                       [--engines main,remote,gvisor,podman,ssh,ssh-mux] [--json]

Engines: those of scripts/setup-engines.sh (`env ENGINE` gives each one's environment: main,
remote, gvisor, podman) and, when benchmarks/ssh-engine.sh runs, `ssh` (DOCKER_HOST=ssh://,
one ssh connection per docker call) and `ssh-mux` (the same through ControlMaster and
ControlPersist). An engine that is not up is reported and left out.

The raw side does what sandbox does on that engine, with the same isolation flags: for the
workspace sandbox picked there (bind: a host folder; volume: `volume create` first and
`volume rm` after), `run -d ... sleep`, `exec --user U C true`, `rm -f`. Sandbox's own extra
steps (the state file, the volume root handed to the sandbox user, the TTL) are its cost.
Each run's cycle is timed step by step, the two sides interleaved (the order flipping each
run); the table shows medians. Everything runs in a private SANDBOX_HOME per engine and is
removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench import aligned, find_sandbox  # noqa: E402

ENGINES = ("main", "remote", "gvisor", "podman", "ssh", "ssh-mux")
STEPS = ("start", "exec", "purge")
DEVNULL = subprocess.DEVNULL
# What sandbox passes for a sleeping sandbox (sandbox_cli/docker.py), minus its labels.
RAW_FLAGS = ["--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
             "--pids-limit", "256", "--memory", "1g", "--memory-swap", "1g", "--cpus", "1",
             "--init", "--no-healthcheck", "--log-driver", "none", "--env", "HOME=/tmp",
             "--workdir", "/app"]
USER = "65534:65534"


class BenchError(Exception):
    """A command the benchmark needs failed."""


def log(message: str) -> None:
    print(f"bench-engines: {message}", file=sys.stderr, flush=True)


def engine_env(engine: str) -> dict[str, str] | None:
    """ENGINE's environment (the exports of setup-engines.sh or ssh-engine.sh applied to
    ours), or None when it is not up."""
    if engine.startswith("ssh"):
        script = os.path.join(HERE, "ssh-engine.sh")
        args = ["env", "mux"] if engine == "ssh-mux" else ["env"]
    else:
        script = os.path.join(REPO, "scripts", "setup-engines.sh")
        args = ["env", engine]
    shell = (f'out=$({shlex.join([script, *args])}) || exit 3; eval "$out"; '
             'python3 -c "import json, os; print(json.dumps(dict(os.environ)))"')
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    env = json.loads(proc.stdout)
    binary = env.get("SANDBOX_DOCKER") or "docker"
    probe = subprocess.run([binary, "version", "--format", "{{.Server.Version}}"], env=env,
                           stdin=DEVNULL, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0 and not env.get("SANDBOX_DOCKER"):
        return None
    return dict(env)


@dataclass
class Side:
    """One side's samples, per step."""

    steps: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})

    def median(self, step: str) -> float:
        return statistics.median(self.steps[step])

    def cycle(self) -> float:
        totals = [sum(self.steps[s][i] for s in STEPS) for i in range(len(self.steps["start"]))]
        return statistics.median(totals)


@dataclass
class Row:
    engine: str
    storage: str
    runtime: str
    sandbox: Side
    raw: Side
    load: tuple[float, float]

    def to_json(self) -> dict[str, object]:
        return {"engine": self.engine, "storage": self.storage, "runtime": self.runtime,
                "sandbox": self.sandbox.steps, "raw": self.raw.steps,
                "sandbox_cycle": self.sandbox.cycle(), "raw_cycle": self.raw.cycle(),
                "load_average_1min": {"before": self.load[0], "after": self.load[1]}}


class EngineBench:
    """The cycle on one engine; owns its private home and whatever it started there."""

    def __init__(self, engine: str, env: dict[str, str], sandbox: list[str], image: str,
                 tmp: str) -> None:
        self.engine, self.sbx, self.image = engine, sandbox, image
        self.tag = secrets.token_hex(3)
        self.home = os.path.join(tmp, engine, "home")
        self.mount = os.path.join(tmp, engine, "mount")
        os.makedirs(self.mount, exist_ok=True)
        os.chmod(self.mount, 0o777)
        env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(SANDBOX_HOME=self.home, SANDBOX_IMAGE=image,
                   XDG_CONFIG_HOME=os.path.join(tmp, engine, "config"),
                   PYTHONPYCACHEPREFIX=os.path.join(tmp, "pycache"))
        self.env = env
        self.binary = env.get("SANDBOX_DOCKER") or "docker"
        self.runtime = env.get("SANDBOX_RUNTIME", "")
        self.raw_names: list[str] = []
        self.raw_volumes: list[str] = []
        self.storage = ""

    def timed(self, argv: Sequence[str]) -> float:
        began = time.perf_counter()
        proc = subprocess.run(list(argv), env=self.env, cwd=self.home_parent(), stdin=DEVNULL,
                              stdout=DEVNULL, stderr=subprocess.PIPE, timeout=300)
        took = time.perf_counter() - began
        if proc.returncode != 0:
            raise BenchError(f"[{self.engine}] {shlex.join(argv)} failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace').strip()[-400:]}")
        return took

    def home_parent(self) -> str:
        return os.path.dirname(self.home)

    def sandbox_cycle(self, side: Side, n: int) -> None:
        name = f"be-{self.tag}-s{n}"
        side.steps["start"].append(self.timed([*self.sbx, "start", "--name", name]))
        if not self.storage:
            out = subprocess.run([*self.sbx, "ls", "--json"], env=self.env, capture_output=True,
                                 text=True, timeout=120)
            rows = {r["name"]: r for r in json.loads(out.stdout or "[]")}
            self.storage = rows.get(name, {}).get("storage", "?")
        side.steps["exec"].append(self.timed([*self.sbx, "exec", name, "true"]))
        side.steps["purge"].append(self.timed([*self.sbx, "purge", name]))

    def raw_cycle(self, side: Side, n: int) -> None:
        name = f"be-{self.tag}-r{n}"
        self.raw_names.append(name)
        start = 0.0
        if self.storage == "volume":
            self.raw_volumes.append(name)
            start += self.timed([self.binary, "volume", "create", name])
            mount = f"type=volume,source={name},target=/app"
        else:
            mount = f"type=bind,source={self.mount},target=/app"
        argv = [self.binary, "run", "-d", "--rm", "--pull", "never", "--name", name,
                *RAW_FLAGS, "--user", "0:0", "--mount", mount,
                *(["--runtime", self.runtime] if self.runtime else []),
                "--entrypoint", "sleep", self.image, "3600"]
        side.steps["start"].append(start + self.timed(argv))
        side.steps["exec"].append(self.timed([self.binary, "exec", "--user", USER, name,
                                              "true"]))
        purge = self.timed([self.binary, "rm", "-f", name])
        if self.storage == "volume":
            purge += self.timed([self.binary, "volume", "rm", name])
            self.raw_volumes.remove(name)
        side.steps["purge"].append(purge)
        self.raw_names.remove(name)

    def run(self, runs: int) -> Row:
        load_before = os.getloadavg()[0]
        sandbox, raw = Side(), Side()
        log(f"{self.engine}: warm-up, then {runs} interleaved cycles")
        self.sandbox_cycle(Side(), -1)  # warm-up, not counted; learns the storage
        self.raw_cycle(Side(), -1)
        for i in range(runs):
            order = [self.sandbox_cycle, self.raw_cycle]
            if i % 2:
                order.reverse()
            for fn in order:
                fn(sandbox if fn == self.sandbox_cycle else raw, i)
        return Row(self.engine, self.storage, self.runtime or "runc", sandbox, raw,
                   (load_before, os.getloadavg()[0]))

    def cleanup(self) -> None:
        if os.path.isdir(self.home):
            subprocess.run([*self.sbx, "purge", "--all"], env=self.env, stdin=DEVNULL,
                           stdout=DEVNULL, stderr=DEVNULL, timeout=300)
        for name in self.raw_names:
            subprocess.run([self.binary, "rm", "-f", name], env=self.env, stdin=DEVNULL,
                           stdout=DEVNULL, stderr=DEVNULL, timeout=120)
        for name in self.raw_volumes:
            subprocess.run([self.binary, "volume", "rm", "-f", name], env=self.env,
                           stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL, timeout=120)


def ms(value: float) -> str:
    return f"{value * 1000:.0f}"


def table(rows: Sequence[Row]) -> str:
    head = ("engine", "storage", "sandbox start/exec/purge ms", "raw start/exec/rm ms",
            "cycle sandbox", "cycle raw", "ratio", "load")
    lines = [head]
    for r in rows:
        s, d = r.sandbox, r.raw
        lines.append((
            r.engine + (f" ({r.runtime})" if r.runtime != "runc" else ""), r.storage,
            " / ".join(ms(s.median(x)) for x in STEPS),
            " / ".join(ms(d.median(x)) for x in STEPS),
            f"{ms(s.cycle())} ms", f"{ms(d.cycle())} ms", f"{s.cycle() / d.cycle():.2f}x",
            f"{r.load[0]:.1f}-{r.load[1]:.1f}"))
    return aligned(lines, left=2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="cycles per side [5]")
    parser.add_argument("--image", default="sandbox-test/busybox:latest",
                        help="image with sleep and true [sandbox-test/busybox:latest]")
    parser.add_argument("--sandbox", help="sandbox command line [as bench.py]")
    parser.add_argument("--engines", type=lambda v: v.split(","), default=list(ENGINES),
                        metavar="E,...", help=f"of {','.join(ENGINES)} [all that are up]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine {', '.join(unknown)}")

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sandbox = find_sandbox(args.sandbox)
    rows: list[Row] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-engines-") as tmp:
        for engine in args.engines:
            env = engine_env(engine)
            if env is None:
                skipped.append(engine)
                log(f"{engine}: not up, left out")
                continue
            bench = EngineBench(engine, env, sandbox, args.image, tmp)
            try:
                rows.append(bench.run(args.runs))
            except KeyboardInterrupt:
                log("interrupted; cleaning up")
                return 130
            except (BenchError, subprocess.TimeoutExpired) as exc:
                log(f"error: {exc}")
                return 1
            finally:
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
                bench.cleanup()
                signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps({"sandbox_command": " ".join(sandbox), "image": args.image,
                          "runs": args.runs, "skipped": skipped,
                          "rows": [r.to_json() for r in rows]}, indent=2))
    else:
        print(f"sandbox: {' '.join(sandbox)}; image {args.image}; {args.runs} cycles a side, "
              f"medians; {os.cpu_count()} cores; load = 1-min load average before-after")
        print(table(rows))
        if skipped:
            print(f"  * not up, left out: {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
