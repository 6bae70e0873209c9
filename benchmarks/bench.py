#!/usr/bin/env python3
"""Benchmark `sandbox` against the raw docker commands it wraps.

Each case runs the sandbox command and its docker counterpart alternately (interleaved, the order
flipping every repetition), times each as a whole process (subprocess + perf_counter) and reports
the medians and the ratio sandbox/docker against the project's goals.

    python benchmarks/bench.py [--quick] [--image IMAGE] [--json] [--sandbox CMD] [--only CASES]

Needs a Docker engine and an image with sh, coreutils and python3 (default: $SANDBOX_IMAGE, else
python:alpine). Everything runs in a private SANDBOX_HOME under a temp dir; every sandbox,
container and temp file it creates is removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DEVNULL = subprocess.DEVNULL
MB = 1_000_000
STREAM_BYTES = 300 * MB
MEMORY_STREAM_BYTES = 1000 * MB
COPY_FILES = 2000
COPY_BYTES = 50 * MB
PARALLEL_EXECS = 16
PARALLEL_SANDBOXES = 8
DIFF_FILES = 10000
DIFF_CHANGED = 10
VOLUME_READ_BYTES = 100 * MB
CASES = ("exec", "read", "write", "stream", "copy", "copy-from", "diff", "run", "start",
         "parallel", "memory", "volume")
PY_ONE_LINER = "import sys; print(sum(range(1000)), sys.version_info[0])"

# The flags `sandbox start` gives docker (see sandbox_cli/docker.py run_argv), minus its labels:
# the docker side of `start` and of `run (same flags)` asks for the same isolation.
LOCKED_FLAGS = [
    "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
    "--pids-limit", "256", "--memory", "1g", "--memory-swap", "1g", "--cpus", "1", "--init",
    "--log-driver", "json-file", "--log-opt", "max-size=1m", "--log-opt", "max-file=1",
    "--env", "HOME=/tmp",
]

# Child that measures a command's peak memory: VmHWM of the command's own process, sampled until
# it exits (it excludes the docker client it starts), and RUSAGE_CHILDREN for the whole tree.
MEMORY_HELPER = r"""
import json, resource, subprocess, sys, tempfile, time
errors = tempfile.TemporaryFile()
proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=errors)
began = time.perf_counter()
peak = 0
while proc.poll() is None:
    try:
        with open(f"/proc/{proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
    except (OSError, ValueError):
        pass
    time.sleep(0.005)
elapsed = time.perf_counter() - began
errors.seek(0)
err = errors.read().decode(errors="replace")
tree = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": proc.returncode, "self_kb": peak, "tree_kb": tree,
                  "seconds": elapsed, "stderr": err[-500:]}))
"""


class BenchError(Exception):
    """A command the benchmark needs failed."""


@dataclass
class Result:
    """One row of the table."""

    case: str
    unit: str  # "s" (wall seconds) or "MB"
    sandbox: list[float]
    docker: list[float]
    goal: float | None = None  # max ratio, or max MB when unit is "MB"
    note: str = ""
    absolute: bool = False  # GOAL is in seconds of the sandbox side (no docker counterpart)

    @property
    def sandbox_median(self) -> float:
        return statistics.median(self.sandbox)

    @property
    def docker_median(self) -> float:
        return statistics.median(self.docker)

    @property
    def ratio(self) -> float:
        return self.sandbox_median / self.docker_median if self.docker_median else float("inf")

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        value = self.sandbox_median if self.unit == "MB" or self.absolute else self.ratio
        return value <= self.goal

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "unit": self.unit, "sandbox_median": self.sandbox_median,
                "docker_median": self.docker_median, "ratio": self.ratio, "goal": self.goal,
                "goal_kind": "max MB" if self.unit == "MB" else "max ratio", "met": self.met,
                "sandbox_samples": self.sandbox, "docker_samples": self.docker,
                "note": self.note}


@dataclass
class Reps:
    """Repetitions per kind of case."""

    fast: int
    stream: int
    copy: int
    container: int
    parallel: int
    memory: int


FULL = Reps(fast=15, stream=7, copy=5, container=7, parallel=7, memory=3)
QUICK = Reps(fast=5, stream=2, copy=2, container=3, parallel=3, memory=1)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def find_sandbox(explicit: str | None) -> list[str]:
    """The sandbox command: --sandbox, else next to this Python, else on PATH, else -m."""
    if explicit:
        return shlex.split(explicit)
    beside = os.path.join(os.path.dirname(sys.executable), "sandbox")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("sandbox")
    if found:
        return [found]
    return [sys.executable, "-m", "sandbox_cli"]


def sandbox_python(cmd: Sequence[str]) -> str:
    """The Python version the sandbox command runs on (its script's shebang, if any)."""
    interpreter = cmd[0]
    try:
        with open(cmd[0], "rb") as fh:
            first = fh.readline().decode(errors="replace")
        if first.startswith("#!"):
            interpreter = shlex.split(first[2:].strip())[0]
    except OSError:
        pass
    try:
        probe = "import platform; print(platform.python_version())"
        out = subprocess.run([interpreter, "-c", probe], capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_info(sandbox_cmd: Sequence[str]) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    server = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True)
    if server.returncode != 0:
        raise BenchError(f"docker is not usable: {server.stderr.strip()}")
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "docker_server": server.stdout.strip(),
            "python": sandbox_python(sandbox_cmd), "bench_python": platform.python_version(),
            "sandbox_command": " ".join(sandbox_cmd)}


class Bench:
    """Owns the temp dir, the sandbox home and everything started; cleans all of it up."""

    def __init__(self, image: str, sandbox_cmd: list[str], reps: Reps) -> None:
        self.image = image
        self.sbx = sandbox_cmd
        self.reps = reps
        self.tag = secrets.token_hex(3)
        self.tmp = tempfile.mkdtemp(prefix="sandbox-bench-")
        self.home = os.path.join(self.tmp, "home")
        self.containers: list[str] = []  # raw docker containers we started
        self.notes: list[str] = []
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SANDBOX_") and not k.startswith("_SANDBOX")}
        # No user or project config file may change the defaults being measured.
        env.update(SANDBOX_HOME=self.home, SANDBOX_IMAGE=image,
                   XDG_CONFIG_HOME=os.path.join(self.tmp, "config"))
        if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
            # Otherwise every call recompiles sandbox_cli from source, which no install does.
            env["PYTHONPYCACHEPREFIX"] = os.path.join(self.tmp, "pycache")
            self.notes.append("PYTHONDONTWRITEBYTECODE was set: dropped for the sandbox "
                              "commands (bytecode cached under the temp dir)")
        self.env = env
        self.main = self.name("main")

    # --- helpers ------------------------------------------------------------------------------

    def name(self, what: str) -> str:
        return f"bench-{self.tag}-{what}"

    def volume(self, name: str) -> str:
        return os.path.join(self.home, "volumes", name)

    def run(self, argv: Sequence[str], *, cwd: str | None = None,
            input_text: str | None = None) -> str:
        """Run a setup or cleanup command (not timed); its stdout, or BenchError."""
        proc = subprocess.run(list(argv), env=self.env, cwd=cwd or self.tmp, capture_output=True,
                              text=True,
                              input=input_text, stdin=None if input_text is not None else DEVNULL)
        if proc.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                             f"{proc.stderr.strip()[-500:]}")
        return proc.stdout

    def timed(self, argv: Sequence[str], *, cwd: str | None = None,
              stdin_path: str | None = None) -> float:
        """Wall time of ARGV as a whole process (stdin: /dev/null or the file STDIN_PATH),
        output discarded; fails on a non-zero exit."""
        stdin = open(stdin_path, "rb") if stdin_path else None  # noqa: SIM115
        try:
            began = time.perf_counter()
            proc = subprocess.run(list(argv), env=self.env, cwd=cwd or self.tmp,
                                  stdin=stdin or DEVNULL, stdout=DEVNULL,
                                  stderr=subprocess.PIPE)
        finally:
            if stdin:
                stdin.close()
        elapsed = time.perf_counter() - began
        if proc.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
        return elapsed

    def timed_stream(self, argv: Sequence[str], expect: int) -> float:
        """Wall time of ARGV with its stdout read to the end through a pipe (bytes checked)."""
        buf = bytearray(1 << 20)
        with tempfile.TemporaryFile() as err:
            began = time.perf_counter()
            proc = subprocess.Popen(list(argv), env=self.env, cwd=self.tmp, stdin=DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, bufsize=0)
            assert proc.stdout is not None
            got = 0
            while True:
                n = proc.stdout.readinto(buf)  # type: ignore[attr-defined]
                if not n:
                    break
                got += n
            proc.wait()
            elapsed = time.perf_counter() - began
            proc.stdout.close()
            if proc.returncode != 0 or got != expect:
                err.seek(0)
                raise BenchError(f"{shlex.join(argv)}: exit {proc.returncode}, {got} bytes of "
                                 f"{expect}: {err.read().decode(errors='replace')[-500:]}")
        return elapsed

    def timed_parallel(self, argvs: Sequence[Sequence[str]]) -> float:
        """Wall time from starting all of ARGVS at once until the last one has exited."""
        began = time.perf_counter()
        procs = [subprocess.Popen(list(a), env=self.env, cwd=self.tmp, stdin=DEVNULL,
                                  stdout=DEVNULL, stderr=DEVNULL) for a in argvs]
        codes = [p.wait() for p in procs]
        elapsed = time.perf_counter() - began
        if any(codes):
            raise BenchError(f"parallel execs failed with exit codes {codes}")
        return elapsed

    def compare(self, case: str, reps: int, sandbox: Callable[[int], float],
                docker: Callable[[int], float], goal: float | None, note: str = "") -> Result:
        """One warm-up each, then REPS interleaved pairs, the order flipping each time."""
        log(f"{case}: {reps} interleaved pairs")
        sandbox(-1)
        docker(-1)
        result = Result(case, "s", [], [], goal, note)
        for i in range(reps):
            sides = [(result.sandbox, sandbox), (result.docker, docker)]
            if i % 2:
                sides.reverse()
            for samples, fn in sides:
                samples.append(fn(i))
        return result

    def start_sandbox(self, name: str) -> None:
        self.run([*self.sbx, "start", "--name", name, "--image", self.image])

    def docker_rm(self, name: str) -> None:
        subprocess.run(["docker", "rm", "-f", name], stdin=DEVNULL, stdout=DEVNULL,
                       stderr=DEVNULL)
        if name in self.containers:
            self.containers.remove(name)

    def cleanup(self) -> None:
        """Remove every sandbox of the private home, every container and the temp dir."""
        # A second Ctrl-C (or SIGTERM) must not cut the cleanup short.
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if os.path.isdir(self.home):
                subprocess.run([*self.sbx, "purge", "--all"], env=self.env, stdin=DEVNULL,
                               stdout=DEVNULL, stderr=DEVNULL)
            for name in list(self.containers):
                self.docker_rm(name)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if os.path.exists(self.tmp):
                log(f"could not remove {self.tmp} completely")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # --- cases --------------------------------------------------------------------------------

    def check(self) -> None:
        probe = subprocess.run(["docker", "image", "inspect", self.image], stdin=DEVNULL,
                               stdout=DEVNULL, stderr=DEVNULL)
        if probe.returncode != 0:
            raise BenchError(f"image {self.image!r} is not present locally (docker pull it, or "
                             "pass --image)")
        self.run([*self.sbx, "--version"])
        self.start_sandbox(self.main)
        self.run([*self.docker_exec(self.main), "python3", "-c", "pass"])  # python is needed

    def docker_exec(self, box: str) -> list[str]:
        """`docker exec` as the sandbox's own user (its main process runs as root), as
        `sandbox exec` does: the fair counterpart."""
        user = subprocess.run(["docker", "inspect", "-f",
                               '{{index .Config.Labels "sandbox-cli.user"}}', box],
                              capture_output=True, text=True, check=True).stdout.strip()
        return ["docker", "exec", "--user", user, box]

    def exec_true(self) -> Result:
        return self.compare(
            "exec true", self.reps.fast,
            lambda i: self.timed([*self.sbx, "exec", self.main, "true"]),
            lambda i: self.timed([*self.docker_exec(self.main), "true"]), 2.0,
            "stdin is /dev/null: sandbox forwards nothing, as docker exec without -i")

    def read_small(self) -> Result:
        text = "".join(f"line {n} of a small file\n" for n in range(40))  # about 1 KB
        self.run([*self.sbx, "write", self.main, "small.txt"], input_text=text)
        return self.compare(
            "read 1 KB file", self.reps.fast,
            lambda i: self.timed([*self.sbx, "read", self.main, "small.txt"]),
            lambda i: self.timed([*self.docker_exec(self.main), "cat", "small.txt"]), 2.0)

    def write_small(self) -> Result:
        text = "hello from the benchmark"
        return self.compare(
            "write small file", self.reps.fast,
            lambda i: self.timed([*self.sbx, "write", self.main, "w-sandbox.txt", text]),
            lambda i: self.timed([*self.docker_exec(self.main), "sh", "-c",
                                  f"echo '{text}' > w-docker.txt"]), 2.0)

    def stream(self) -> Result:
        head = ["head", "-c", str(STREAM_BYTES), "/dev/zero"]
        return self.compare(
            "exec, 300 MB to a pipe", self.reps.stream,
            lambda i: self.timed_stream([*self.sbx, "exec", self.main, *head], STREAM_BYTES),
            lambda i: self.timed_stream([*self.docker_exec(self.main), *head], STREAM_BYTES),
            1.1)

    def copy_tree(self) -> tuple[str, str]:
        """The source of the copy-to cases, made once: (its folder, the tree under it) of
        COPY_FILES files, COPY_BYTES in all, 100 a folder."""
        src = os.path.join(self.tmp, "src")
        tree = os.path.join(src, "tree")
        if os.path.isdir(tree):
            return src, tree
        per_file = COPY_BYTES // COPY_FILES
        for n in range(COPY_FILES):
            folder = os.path.join(tree, f"d{n // 100:02d}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"f{n % 100:03d}.bin"), "wb") as fh:
                fh.write(os.urandom(per_file))
        return src, tree

    def copy_to(self) -> Result:
        src, tree = self.copy_tree()
        volume = self.volume(self.main)

        def via_sandbox(i: int) -> float:
            dest = f"s{i + 1}"
            took = self.timed([*self.sbx, "copy-to", self.main, "tree/**", dest], cwd=src)
            shutil.rmtree(os.path.join(volume, dest))
            return took

        def via_docker(i: int) -> float:
            dest = f"d{i + 1}"
            took = self.timed(["docker", "cp", tree, f"{self.main}:/app/{dest}"])
            shutil.rmtree(os.path.join(volume, dest))
            return took

        return self.compare(f"copy-to {COPY_FILES} files, 50 MB", self.reps.copy, via_sandbox,
                            via_docker, 1.0, "docker cp of the same tree into /app")

    def copy_from(self) -> Result:
        """copy-from of COPY_FILES files / 50 MB made inside /app, against `docker cp` out."""
        per_file = COPY_BYTES // COPY_FILES
        make = ("import os\n"
                f"for n in range({COPY_FILES}):\n"
                "    d = f'/app/out/d{n // 100:02d}'\n"
                "    os.makedirs(d, exist_ok=True)\n"
                f"    open(f'{{d}}/f{{n % 100:03d}}.bin', 'wb').write(os.urandom({per_file}))\n")
        self.run([*self.sbx, "exec", self.main, "python3", "-c", make])
        dest = os.path.join(self.tmp, "out")

        def via_sandbox(i: int) -> float:
            took = self.timed([*self.sbx, "copy-from", self.main, "out/**", dest])
            shutil.rmtree(dest)
            return took

        def via_docker(i: int) -> float:
            took = self.timed(["docker", "cp", f"{self.main}:/app/out", dest])
            shutil.rmtree(dest)
            return took

        result = self.compare(f"copy-from {COPY_FILES} files, 50 MB", self.reps.copy,
                              via_sandbox, via_docker, 1.0,
                              "docker cp of the same tree out of /app")
        self.run([*self.sbx, "exec", self.main, "rm", "-rf", "/app/out"])
        return result

    def diff(self) -> Result:
        """diff of DIFF_FILES files copied in, DIFF_CHANGED of them changed (absolute goal)."""
        box = self.name("diff")
        self.start_sandbox(box)
        src = os.path.join(self.tmp, "diffsrc")
        for n in range(DIFF_FILES):
            folder = os.path.join(src, f"d{n // 200:02d}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"f{n % 200:03d}.txt"), "w") as fh:
                fh.write("".join(f"line {k} of file {n}\n" for k in range(20)))
        self.run([*self.sbx, "copy-to", box, "**"], cwd=src)
        edit = "; ".join(f"echo changed >> /app/d{k:02d}/f000.txt" for k in range(DIFF_CHANGED))
        self.run([*self.sbx, "exec", box, "sh", "-c", edit])
        log(f"diff: {self.reps.copy} runs")
        result = Result(f"diff {DIFF_FILES} files, {DIFF_CHANGED} changed", "s", [], [0.0], 1.0,
                        "sandbox diff alone (no docker counterpart); goal in seconds",
                        absolute=True)
        self.timed([*self.sbx, "diff", box])
        for _ in range(self.reps.copy):
            result.sandbox.append(self.timed([*self.sbx, "diff", box]))
        return result

    # --- volume mode (--storage volume: /app is an engine volume, files go through `cp`) -------

    def volume_cases(self) -> list[Result]:
        """write, read and copy-to on a sandbox started with --storage volume, each against
        the raw `docker cp` doing the same through a tar stream."""
        box = self.name("vol")
        self.run([*self.sbx, "start", "--name", box, "--image", self.image,
                  "--storage", "volume"])
        return [self.volume_write(box), self.volume_write_large(box), self.volume_read(box),
                self.volume_read_large(box), self.volume_copy(box)]

    def volume_write(self, box: str) -> Result:
        text = "hello from the benchmark"
        local = os.path.join(self.tmp, "vol-small.txt")
        with open(local, "w") as fh:
            fh.write(text + "\n")
        return self.compare(
            "volume: write small file", self.reps.fast,
            lambda i: self.timed([*self.sbx, "write", box, "w-sandbox.txt", text]),
            lambda i: self.timed(["docker", "cp", local, f"{box}:/app/w-docker.txt"]), 2.0,
            "docker cp FILE C:/app/F (the client sends it as a tar stream); goal as for the "
            "small bind-mode commands: the fixed Python start-up is most of a small command")

    def volume_write_large(self, box: str) -> Result:
        local = os.path.join(self.tmp, "vol-big.bin")
        with open(local, "wb") as fh:
            for _ in range(VOLUME_READ_BYTES // MB):
                fh.write(os.urandom(MB))
        return self.compare(
            "volume: write 100 MB file from stdin", self.reps.stream,
            lambda i: self.timed([*self.sbx, "write", box, "wb-sandbox.bin"], stdin_path=local),
            lambda i: self.timed(["docker", "cp", local, f"{box}:/app/wb-docker.bin"]), 1.3,
            "sandbox write C F < FILE against docker cp FILE C:/app/F")

    def volume_read(self, box: str) -> Result:
        text = "".join(f"line {n} of a small file\n" for n in range(40))  # about 1 KB
        self.run([*self.sbx, "write", box, "small.txt"], input_text=text)
        return self.compare(
            "volume: read 1 KB file", self.reps.fast,
            lambda i: self.timed([*self.sbx, "read", box, "small.txt"]),
            lambda i: self.timed(["docker", "cp", f"{box}:/app/small.txt", "-"]), 2.0,
            "docker cp C:/app/F - (a tar stream out, not unpacked)")

    def volume_read_large(self, box: str) -> Result:
        self.run([*self.docker_exec(box), "sh", "-c",
                  f"head -c {VOLUME_READ_BYTES} /dev/zero > /app/big.bin"])
        tar_size = self.run_bytes(["docker", "cp", f"{box}:/app/big.bin", "-"])  # + headers
        return self.compare(
            "volume: read 100 MB file to a pipe", self.reps.stream,
            lambda i: self.timed_stream([*self.sbx, "read", box, "big.bin"], VOLUME_READ_BYTES),
            lambda i: self.timed_stream(["docker", "cp", f"{box}:/app/big.bin", "-"],
                                        tar_size), 1.3,
            "docker cp C:/app/F - read to the end (the tar stream, not unpacked)")

    def run_bytes(self, argv: Sequence[str]) -> int:
        """How many bytes ARGV prints on stdout (untimed; counted, not kept)."""
        with tempfile.TemporaryFile() as out:
            proc = subprocess.run(list(argv), env=self.env, cwd=self.tmp, stdin=DEVNULL,
                                  stdout=out, stderr=subprocess.PIPE)
            size = out.seek(0, os.SEEK_END)
        if proc.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
        return size

    def volume_copy(self, box: str) -> Result:
        src, tree = self.copy_tree()

        def clear(dest: str) -> None:
            # docker cp keeps the client's owners (root): root (without CAP_DAC_OVERRIDE)
            # empties what it owns, the sandbox user removes the folder from its /app.
            self.run(["docker", "exec", box, "find", f"/app/{dest}", "-mindepth", "1",
                      "-user", "0", "-delete"])
            self.run([*self.docker_exec(box), "rm", "-rf", f"/app/{dest}"])

        def via_sandbox(i: int) -> float:
            dest = f"vs{i + 1}"
            took = self.timed([*self.sbx, "copy-to", box, "tree/**", dest], cwd=src)
            clear(dest)
            return took

        def via_docker(i: int) -> float:
            dest = f"vd{i + 1}"
            took = self.timed(["docker", "cp", tree, f"{box}:/app/{dest}"])
            clear(dest)
            return took

        return self.compare(f"volume: copy-to {COPY_FILES} files, 50 MB", self.reps.copy,
                            via_sandbox, via_docker, 1.3,
                            "docker cp DIR C:/app/DEST (the client tars the tree)")

    def run_one_shot(self, locked: bool) -> Result:
        code = ["python3", "-c", PY_ONE_LINER]
        flags = [*LOCKED_FLAGS, "--user", self.user()] if locked else []
        return self.compare(
            "run py one-liner" + (", same flags" if locked else ", plain docker"),
            self.reps.container,
            lambda i: self.timed([*self.sbx, "run", "--image", self.image, *code]),
            lambda i: self.timed(["docker", "run", "--rm", *flags, self.image, *code]),
            1.3,
            "docker run --rm " + ("with sandbox's isolation flags (no network, no caps, limits, "
                                  "--init)" if locked else "IMAGE python3 -c ... (bridge network, "
                                  "no limits)"))

    def user(self) -> str:
        return "65534:65534" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"

    def start(self, locked: bool) -> Result:
        mount_dir = os.path.join(self.tmp, "mount")
        os.makedirs(mount_dir, exist_ok=True)
        os.chmod(mount_dir, 0o755)
        prefix = "s" if locked else "p"

        def via_sandbox(i: int) -> float:
            name = self.name(f"{prefix}s{i + 1}")
            took = self.timed([*self.sbx, "start", "--name", name, "--image", self.image])
            self.run([*self.sbx, "purge", name])
            return took

        def via_docker(i: int) -> float:
            name = self.name(f"{prefix}d{i + 1}")
            self.containers.append(name)
            argv = ["docker", "run", "-d", "--rm", "--name", name]
            if locked:
                argv += [*LOCKED_FLAGS, "--user", self.user(), "--mount",
                         f"type=bind,source={mount_dir},target=/app", "--workdir", "/app",
                         "--entrypoint", "sleep", self.image, "3600"]
            else:
                argv += [self.image, "sleep", "3600"]
            took = self.timed(argv)
            self.docker_rm(name)
            return took

        return self.compare(
            "start" + (", same flags" if locked else ", plain docker"),
            self.reps.container, via_sandbox, via_docker, 1.3,
            ("docker run -d with sandbox's flags and a bind mount, sleep 3600" if locked
             else "docker run -d IMAGE sleep 3600") + "; both removed after each run (untimed)")

    def parallel(self) -> Result:
        names = [self.name(f"par{k}") for k in range(PARALLEL_SANDBOXES)]
        for name in names:
            self.start_sandbox(name)
        targets = [names[k % len(names)] for k in range(PARALLEL_EXECS)]
        result = self.compare(
            f"{PARALLEL_EXECS} parallel execs over {PARALLEL_SANDBOXES}", self.reps.parallel,
            lambda i: self.timed_parallel([[*self.sbx, "exec", t, "true"] for t in targets]),
            lambda i: self.timed_parallel([[*self.docker_exec(t), "true"] for t in targets]),
            None, "wall time of the whole batch")
        self.run([*self.sbx, "purge", *names])
        return result

    def peak_memory(self) -> Result:
        head = ["head", "-c", str(MEMORY_STREAM_BYTES), "/dev/zero"]
        log(f"peak memory, exec of 1 GB: {self.reps.memory} interleaved pairs")
        result = Result("peak RSS, exec 1 GB out", "MB", [], [], 50.0)
        trees: list[float] = []
        for i in range(self.reps.memory):
            sides = [("s", [*self.sbx, "exec", self.main, *head]),
                     ("d", [*self.docker_exec(self.main), *head])]
            if i % 2:
                sides.reverse()
            for side, argv in sides:
                out = subprocess.run([sys.executable, "-c", MEMORY_HELPER, *argv], env=self.env,
                                     cwd=self.tmp, stdin=DEVNULL, capture_output=True, text=True)
                try:
                    measured = json.loads(out.stdout)
                except ValueError:
                    raise BenchError(f"memory helper failed: {out.stderr.strip()[-500:]}") from None
                if measured["rc"] != 0:
                    raise BenchError(f"{shlex.join(argv)} failed: {measured['stderr']}")
                if side == "s":
                    result.sandbox.append(measured["self_kb"] / 1024)
                    trees.append(measured["tree_kb"] / 1024)
                else:
                    result.docker.append(measured["self_kb"] / 1024)
        result.note = (f"max RSS of the sandbox process itself vs the docker client; with its "
                       f"docker client child the sandbox tree peaks at "
                       f"{statistics.median(trees):.1f} MB")
        return result


def fmt(value: float, unit: str) -> str:
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.2f} s"


def table(results: Sequence[Result]) -> str:
    head = ("case", "sandbox", "docker", "ratio", "goal", "met?")
    rows = [head]
    for r in results:
        if r.goal is None:
            goal, met = "-", "-"
        else:
            goal = f"<= {r.goal:.0f} MB" if r.unit == "MB" else f"<= {r.goal:.1f}x"
            goal = f"<= {r.goal:.1f} s" if r.absolute else goal
            met = "yes" if r.met else "NO"
        label = f"{r.case} (n={len(r.sandbox)})"
        if r.absolute:
            rows.append((label, fmt(r.sandbox_median, r.unit), "-", "-", goal, met))
            continue
        rows.append((label, fmt(r.sandbox_median, r.unit), fmt(r.docker_median, r.unit),
                     f"{r.ratio:.2f}x", goal, met))
    return aligned(rows)


def aligned(rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """ROWS as a text table: the first row a header ruled off below it, the first LEFT
    columns left-aligned and the rest (figures) right-aligned."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[c]) if c < left else cell.rjust(widths[c])
                               for c, cell in enumerate(row)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (rough figures)")
    parser.add_argument("--image", default=os.environ.get("SANDBOX_IMAGE") or "python:alpine",
                        help="image with sh, coreutils and python3 [default: $SANDBOX_IMAGE or "
                        "python:alpine]")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--sandbox", help="sandbox command line [default: `sandbox` beside this "
                        "Python, else on PATH, else python -m sandbox_cli]")
    parser.add_argument("--only", type=lambda v: v.split(","), metavar="CASE,...",
                        help=f"run only these cases: {','.join(CASES)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or []) - set(CASES))
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)} (choose from {', '.join(CASES)})")

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Also SIGINT: Python leaves it ignored when started ignoring it (e.g. `cmd &` in a script).
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sandbox_cmd = find_sandbox(args.sandbox)
    bench: Bench | None = None
    try:
        machine = machine_info(sandbox_cmd)
        load_before = os.getloadavg()[0]  # other work on the machine makes figures noisy
        bench = Bench(args.image, sandbox_cmd, QUICK if args.quick else FULL)
        bench.check()
        cases: dict[str, Callable[[], list[Result]]] = {
            "exec": lambda: [bench.exec_true()],
            "read": lambda: [bench.read_small()],
            "write": lambda: [bench.write_small()],
            "stream": lambda: [bench.stream()],
            "copy": lambda: [bench.copy_to()],
            "copy-from": lambda: [bench.copy_from()],
            "diff": lambda: [bench.diff()],
            "run": lambda: [bench.run_one_shot(locked=True), bench.run_one_shot(locked=False)],
            "start": lambda: [bench.start(locked=True), bench.start(locked=False)],
            "parallel": lambda: [bench.parallel()],
            "memory": lambda: [bench.peak_memory()],
            "volume": bench.volume_cases,
        }
        results = [r for key in (args.only or list(cases)) for r in cases[key]()]
        notes = [*bench.notes, *(f"{r.case}: {r.note}" for r in results if r.note)]
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        if bench is not None:
            bench.cleanup()
    load = machine["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    machine_line = (f"machine: {machine['cpu']}, {machine['cores']} cores, kernel "
                    f"{machine['kernel']}, docker {machine['docker_server']}, python "
                    f"{machine['python']} (sandbox: {machine['sandbox_command']}), image "
                    f"{args.image}, {'quick' if args.quick else 'full'} run, 1-min load "
                    f"average {load['before']:.2f} before, {load['after']:.2f} after")
    if args.json:
        print(json.dumps({"machine": machine, "image": args.image, "quick": args.quick,
                          "results": [r.to_json() for r in results], "notes": notes}, indent=2))
    else:
        print(machine_line)
        print(table(results))
        for note in notes:
            print(f"  * {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
