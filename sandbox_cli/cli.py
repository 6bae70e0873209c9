"""The typer app. Each command parses its flags, calls one operation and renders the result."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from . import config, core, execute, sandbox, ui, validate
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
StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", metavar="KIND",
                 help="Where /app lives: auto (a host folder when the engine sees this "
                 "host's files, else an engine volume), bind or volume [default: auto]."),
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
        "--proxy-image", metavar="IMAGE",
        help="Image with python3 (3.10+) to run the egress proxy; another than the sandbox's "
        "also runs its port holder [default: the sandbox's image]."
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
        "storage": (record.workspace or {}).get("kind", "bind"),
        "network": record.network,
        "ports": record.ports,
        "keep": record.keep,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "allow_hosts": sandbox.allowed_hosts(record),
    }


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
    storage: str | None = None,
    egress: dict[str, Any] | None = None,
) -> config.StartOptions:
    flags: dict[str, Any] = {  # None: not given; core.resolve_start checks every given value
        "image": image, "network": network, "ports": port or None,
        "env": core.env_pairs(env) if env else None, "keep": keep, "ttl": ttl,
        "memory": memory, "cpus": cpus, "pids": pids, "read_only": read_only,
        "runtime": runtime, "cap_add": cap_add or None, "tmpfs_size": tmpfs_size, "disk": disk,
        "storage": storage,
        **(egress or {}),
    }
    return core.resolve_start(flags, warn=ui.warn)


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
    storage: StorageOpt = None,
    allow_host: AllowHostOpt = None,
    egress_network: EgressNetworkOpt = None,
    proxy_image: ProxyImageOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a sandbox and print its name (NAME=$(sandbox start))."""
    options = _resolve_start(
        image, network, port, env, keep, ttl, memory, cpus, pids_limit, read_only, runtime, cap_add,
        tmpfs_size, disk, storage, _egress_flags(allow_host, egress_network, proxy_image),
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
    detach: Annotated[
        bool,
        typer.Option("--detach", "-d",
                     help="Run in the background and print its id (see `sandbox logs`, "
                     "`sandbox kill`)."),
    ] = False,
) -> None:
    """Run a command in a sandbox; exits with its exit code (124 on timeout)."""
    seconds = core.timeout_seconds(timeout)
    pairs = core.env_pairs(env)
    directory = validate.container_dir(workdir) if workdir else None
    if detach:
        _exec_detached(name, command, pairs, directory, seconds, tty, json_out)
        return
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


def _exec_detached(name: str, command: list[str], env: dict[str, str], workdir: str | None,
                   seconds: float | None, tty: bool | None, json_out: bool) -> None:
    """`exec --detach`: start COMMAND behind a relay (background.py); print its id."""
    if seconds is not None:
        raise InvalidInput("--detach runs until `sandbox kill`: it cannot take --timeout")
    if tty:
        raise InvalidInput("--detach has no terminal: it cannot take --tty")
    from . import background

    ident = background.launch(_store(), name, command, env=env, workdir=workdir)
    if json_out:
        ui.emit_json({"name": name, "id": ident})
    else:
        ui.data(ident)


@app.command()
def logs(
    name: NameArg,
    ident: Annotated[
        str | None, typer.Argument(metavar="[ID]",
                                   help="Detached process [default: the latest].")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing output until it ends.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", metavar="N", min=0,
                                 help="Only the last N lines of each stream.")
    ] = None,
) -> None:
    """Show a detached process's output (stdout to stdout, stderr to stderr; the last 1 MiB)."""
    from . import background

    background.show_logs(_store(), name, ident, tail=tail, follow=follow)


@app.command()
def kill(
    name: NameArg,
    ident: Annotated[str, typer.Argument(metavar="ID", help="Detached process id.")],
    json_out: JsonOpt = False,
) -> None:
    """End a detached process and everything it started."""
    from . import background

    status = background.kill(_store(), name, ident)
    if json_out:
        ui.emit_json(status)
        return
    code = status.get("exit_code")
    ui.info(f"{name}/{ident}: ended" + (f" (exit code {code})" if code is not None else ""))


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
    from . import filecommands

    filecommands.write(name, path, text)


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
    from . import filecommands
    from .volume import parse_size

    filecommands.read(name, path, parse_size(max_size))


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


@app.command("copy-from")
def copy_from(
    name: NameArg,
    pattern: Annotated[
        str, typer.Argument(metavar="PATTERN", help="gitignore-style glob, e.g. 'out/**'.")
    ],
    dest: Annotated[
        str, typer.Argument(metavar="[DEST]", help="Host folder (made when missing).")
    ] = ".",
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude", metavar="PATTERN", help="Leave out files matching this glob. Repeatable."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite files that exist in DEST.")
    ] = False,
    max_size: Annotated[
        str, typer.Option("--max-size", metavar="SIZE", help="Skip files larger than this.")
    ] = "1g",
    max_total: Annotated[
        str, typer.Option("--max-total", metavar="SIZE",
                          help="Stop before copying more than this in all.")
    ] = "4g",
    json_out: JsonOpt = False,
) -> None:
    """Copy files matching PATTERN under /app to host folder DEST, keeping their paths."""
    from . import export
    from .volume import parse_size

    summary = export.copy_from(
        _store(), name, [pattern], dest, exclude or [], force=force,
        max_size=parse_size(max_size), max_total=parse_size(max_total),
    )
    if summary.unmatched and not summary.files and not summary.skipped.total():
        raise InvalidInput(f"no files match {pattern!r} under /app")
    if json_out:
        ui.emit_json(summary.to_json())
    else:
        ui.info(export.summary_line(summary))


@app.command("diff")
def diff(
    name: NameArg,
    stat: Annotated[
        bool, typer.Option("--stat", help="One line a changed file, then the totals.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the changed files as JSON.")
    ] = False,
) -> None:
    """Show what changed under /app since copy-to, as a git patch (`| git apply` takes it)."""
    from . import diffing

    store = _store()
    if stat or json_out:
        result = diffing.diff(store, name, None)
        if json_out:
            ui.emit_json({"files": [c.to_json() for c in result.changes],
                          "skipped": result.skipped.as_dict()})
        else:
            for line in diffing.stat_lines(result.changes):
                ui.data(ui.printable(line))
    else:
        out = sys.stdout.buffer

        def emit(lines: list[bytes]) -> None:
            out.writelines(lines)

        with ui.writing_stdout():
            sys.stdout.flush()
            result = diffing.diff(store, name, emit)
            out.flush()
    for note in result.notes:
        ui.info(note)
    if not result.recorded:
        ui.warn(f"nothing was copied into {name} with copy-to: every file shows as added")
    if result.skipped.total():
        ui.info(f"not compared: {result.skipped.text()}")


@app.command()
def disconnect(name: NameArg, json_out: JsonOpt = False) -> None:
    """Detach a sandbox from every network; published ports stop answering."""
    store = _store()
    record = store.get(name)
    proxied = record is not None and "allow_hosts" in record.options  # (dropped once ended)
    left = sandbox.disconnect(store, name)
    if json_out:
        ui.emit_json({"name": name, "disconnected": left})
        return
    if proxied:
        ui.info(f"{name}: egress proxy removed: nothing goes out")
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
    snapshots: Annotated[
        bool, typer.Option("--snapshots",
                           help="Remove this home's snapshot images instead (with --all: "
                           "after every sandbox).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove sandboxes: with names, those; with none, every one not started with --keep."""
    if names and everything:
        raise InvalidInput("give names or --all, not both")
    if names and snapshots:
        raise InvalidInput("give names or --snapshots, not both")
    if snapshots:
        _purge_snapshots(everything, json_out)
        return
    removed = sandbox.purge(_store(), names or [], everything, report=ui.info)
    if json_out:
        ui.emit_json({"removed": removed})
    else:
        ui.info(
            f"removed {ui.plural(len(removed), 'sandbox', 'sandboxes')}"
            + (f": {', '.join(removed)}" if removed else "")
        )


def _purge_snapshots(everything: bool, json_out: bool) -> None:
    """`purge --snapshots [--all]`: snapshot images (after every sandbox with --all)."""
    from . import snapshots

    store = _store()
    gone = sandbox.purge(store, [], True, report=ui.info) if everything else []
    images = snapshots.purge_snapshots(store, report=ui.info)
    if json_out:
        ui.emit_json({"removed": gone, "images": images})
        return
    if everything:
        ui.info(f"removed {ui.plural(len(gone), 'sandbox', 'sandboxes')}"
                + (f": {', '.join(gone)}" if gone else ""))
    ui.info(f"removed {ui.plural(len(images), 'snapshot image')}"
            + (f": {', '.join(images)}" if images else ""))


@app.command("ls")
def list_(
    json_out: JsonOpt = False,
    snapshots: Annotated[
        bool, typer.Option("--snapshots", help="List this home's snapshot images instead.")
    ] = False,
) -> None:
    """List sandboxes: a table on a terminal (relative expiry), tab-separated lines when piped."""
    if snapshots:
        _list_snapshots(json_out)
        return
    store = _store()
    rows = sandbox.list_sandboxes(store, report=ui.info, processes=json_out)
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
    for row in rows:  # host and reason come from what the sandbox sent: printable only
        reason = f"\t{ui.printable(row['reason'])}" if row["reason"] else ""
        ui.data(f"{ui.printable(row['time'])}\t{row['verdict']}\t"
                f"{ui.printable(row['host'])}:{row['port']}{reason}")
    if not rows:
        ui.info(f"{name}: no attempts yet")


def _list_snapshots(json_out: bool) -> None:
    from . import snapshots

    rows = snapshots.list_snapshots(_store())
    if json_out:
        ui.emit_json(rows)
        return
    for row in rows:  # tag (or id), source sandbox, when, size: tab-separated
        ui.data("\t".join(ui.printable(str(v)) for v in (
            ",".join(row["tags"]) or row["id"], row["source"] or "-", row["created_at"] or "-",
            ui.human_bytes(row["size"]))))


@app.command()
def snapshot(
    name: NameArg,
    tag: Annotated[
        str | None, typer.Option("--tag", metavar="TAG",
                                 help="Image tag [default: sandbox-snapshot/NAME:TIME].")
    ] = None,
    max_total: Annotated[
        str, typer.Option("--max-total", metavar="SIZE",
                          help="Refuse a /app holding more file data than this.")
    ] = "4g",
    json_out: JsonOpt = False,
) -> None:
    """Save a sandbox's container and its /app as an image; prints the tag (start --image TAG)."""
    from . import snapshots
    from .volume import parse_size

    made = snapshots.snapshot(_store(), name, tag, max_total=parse_size(max_total))
    if json_out:
        ui.emit_json(made.to_json())
        return
    skipped = sum(made.walked.skipped.values())
    ui.info(f"snapshot of {name}: {ui.plural(made.walked.files, 'file')} "
            f"({ui.human_bytes(made.walked.bytes)})"
            + (f", skipped {skipped} (links, FIFOs, devices, ...)" if skipped else ""))
    ui.data(made.tag)


@app.command()
def pause(name: NameArg) -> None:
    """Freeze a sandbox's processes (no CPU); exec is refused until `sandbox resume`."""
    from . import pausing

    changed = pausing.pause(_store(), name)
    ui.info(f"{name}: paused" + ("" if changed else " (already)"))


@app.command()
def resume(name: NameArg) -> None:
    """Thaw a paused sandbox."""
    from . import pausing

    changed = pausing.resume(_store(), name)
    ui.info(f"{name}: resumed" + ("" if changed else " (was not paused)"))


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
    storage: StorageOpt = None,
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
    copy_out: Annotated[
        list[str] | None,
        typer.Option(
            "--copy-out",
            metavar="PATTERN",
            help="After the command (whatever its exit code), copy files under /app matching "
            "this glob to --copy-out-dest. Repeatable.",
        ),
    ] = None,
    copy_out_dest: Annotated[
        str,
        typer.Option("--copy-out-dest", metavar="DIR",
                     help="Host folder for --copy-out [default: the current directory]."),
    ] = ".",
    timeout: TimeoutOpt = None,
    workdir: WorkdirOpt = None,
    tty: TtyOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the exec result as JSON.")
    ] = False,
) -> None:
    """Start, copy, exec and purge in one: exits with the command's code, always cleans up."""
    seconds = core.timeout_seconds(timeout)
    directory = validate.container_dir(workdir) if workdir else None
    from .selection import pattern

    patterns = [pattern(p) for p in copy or []]
    out_patterns = [pattern(p) for p in copy_out or []]
    options = _resolve_start(
        image, network, port, env, False, ttl, memory, cpus, pids_limit, read_only, runtime,
        cap_add, tmpfs_size, disk, storage,
        _egress_flags(allow_host, egress_network, proxy_image),
    )
    if json_out and tty:
        raise InvalidInput("--json keeps stdout and stderr apart: it cannot use --tty")
    forward, use_tty = execute.stdin_mode(tty)
    if json_out:  # no terminal: stdout and stderr must stay apart
        forward, use_tty = forward and not sys.stdin.isatty(), False
    result = core.run_once(_store(), options, command, name=name, patterns=patterns,
                           workdir=directory, timeout=seconds, stdin=forward, tty=use_tty,
                           captured=json_out, progress=ui.info, report=ui.info,
                           copied=lambda summary: _report_copy(summary, False),
                           after=(lambda box, code: _copy_out(_store(), box, out_patterns,
                                                              copy_out_dest, code))
                           if out_patterns else None)
    if isinstance(result.outcome, execute.ExecResult):
        ui.emit_json(result.outcome.to_json())
    ui.report_stop(result.outcome, seconds, result.name)
    raise typer.Exit(result.exit_code)


def _copy_out(store: StateStore, name: str, patterns: list[str], dest: str, code: int) -> int:
    """run --copy-out: copy-from NAME's /app; the exit code stays the command's, unless the
    command succeeded and the copy failed (then the failure's own code)."""
    from . import export
    from .errors import SandboxError

    try:
        summary = export.copy_from(store, name, patterns, dest)
    except SandboxError as exc:
        ui.error(f"--copy-out: {exc.message}")
        return code or exc.exit_code
    for text in summary.unmatched:
        ui.warn(f"--copy-out: no files match {text!r} under /app")
    ui.info(export.summary_line(summary))
    return code


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


@app.command("mcp")
def mcp_server(
    image: Annotated[
        list[str] | None,
        typer.Option("--image", metavar="IMAGE",
                     help="An image the client may start (the first is the default). "
                     "Repeatable [default: the configured image]."),
    ] = None,
    network: Annotated[
        bool, typer.Option("--network", help="Let the client ask for a network and ports.")
    ] = False,
    max_sandboxes: Annotated[
        int, typer.Option("--max-sandboxes", metavar="N", help="Sandboxes at once.")
    ] = 8,
    root: Annotated[
        str | None,
        typer.Option("--root", metavar="DIR",
                     help="The only host folder copy_to reads [default: the current directory]."),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option("--allow-host", metavar="HOST[:PORT]",
                     help="A host the client may let a sandbox reach (its allow_hosts). "
                     "Repeatable."),
    ] = None,
    egress_network: EgressNetworkOpt = None,
) -> None:
    """Serve the Model Context Protocol on stdio (needs `pip install 'sandbox-cli[mcp]'`)."""
    from . import mcp_server as server

    raise typer.Exit(server.serve(image or [], network, max_sandboxes, root, allow_host or [],
                                  egress_network))


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
