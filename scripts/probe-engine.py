#!/usr/bin/env python3
"""Run the raw engine commands sandbox uses against ONE engine and record what each answers.

    scripts/probe-engine.py NAME [--runtime RUNTIME] > NAME.json
    scripts/probe-engine.py --table main.json remote.json ... > table.md

The engine is the one the environment names, as for sandbox: $SANDBOX_DOCKER (default
`docker`), $DOCKER_HOST. Each case records the exit code and the first telling line of its
output, normalised (ids, names, paths), so that engines can be compared row by row
(tests/engines.md). Everything it creates is named sbx-probe-* and removed at the end.
Standard library only; bounded in time (every call has a timeout).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

IMAGE = os.environ.get("SANDBOX_TEST_PYTHON_IMAGE", "sandbox-test/python:bookworm")
BUSYBOX = os.environ.get("SANDBOX_TEST_BUSYBOX_IMAGE", "sandbox-test/busybox:latest")
DOCKER = os.environ.get("SANDBOX_DOCKER") or "docker"
TAG = f"sbx-probe-{os.getpid()}"


def call(
    args: list[str],
    *,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, bytes, str]:
    """Run DOCKER ARGS; (exit code, stdout bytes, stderr text)."""
    try:
        proc = subprocess.run(
            [DOCKER, *args],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        return -1, b"", f"timeout after {timeout:g} s"
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


def tidy(text: str, names: dict[str, str]) -> str:
    """One short line: long hex ids, our names and temp paths replaced by placeholders."""
    for value, placeholder in names.items():
        text = text.replace(value, placeholder)
    text = re.sub(r"\b[0-9a-f]{64}\b", "<id64>", text)
    text = re.sub(r"\b[0-9a-f]{12}\b", "<id12>", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:160]


def first_error(stderr: str) -> str:
    """The `Error:` line when there is one (podman prints warnings first), else the first."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("Error") or "Error response" in line:
            if line.endswith(":"):  # podman's "Error: 1 error occurred:" and the list below
                return " ".join([line, *lines[i + 1 : i + 3]])
            return line
    return lines[0] if lines else ""


def tar_of(files: dict[str, bytes], *, uid: int = 4242) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        dirs = sorted({os.path.dirname(n) for n in files if os.path.dirname(n)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, uid
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), 0o644, uid, uid
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tar_summary(data: bytes) -> str:
    """What a `docker cp ... -` stream holds: member names, types, sizes."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            kinds = {
                tarfile.REGTYPE: "file",
                tarfile.DIRTYPE: "dir",
                tarfile.SYMTYPE: "link",
                tarfile.FIFOTYPE: "fifo",
            }
            parts = []
            for member in tar:
                kind = kinds.get(member.type, repr(member.type))
                extra = f"->{member.linkname}" if member.issym() else f" {member.size}B"
                parts.append(f"{member.name}({kind}{extra} {member.uid}:{member.gid})")
            return "tar: " + ", ".join(parts[:4]) + (" ..." if len(parts) > 4 else "")
    except tarfile.TarError as exc:
        return f"not a tar: {exc}"


class Probe:
    def __init__(self, engine: str, runtime: str | None) -> None:
        self.engine, self.runtime = engine, runtime
        self.results: list[dict[str, object]] = []
        self.names: dict[str, str] = {}
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.images: list[str] = []
        self.folder = tempfile.mkdtemp(prefix="sbx-probe-")
        os.chmod(self.folder, 0o777)
        self.names[self.folder] = "<folder>"
        self.env_file = os.path.join(self.folder, "..", os.path.basename(self.folder) + ".env")
        self.env_file = os.path.normpath(self.env_file)
        with open(self.env_file, "w") as handle:
            handle.write("FROM_FILE=1\n")
        self.names[self.env_file] = "<envfile>"

    def name(self, suffix: str) -> str:
        full = f"{TAG}-{suffix}"
        self.names[full] = f"<{suffix}>"
        return full

    def record(self, case: str, rc: int, text: str, seconds: float | None = None) -> None:
        row: dict[str, object] = {"case": case, "rc": rc, "out": tidy(text, self.names)}
        if seconds is not None:
            row["s"] = round(seconds, 2)
        self.results.append(row)
        print(f"{self.engine:7} {case:34} {rc:4} {row['out']}", file=sys.stderr)

    def do(
        self,
        case: str,
        args: list[str],
        *,
        stdin: bytes | None = None,
        out: str = "auto",
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> tuple[int, bytes, str]:
        """Run and record: OUT is auto (stdout when it succeeded, else the error line),
        tar (a summary of the tar on stdout), or stdout."""
        start = time.monotonic()
        rc, stdout, stderr = call(args, stdin=stdin, env=env, timeout=timeout)
        took = time.monotonic() - start
        if out == "tar" and rc == 0:
            text = tar_summary(stdout)
        elif rc == 0 or out == "stdout":
            text = stdout.decode(errors="replace") or first_error(stderr)
            if stderr.strip() and rc == 0:
                text += f" [stderr: {first_error(stderr)}]"
        else:
            text = first_error(stderr) or stdout.decode(errors="replace")
        self.record(case, rc, text, took)
        return rc, stdout, stderr

    def lockdown(self, name: str, *, network: str = "none") -> list[str]:
        """sandbox's `run -d` flags (the issue-10 set: --log-driver none, --no-healthcheck)."""
        argv = [
            "run",
            "-d",
            "--rm",
            "--pull",
            "never",
            "--name",
            name,
            "--hostname",
            name,
            "--label",
            "sandbox-cli.managed=1",
            "--label",
            f"sandbox-cli.name={name}",
            "--label",
            "sandbox-cli.probe=" + TAG,
            "--network",
            network,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            "1000:1000",
            "--pids-limit",
            "256",
            "--memory",
            "256m",
            "--memory-swap",
            "256m",
            "--cpus",
            "1",
            "--init",
            "--log-driver",
            "none",
            "--no-healthcheck",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,size=64m",
            "--env",
            "HOME=/tmp",
            "--env-file",
            self.env_file,
            "--workdir",
            "/app",
        ]
        if self.runtime:
            argv += ["--runtime", self.runtime]
        return argv

    def run(self) -> None:
        main = self.name("box")
        vol = self.name("vol")
        # --- start: bind mode first; volume mode always ---
        rc, _, _ = self.do(
            "run -d lockdown + bind mount",
            [
                *self.lockdown(main),
                "--mount",
                f"type=bind,source={self.folder},target=/app",
                "--entrypoint",
                "sleep",
                IMAGE,
                "3600",
            ],
        )
        bind_ok = rc == 0
        if bind_ok:
            self.containers.append(main)
        missing = os.path.join(self.folder, "missing")
        self.do(
            "run -d bind of a missing path",
            [
                *self.lockdown(self.name("nobind")),
                "--mount",
                f"type=bind,source={missing},target=/app",
                "--entrypoint",
                "sleep",
                IMAGE,
                "3600",
            ],
        )
        rc, _, _ = self.do(
            "volume create --label",
            ["volume", "create", "--label", "sandbox-cli.probe=" + TAG, vol],
        )
        if rc == 0:
            self.volumes.append(vol)
        self.do("volume inspect Labels", ["volume", "inspect", "--format", "{{json .Labels}}", vol])
        vbox = self.name("vbox")
        rc, _, _ = self.do(
            "run -d lockdown + volume mount",
            [
                *self.lockdown(vbox),
                "--mount",
                f"type=volume,source={vol},target=/app",
                "--entrypoint",
                "sleep",
                IMAGE,
                "3600",
            ],
        )
        if rc == 0:
            self.containers.append(vbox)
        box = main if bind_ok else vbox
        self.do(
            "exec id (volume root owner)",
            ["exec", vbox, "sh", "-c", "id -u; stat -c '%u:%g %a' /app"],
        )
        self.do(
            "run -d same name again", [*self.lockdown(box), "--entrypoint", "sleep", IMAGE, "1"]
        )
        # --- exec ---
        self.do(
            "exec -i --user --env --workdir",
            [
                "exec",
                "-i",
                "--user",
                "1000:1000",
                "--env",
                "A=1",
                "--workdir",
                "/tmp",
                box,
                "sh",
                "-c",
                "read x; echo $x $A $FROM_FILE $HOME $(pwd) $(id -u)",
            ],
            stdin=b"in\n",
        )
        self.do("exec exit 7", ["exec", box, "sh", "-c", "exit 7"])
        self.do("exec missing command", ["exec", box, "no-such-command"])
        self.do("exec as root (--user 0)", ["exec", "--user", "0", box, "id", "-u"])
        self.do("pid 1 (--init)", ["exec", box, "cat", "/proc/1/cmdline"])
        self.do(
            "limits seen inside",
            [
                "exec",
                box,
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                "/sys/fs/cgroup/pids/pids.max 2>&1 | tr '\\n' ' '; "
                "grep -E 'processes|open files' /proc/self/limits "
                "| tr -s ' ' | cut -d' ' -f3-5 | tr '\\n' ' '",
            ],
        )
        self.do("write outside /app,/tmp (read-only)", ["exec", box, "sh", "-c", "touch /x"])
        self.do(
            "ls -l /app; stat /app", ["exec", box, "sh", "-c", "ls -ld /app && stat -c %F /app"]
        )
        self.do(
            "uptime vs pid 1 start (ticks)",
            [
                "exec",
                box,
                "sh",
                "-c",
                "cut -d' ' -f1 /proc/uptime; cut -d' ' -f22 /proc/1/stat; getconf CLK_TCK",
            ],
        )
        # --- ps / inspect ---
        self.do(
            "ps -a -q --filter label",
            ["ps", "-a", "-q", "--no-trunc", "--filter", "label=sandbox-cli.probe=" + TAG],
            out="stdout",
        )
        rc, out, _ = call(
            ["ps", "-a", "--filter", "label=sandbox-cli.probe=" + TAG, "--format", "{{json .}}"]
        )
        shape = out.decode(errors="replace").lstrip()[:1]
        self.record(
            "ps --format '{{json .}}' shape",
            rc,
            {"[": "one JSON array", "{": "one JSON object per line"}.get(shape, repr(shape)),
        )
        self.do("inspect Config.Labels", ["inspect", "--format", "{{json .Config.Labels}}", box])
        self.do(
            "inspect State",
            [
                "inspect",
                "--format",
                "{{.State.Status}} running={{.State.Running}} "
                "paused={{.State.Paused}} pid>0={{gt .State.Pid 0}}",
                box,
            ],
        )
        self.do(
            "inspect NetworkSettings.Networks",
            [
                "inspect",
                "--format",
                "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
                box,
            ],
        )
        self.do(
            "inspect HostConfig",
            [
                "inspect",
                "--format",
                "runtime={{.HostConfig.Runtime}} ro={{.HostConfig.ReadonlyRootfs}}"
                " init={{.HostConfig.Init}} log={{.HostConfig.LogConfig.Type}}",
                box,
            ],
        )
        self.do(
            "inspect Mounts",
            [
                "inspect",
                "--format",
                "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}}{{end}}",
                box,
            ],
        )
        # --- cp in and out, tar streams ---
        self.do(
            "cp - NAME:/app (tar in)",
            ["cp", "-", f"{box}:/app"],
            stdin=tar_of({"d/f": b"x" * 5, "g": b"yy"}),
        )
        self.do(
            "owner after cp in",
            [
                "exec",
                box,
                "sh",
                "-c",
                "stat -c '%n %u:%g %a' /app/d /app/d/f /app/g | tr '\\n' ' '",
            ],
        )
        self.do("cp in, tar not a tar", ["cp", "-", f"{box}:/app"], stdin=b"not a tar\n" * 100)
        self.do("cp in to read-only rootfs", ["cp", "-", f"{box}:/etc"], stdin=tar_of({"h": b"1"}))
        self.do(
            "cp in to missing dir", ["cp", "-", f"{box}:/app/no/such"], stdin=tar_of({"h": b"1"})
        )
        self.do("cp NAME:/app/d/f - (tar out)", ["cp", f"{box}:/app/d/f", "-"], out="tar")
        call(
            [
                "exec",
                "--user",
                "0",
                box,
                "sh",
                "-c",
                "ln -s /etc/passwd /app/link; mkfifo /app/fifo",
            ]
        )
        self.do("cp out of a symlink", ["cp", f"{box}:/app/link", "-"], out="tar")
        self.do("cp out of a fifo", ["cp", f"{box}:/app/fifo", "-"], out="tar", timeout=20)
        self.do("cp out of a directory", ["cp", f"{box}:/app/d", "-"], out="tar")
        self.do("cp out of a missing file", ["cp", f"{box}:/app/none", "-"], out="tar")
        # --- network ---
        net = self.name("net")
        rc, _, _ = self.do(
            "run -d --network bridge -p",
            [
                *self.lockdown(net, network="bridge"),
                "--publish",
                "127.0.0.1::8000",
                "--mount",
                f"type=volume,source={vol},target=/app",
                "--entrypoint",
                "sleep",
                IMAGE,
                "3600",
            ],
        )
        if rc == 0:
            self.containers.append(net)
            self.do("port", ["port", net], out="stdout")
            self.do(
                "inspect Networks (bridge)",
                [
                    "inspect",
                    "--format",
                    "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
                    net,
                ],
            )
            self.do("network disconnect bridge", ["network", "disconnect", "bridge", net])
            self.do("network disconnect podman", ["network", "disconnect", "podman", net])
            self.do(
                "networks after disconnect",
                [
                    "inspect",
                    "--format",
                    "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
                    net,
                ],
            )
        self.do(
            "run -d --workdir /app, nothing there",
            [*self.lockdown(self.name("nowd")), "--entrypoint", "sleep", IMAGE, "1"],
        )
        # --- commit, pause ---
        image = f"sbx-probe/commit:{os.getpid()}"
        self.names[image] = "<image>"
        rc, _, _ = self.do("commit", ["commit", box, image])
        if rc == 0:
            self.images.append(image)
        self.do("pause", ["pause", box])
        self.do("exec into paused", ["exec", box, "true"], timeout=20)
        self.do("inspect State (paused)", ["inspect", "--format", "{{.State.Status}}", box])
        self.do("unpause", ["unpause", box])
        # --- one-shot: create + start --attach ---
        once = self.name("once")
        create = [
            "create",
            *self.lockdown(once)[2:],
            "--mount",
            f"type=volume,source={vol},target=/app",
            "--entrypoint",
            "sh",
            IMAGE,
            "-c",
            "exit 5",
        ]
        rc, _, _ = self.do("create --rm (one-shot)", create)
        if rc == 0:
            self.do("start --attach exit code", ["start", "--attach", once])
        # --- errors ---
        self.do(
            "missing image (--pull never)",
            [*self.lockdown(self.name("noimg")), "--entrypoint", "sh", "sbx-probe/none:1", "true"],
        )
        self.do("no such container: exec", ["exec", "sbx-probe-none", "true"])
        self.do("no such container: inspect", ["inspect", "sbx-probe-none"])
        self.do("no such container: cp out", ["cp", "sbx-probe-none:/app/f", "-"])
        self.do("no such container: rm -f", ["rm", "-f", "sbx-probe-none"])
        self.do(
            "unknown runtime",
            [
                *self.lockdown(self.name("rt")),
                "--runtime",
                "nosuch",
                "--entrypoint",
                "sh",
                IMAGE,
                "true",
            ],
        )
        if os.path.basename(DOCKER).startswith("docker"):
            self.do("unreachable daemon", ["ps"], env={"DOCKER_HOST": "unix:///run/sbx-none.sock"})
        else:
            self.do("unreachable daemon", ["--remote", "--url", "unix:///run/sbx-none.sock", "ps"])
        self.do("version --format Server.Version", ["version", "--format", "{{.Server.Version}}"])
        self.do("info --format Runtimes", ["info", "--format", "{{json .Runtimes}}"])
        self.do("rm -f running", ["rm", "-f", box])
        self.containers.remove(box)

    def cleanup(self) -> None:
        for name in self.containers:
            call(["rm", "-f", name])
        for name in self.names:
            if name.startswith(TAG):
                call(["rm", "-f", name])
        for vol in self.volumes:
            call(["volume", "rm", "-f", vol])
        for image in self.images:
            call(["rmi", image])
        shutil.rmtree(self.folder, ignore_errors=True)
        os.unlink(self.env_file)


def table(paths: list[str]) -> str:
    """A markdown table: one row per case, one column per engine."""
    engines, rows = [], {}
    for path in paths:
        with open(path) as handle:
            data = json.load(handle)
        engines.append(data["engine"] + (f" ({data['runtime']})" if data.get("runtime") else ""))
        for row in data["results"]:
            rows.setdefault(row["case"], {})[engines[-1]] = f"{row['rc']}: {row['out']}"
    lines = ["| case | " + " | ".join(engines) + " |", "|---" * (len(engines) + 1) + "|"]
    for case, cells in rows.items():
        values = [cells.get(e, "").replace("|", "\\|") for e in engines]
        lines.append(f"| {case} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--table"]:
        sys.stdout.write(table(argv[1:]))
        return 0
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    engine, runtime = argv[0], None
    if argv[1:2] == ["--runtime"]:
        runtime = argv[2]
    probe = Probe(engine, runtime)
    try:
        probe.run()
    finally:
        probe.cleanup()
    json.dump(
        {"engine": engine, "runtime": runtime, "results": probe.results}, sys.stdout, indent=1
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
