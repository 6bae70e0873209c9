"""The typer app. Each command parses its flags, calls one operation and renders the result."""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, Any

import typer

from . import config, docker, execute, sandbox, ui, validate
from .errors import InvalidInput
from .state import SandboxRecord, StateStore

app = typer.Typer(
    name="sandbox",
    help="Run untrusted code (above all, code written by language models) in locked-down "
    "Docker containers.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by `start` and `run`. None means "not given": config files and SANDBOX_*
# variables then decide (see config.resolve).
NameOpt = Annotated[
    str | None, typer.Option("--name", metavar="NAME", help="Sandbox name (default: generated).")
]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        "--image", metavar="IMAGE", help="Image to run [default: python:alpine, or $SANDBOX_IMAGE]."
    ),
]
NetworkOpt = Annotated[
    bool | None,
    typer.Option("--network/--no-network", help="Give the container a network (off by default)."),
]
PortOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--port",
        "-p",
        metavar="SPEC",
        help="Publish [IP:]HOST:CONTAINER[/PROTO]; binds 127.0.0.1 unless IP given. "
        "Needs --network. Repeatable.",
    ),
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--env",
        "-e",
        metavar="KEY=VALUE",
        help="KEY=VALUE (or KEY to pass the host's value). Repeatable.",
    ),
]
KeepOpt = Annotated[
    bool | None, typer.Option("--keep/--no-keep", help="Never expire, and survive a bare `purge`.")
]
TtlOpt = Annotated[
    str | None,
    typer.Option(
        "--ttl",
        metavar="DURATION",
        help="Lifetime before Docker removes it: 30s, 10m, 2h [default: 1h].",
    ),
]
MemoryOpt = Annotated[
    str | None,
    typer.Option("--memory", metavar="SIZE", help="Memory limit, no extra swap [default: 1g]."),
]
DiskOpt = Annotated[
    str | None,
    typer.Option("--disk", metavar="SIZE",
                 help="Cap on /app's bytes and files, or `unlimited` [default: 1g]."),
]
CpusOpt = Annotated[
    float | None, typer.Option("--cpus", metavar="N", help="CPU limit [default: 1].")
]
PidsOpt = Annotated[
    int | None, typer.Option("--pids-limit", metavar="N", help="Process limit [default: 256].")
]
ReadOnlyOpt = Annotated[
    bool | None,
    typer.Option(
        "--read-only/--writable-root",
        help="Read-only root with tmpfs /tmp and /var/tmp (the default; /app stays writable), "
        "or a writable root.",
    ),
]
TmpfsSizeOpt = Annotated[
    str | None,
    typer.Option("--tmpfs-size", metavar="SIZE",
                 help="Size of the tmpfs /tmp of --read-only [default: 64m]."),
]
RuntimeOpt = Annotated[
    str | None,
    typer.Option("--runtime", metavar="RUNTIME", help="OCI runtime, e.g. runsc for gVisor."),
]
CapAddOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--cap-add",
        metavar="CAP",
        help="Give back a Linux capability (all are dropped). Repeatable.",
    ),
]
AllowHostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-host",
        metavar="HOST[:PORT]",
        help="Reach only these hosts, through a proxy (*.example.com: subdomains; no port: "
        "80 and 443). Repeatable. Not with --network or -p.",
    ),
]
EgressNetworkOpt = Annotated[
    str | None,
    typer.Option(
        "--egress-network", metavar="NET", help="Engine network the proxy goes out by "
        "[default: bridge]."
    ),
]
ProxyImageOpt = Annotated[
    str | None,
    typer.Option(
        "--proxy-image", metavar="IMAGE", help="Image with python3 to run the egress proxy "
        "[default: the sandbox's image]."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
TimeoutOpt = Annotated[
    str | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Stop the command after SECONDS (or 30s, 5m); exit code 124.",
    ),
]
WorkdirOpt = Annotated[
    str | None,
    typer.Option(
        "--workdir", "-w", metavar="DIR", help="Working directory in the container [default: /app]."
    ),
]

TtyOpt = Annotated[
    bool | None,
    typer.Option(
        "--tty/--no-tty",
        "-t/-T",
        help="Allocate a terminal (stderr then merges into stdout), or never [default: only "
        "when stdin, stdout and stderr are all terminals].",
    ),
]

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Sandbox name.")]
CommandArg = Annotated[
    list[str], typer.Argument(metavar="CMD [ARG]...", help="Command and arguments (no shell).")
]
PathArg = Annotated[str, typer.Argument(metavar="PATH", help="File path relative to /app.")]


def _store() -> StateStore:
    return StateStore()


def _record_json(record: SandboxRecord, store: StateStore) -> dict[str, Any]:
    return {
        "name": record.name,
        "container_id": record.container_id,
        "image": record.image,
        "status": "running",
        "volume": store.workspace_path(record),
        "network": record.network,
        "ports": record.ports,
        "keep": record.keep,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "allow_hosts": sandbox.allowed_hosts(record),
    }


def _env_pairs(values: list[str] | None) -> dict[str, str]:
    return dict(validate.env_pair(v, dict(os.environ)) for v in values or [])


def _timeout_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return validate.timeout(float(value))
    except ValueError:
        return float(validate.duration(value))


def _resolve_start(
    image: str | None,
    network: bool | None,
    port: list[str] | None,
    env: list[str] | None,
    keep: bool | None,
    ttl: str | None,
    memory: str | None,
    cpus: float | None,
    pids: int | None,
    read_only: bool | None,
    runtime: str | None,
    cap_add: list[str] | None,
    tmpfs_size: str | None = None,
    disk: str | None = None,
    egress: dict[str, Any] | None = None,
) -> config.StartOptions:
    flags: dict[str, Any] = {  # None: not given; config.resolve checks every given value
        "image": image, "network": network, "ports": port or None,
        "env": _env_pairs(env) if env else None, "keep": keep, "ttl": ttl, "memory": memory,
        "cpus": cpus, "pids": pids, "read_only": read_only, "runtime": runtime,
        "cap_add": cap_add or None, "tmpfs_size": tmpfs_size, "disk": disk,
        **(egress or {}),
    }
    resolved = config.resolve(flags)
    for path in resolved.ignored:
        ui.warn(f"ignoring {path}: it is owned by another user")
    if resolved.loosened_by_project:
        project = resolved.files[-1]
        settings = ", ".join(config.describe(key, getattr(resolved.options, key))
                             for key in resolved.loosened_by_project)
        ui.warn(f"{project} loosens the defaults: {settings}")
    return resolved.options


def _egress_flags(allow_host: list[str] | None, egress_network: str | None,
                  proxy_image: str | None) -> dict[str, Any]:
    return {"allow_hosts": allow_host or None, "egress_network": egress_network,
            "proxy_image": proxy_image}


@app.command()
def start(
    name: NameOpt = None,
    image: ImageOpt = None,
    network: NetworkOpt = None,
    port: PortOpt = None,
    env: EnvOpt = None,
    keep: KeepOpt = None,
    ttl: TtlOpt = None,
    memory: MemoryOpt = None,
    disk: DiskOpt = None,
    cpus: CpusOpt = None,
    pids_limit: PidsOpt = None,
    read_only: ReadOnlyOpt = None,
    tmpfs_size: TmpfsSizeOpt = None,
    runtime: RuntimeOpt = None,
    cap_add: CapAddOpt = None,
    allow_host: AllowHostOpt = None,
    egress_network: EgressNetworkOpt = None,
    proxy_image: ProxyImageOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a sandbox and print its name (NAME=$(sandbox start))."""
    options = _resolve_start(
        image, network, port, env, keep, ttl, memory, cpus, pids_limit, read_only, runtime, cap_add,
        tmpfs_size, disk, _egress_flags(allow_host, egress_network, proxy_image),
    )
    store = _store()
    record = sandbox.start(store, options, name, progress=ui.info, report=ui.info)
    if json_out:
        ui.emit_json(_record_json(record, store))
    else:
        ui.data(record.name)


@app.command("exec", context_settings={"ignore_unknown_options": True})
def exec_(
    name: NameArg,
    command: CommandArg,
    timeout: TimeoutOpt = None,
    env: EnvOpt = None,
    workdir: WorkdirOpt = None,
    tty: TtyOpt = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print {exitCode, stdout, stderr, failed, ...} instead of streaming."
        ),
    ] = False,
) -> None:
    """Run a command in a sandbox; exits with its exit code (124 on timeout)."""
    seconds = _timeout_seconds(timeout)
    pairs = _env_pairs(env)
    directory = validate.container_dir(workdir) if workdir else None
    if json_out:
        if tty:
            raise InvalidInput("--json keeps stdout and stderr apart: it cannot use --tty")
        result = execute.exec_captured(
            _store(), name, command, env=pairs, workdir=directory, timeout=seconds
        )
        ui.emit_json(result.to_json())
        ui.report_stop(result, seconds, name)
        raise typer.Exit(result.exit_code)
    outcome = execute.exec_streaming(
        _store(), name, command, env=pairs, workdir=directory, timeout=seconds, tty=tty
    )
    ui.report_stop(outcome, seconds, name)
    raise typer.Exit(outcome.code)


@app.command()
def write(
    name: NameArg,
    path: PathArg,
    text: Annotated[
        str | None,
        typer.Argument(metavar="[TEXT]", help="Content; stdin when omitted or `-`."),
    ] = None,
) -> None:
    """Write TEXT (or stdin, binary-safe) to a file in the sandbox folder."""
    # `-` is stdin, as for most tools; a lone dash as content comes through stdin too.
    source = os.fsencode(text) if text not in (None, "-") else sys.stdin.buffer
    sandbox.write_file(_store(), name, path, source)


@app.command()
def read(
    name: NameArg,
    path: PathArg,
    max_size: Annotated[
        str,
        typer.Option("--max-size", metavar="SIZE",
                     help="Refuse a file larger than this (e.g. 100m, 4g)."),
    ] = "1g",
) -> None:
    """Write a file's bytes from the sandbox folder to stdout."""
    from .volume import parse_size

    limit = parse_size(max_size)
    with ui.writing_stdout():
        sys.stdout.flush()
        sandbox.read_file(_store(), name, path, sys.stdout.fileno(), limit)


@app.command("copy-to")
def copy_to(
    name: NameArg,
    pattern: Annotated[
        str, typer.Argument(metavar="PATTERN", help="gitignore-style glob, e.g. 'src/**'.")
    ],
    dest: Annotated[str, typer.Argument(metavar="[DEST]", help="Folder relative to /app.")] = ".",
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude", metavar="PATTERN", help="Leave out files matching this glob. Repeatable."
        ),
    ] = None,
    no_ignore: Annotated[
        bool, typer.Option("--no-ignore", help="Do not honour .gitignore (and copy .git).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy host files matching PATTERN (relative to the current directory) into the sandbox."""
    with ui.copy_progress() as progress:
        summary = sandbox.copy_to(
            _store(),
            name,
            [pattern],
            dest,
            exclude or [],
            use_gitignore=not no_ignore,
            progress=progress,
        )
    _report_copy(summary, json_out)


def _report_copy(summary: sandbox.CopySummary, json_out: bool) -> None:
    if json_out:
        ui.emit_json(
            {
                "files": summary.files,
                "bytes": summary.bytes,
                "destination": summary.destination,
                "skippedLinks": summary.skipped_links,
            }
        )
        return
    skipped = (f", skipped {ui.plural(summary.skipped_links, 'link')}"
               if summary.skipped_links else "")
    ui.info(
        f"copied {ui.plural(summary.files, 'file')} ({ui.human_bytes(summary.bytes)}) "
        f"to {summary.destination}{skipped}"
    )


@app.command()
def disconnect(name: NameArg, json_out: JsonOpt = False) -> None:
    """Detach a sandbox from every network; published ports stop answering."""
    left = sandbox.disconnect(_store(), name)
    if json_out:
        ui.emit_json({"name": name, "disconnected": left})
        return
    ui.info(
        f"{name}: disconnected from {', '.join(left)}"
        if left
        else f"{name}: already without network"
    )


@app.command()
def purge(
    names: Annotated[
        list[str] | None, typer.Argument(metavar="[NAME]...", help="Sandboxes to remove.")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Remove every sandbox, --keep ones too.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove sandboxes: with names, those; with none, every one not started with --keep."""
    if names and everything:
        raise InvalidInput("give names or --all, not both")
    removed = sandbox.purge(_store(), names or [], everything, report=ui.info)
    if json_out:
        ui.emit_json({"removed": removed})
    else:
        ui.info(
            f"removed {ui.plural(len(removed), 'sandbox', 'sandboxes')}"
            + (f": {', '.join(removed)}" if removed else "")
        )


@app.command("ls")
def list_(json_out: JsonOpt = False) -> None:
    """List sandboxes: a table on a terminal (relative expiry), tab-separated lines when piped."""
    rows = sandbox.list_sandboxes(_store(), report=ui.info)
    if json_out:
        ui.emit_json([{k: v for k, v in row.items() if k != "tracked"} for row in rows])
    else:
        ui.sandbox_table(rows)


@app.command("egress")
def egress_log(name: NameArg, json_out: JsonOpt = False) -> None:
    """List the attempts a sandbox's egress proxy allowed and refused (see --allow-host)."""
    from . import egress

    store = _store()
    # An expired sandbox's log is kept with its files (see `read`).
    egress.require_egress(sandbox.require(store, name, expired_ok=True), store)
    rows = egress.attempts(store, name)
    if json_out:
        ui.emit_json(rows)
        return
    for row in rows:
        reason = f"\t{row['reason']}" if row["reason"] else ""
        ui.data(f"{row['time']}\t{row['verdict']}\t{row['host']}:{row['port']}{reason}")
    if not rows:
        ui.info(f"{name}: no attempts yet")


@app.command("build-repo")
def build_repo(
    repo: Annotated[
        str, typer.Argument(metavar="REPO", help="owner/name on GitHub, or a git URL.")
    ],
    branch: Annotated[
        str | None, typer.Option("--branch", metavar="BRANCH", help="Branch or tag.")
    ] = None,
    subdir: Annotated[
        str | None, typer.Option("--dir", metavar="DIR", help="Folder holding the Dockerfile.")
    ] = None,
    tag: Annotated[
        str | None, typer.Option("--tag", metavar="TAG", help="Image tag [default: repo].")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build an image from a git repository (docker build -t TAG URL#BRANCH:DIR)."""
    built = sandbox.build_repo(repo, branch, subdir, tag, live=ui.is_terminal(sys.stderr))
    if json_out:
        ui.emit_json({"tag": built})
    else:
        ui.data(built)


@app.command("run", context_settings={"ignore_unknown_options": True})
def run(
    command: CommandArg,
    name: NameOpt = None,
    image: ImageOpt = None,
    network: NetworkOpt = None,
    port: PortOpt = None,
    env: EnvOpt = None,
    ttl: TtlOpt = None,
    memory: MemoryOpt = None,
    disk: DiskOpt = None,
    cpus: CpusOpt = None,
    pids_limit: PidsOpt = None,
    read_only: ReadOnlyOpt = None,
    tmpfs_size: TmpfsSizeOpt = None,
    runtime: RuntimeOpt = None,
    cap_add: CapAddOpt = None,
    allow_host: AllowHostOpt = None,
    egress_network: EgressNetworkOpt = None,
    proxy_image: ProxyImageOpt = None,
    copy: Annotated[
        list[str] | None,
        typer.Option(
            "--copy",
            metavar="PATTERN",
            help="Copy files matching this glob into /app first. Repeatable.",
        ),
    ] = None,
    timeout: TimeoutOpt = None,
    workdir: WorkdirOpt = None,
    tty: TtyOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the exec result as JSON.")
    ] = False,
) -> None:
    """Start, copy, exec and purge in one: exits with the command's code, always cleans up."""
    seconds = _timeout_seconds(timeout)
    directory = validate.container_dir(workdir) if workdir else None
    from .selection import pattern

    patterns = [pattern(p) for p in copy or []]
    options = _resolve_start(
        image, network, port, env, False, ttl, memory, cpus, pids_limit, read_only, runtime,
        cap_add, tmpfs_size, disk, _egress_flags(allow_host, egress_network, proxy_image),
    )
    if json_out and tty:
        raise InvalidInput("--json keeps stdout and stderr apart: it cannot use --tty")
    forward, use_tty = execute.stdin_mode(tty)
    if json_out:  # no terminal: stdout and stderr must stay apart
        forward, use_tty = forward and not sys.stdin.isatty(), False
    store = _store()
    record = sandbox.create_one_shot(store, options, command, name=name, workdir=directory,
                                     stdin=forward, tty=use_tty, progress=ui.info,
                                     report=ui.info)
    finished = False
    try:
        if patterns:
            _report_copy(sandbox.copy_to(store, record.name, patterns), False)
        argv = docker.start_attached_argv(record.name, stdin=forward)

        def stop() -> bool:  # the command is the container's main process: end the container
            sandbox.remove_container(sandbox.container_ref(record))
            return True

        # run's TTL shell (docker.TTL_SCRIPT) says so on stderr when the command cannot start
        intercept = None if use_tty else (2, execute.TTL_MARKER)
        began = time.time()
        outcome: execute.Outcome | execute.ExecResult
        if json_out:
            outcome = execute.capture(argv, stdin=forward, timeout=seconds, stop=stop,
                                      intercept=intercept, command=command)
            outcome = execute.finish_report(outcome, record.container_id, began,
                                            options.memory)
            ui.emit_json(outcome.to_json())
            code = outcome.exit_code
        else:
            outcome = execute.stream(argv, stdin=forward, timeout=seconds, stop=stop,
                                     intercept=intercept, command=command)
            outcome = execute.finish_report(outcome, record.container_id, began,
                                            options.memory)
            code = outcome.code
        # The attached client returned by itself: the container has ended (and --rm removes it).
        finished = not outcome.timed_out
        ui.report_stop(outcome, seconds, record.name)
    finally:
        sandbox.discard(store, record, container_gone=finished)
    raise typer.Exit(code)


@app.command()
def doctor(json_out: JsonOpt = False) -> None:
    """Check docker, the daemon, runtimes, the default image and the state folder."""
    from .doctor import run_checks

    checks = run_checks(_store())
    if json_out:
        ui.emit_json({"ok": all(c["ok"] for c in checks), "checks": checks})
    else:
        ui.doctor_report(checks)
    raise typer.Exit(0 if all(c["ok"] for c in checks) else 1)


def version_callback(value: bool) -> None:
    """--version."""
    if value:
        from . import __version__

        ui.data(f"sandbox {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Print each docker command line to stderr (secrets masked)."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Run untrusted code in locked-down Docker containers."""
    if verbose or os.environ.get("SANDBOX_DEBUG") == "1":
        from . import docker

        docker.set_trace(ui.trace_docker)
