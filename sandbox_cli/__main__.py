"""Entry point: argv normalisation, then the one error boundary of the program."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from .errors import (
    EXIT_HOST,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    InvalidInput,
    OutputClosed,
    SandboxError,
    Signalled,
)

# Commands whose trailing arguments are a command line for the container; the number is how
# many positionals of ours come before it (NAME for exec, none for run).
_PASSTHROUGH_COMMANDS = {"exec": 1, "run": 0}


# Options of `docker exec` / `docker run` that people type out of habit, with what to do instead.
_DOCKER_HABITS = {
    "-i": "sandbox forwards piped stdin by itself: drop -i",
    "--interactive": "sandbox forwards piped stdin by itself: drop --interactive",
    "-it": "sandbox allocates a terminal by itself when stdin, stdout and stderr are "
           "terminals: drop -it (-t forces one)",
    "-ti": "sandbox allocates a terminal by itself when stdin, stdout and stderr are "
           "terminals: drop -ti (-t forces one)",
    # exec has its own --detach; run waits for its command
    "-d": "`sandbox run` waits for its command: `sandbox start`, then `sandbox exec --detach`",
    "--detach": "`sandbox run` waits for its command: `sandbox start`, then "
                "`sandbox exec --detach`",
    "-u": "the sandbox's user is fixed at start",
    "--user": "the sandbox's user is fixed at start",
    "--rm": "`sandbox run` always removes its sandbox",
}


def _unknown_option(arg: str, known: set[str], after_name: bool) -> InvalidInput:
    """The error for ARG, an option we do not have: a docker habit's hint, or a near miss;
    AFTER_NAME, it may have been meant for the command."""
    hint = _DOCKER_HABITS.get(arg)
    if hint is not None:
        return InvalidInput(f"unknown option {arg!r}: {hint}")
    import difflib

    close = difflib.get_close_matches(arg.split("=", 1)[0], sorted(known), n=1, cutoff=0.75)
    mean = f" (did you mean {close[0]}?)" if close else ""
    meant = "; for the command, put `--` before it" if after_name else ""
    return InvalidInput(f"unknown option {arg!r}{mean}{meant}")


def _is_known(arg: str, known: set[str], value_options: set[str]) -> bool:
    """ARG is one of our options: exactly, as --opt=value, or as a short option with its
    value attached (-w/src), or short flags run together (-tT is silly, but click takes it)."""
    if arg in known or arg.split("=", 1)[0] in known:
        return True
    if arg.startswith("--"):
        return False
    if arg[:2] in value_options:
        return True
    return all(f"-{char}" in known for char in arg[1:])


def split_command_line(args: Sequence[str], value_options: set[str], leading: int,
                       known: set[str] | None = None) -> list[str]:
    """Insert `--` where the container's command line begins, unless the user already did.

    Our own options may come before or after NAME; the first other positional starts the
    command, and everything from there on belongs to it (so `exec box node -e 'x'` never
    reads `-e` as ours). With KNOWN (all our option names), an option before the command
    that is not ours is refused with a hint (`-it`, `--timout`), not read as NAME.
    """
    out: list[str] = []
    positionals = 0
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + list(args[i:])
        if arg.startswith("-") and arg != "-":
            if known is not None and not _is_known(arg, known, value_options):
                raise _unknown_option(arg, known, positionals >= leading)
            out.append(arg)
            if arg in value_options:
                if i + 1 < len(args):
                    out.append(args[i + 1])
                i += 2
                continue
            i += 1
            continue
        if positionals >= leading:
            return [*out, "--", *args[i:]]
        positionals += 1
        out.append(arg)
        i += 1
    return out


def _normalise(argv: list[str], group: object) -> list[str]:
    """Apply split_command_line to `exec` and `run`, wherever they sit after global options."""
    commands = getattr(group, "commands", {})
    for index, arg in enumerate(argv):
        if not arg.startswith("-"):
            leading = _PASSTHROUGH_COMMANDS.get(arg)
            command = commands.get(arg)
            if leading is None or command is None:
                return argv
            value_options = {  # options that take a value (flags and counters do not)
                opt for param in command.params
                if getattr(param, "param_type_name", "") == "option"
                and not getattr(param, "is_flag", False) and not getattr(param, "count", False)
                for opt in param.opts
            }
            known = {opt for param in command.params
                     for opt in [*getattr(param, "opts", []),
                                 *getattr(param, "secondary_opts", [])]
                     if opt.startswith("-")} | {"-h", "--help"}
            return argv[: index + 1] + split_command_line(argv[index + 1 :], value_options,
                                                          leading, known)
    return argv


def _on_signal(signum: int, frame: object) -> None:
    raise Signalled(signum)


def plain_exec(args: Sequence[str]) -> tuple[str, list[str]] | None:
    """(NAME, command) when ARGS is `exec NAME [--] CMD [ARG]...` with no option of ours.

    Only argv that typer would read the same way qualifies: no global option, NAME not an
    option, and the first word after it `--` or not an option (anything else, --help or a
    missing command included, goes through typer for parsing and messages).
    """
    if len(args) < 3 or args[0] != "exec" or args[1].startswith("-"):
        return None
    command = list(args[2:])
    if command[0] == "--":
        command = command[1:]
    elif command[0].startswith("-") and command[0] != "-":
        return None
    if not command or "_SANDBOX_COMPLETE" in os.environ:  # click's completion hook
        return None
    return args[1], command


def _plain_exec(name: str, command: list[str]) -> int:
    """`sandbox exec NAME CMD...`, the hot path of pipelines, without importing typer or
    building the click group (about 20 ms of the 65 ms a typer-parsed exec adds to
    `docker exec`). cli.exec_ calls the same execute.exec_streaming."""
    from . import execute
    from .state import StateStore

    if os.environ.get("SANDBOX_DEBUG") == "1":
        from . import docker, ui

        docker.set_trace(ui.trace_docker)
    from . import ui

    outcome = execute.exec_streaming(StateStore(), name, command)
    ui.report_stop(outcome, None, name)
    return outcome.code


# The options `start` and `run` take on their fast path (plain_start), each with how many times
# it may come; any other goes to typer. The egress options are here because typer's parse
# (about 100 ms on this 2-core machine) was a third of what `--allow-host` added to a start.
_PLAIN_START_OPTIONS = {"--image": 1, "--name": 1, "--allow-host": 64,
                        "--egress-network": 1, "--proxy-image": 1}


def plain_start(args: Sequence[str]) -> tuple[str, dict[str, list[str]], list[str]] | None:
    """(VERB, {option: [value, ...]}, command) when ARGS is `start` or `run ... CMD [ARG]...`
    whose only options are those of _PLAIN_START_OPTIONS, each at most as often as it says,
    as `--opt VALUE` or `--opt=VALUE`.

    Only argv that typer would read the same way qualifies, as for plain_exec: a value that is
    empty or looks like an option, a positional after `start`, a missing command, --help and
    every other option go through typer for parsing and messages. For `run`, the first word
    that is not one of these options (or the word after `--`) starts the command, as
    split_command_line says."""
    if not args or args[0] not in ("start", "run") or "_SANDBOX_COMPLETE" in os.environ:
        return None
    verb, i = args[0], 1
    values: dict[str, list[str]] = {}
    while i < len(args):
        arg = args[i]
        if verb == "run" and (arg == "--" or arg == "-" or not arg.startswith("-")):
            break
        key, eq, value = arg.partition("=")
        if len(values.get(key, ())) >= _PLAIN_START_OPTIONS.get(key, 0):
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            i += 1
            value = args[i]
        if not value or value.startswith("-"):
            return None
        values.setdefault(key, []).append(value)
        i += 1
    command = list(args[i:])
    if verb == "start":
        return (verb, values, []) if not command else None
    if command and command[0] == "--":
        command = command[1:]
    return (verb, values, command) if command else None


def _plain_start(verb: str, values: dict[str, list[str]], command: list[str]) -> int:
    """`sandbox start` and `sandbox run CMD...` with only the options of _PLAIN_START_OPTIONS,
    without importing typer or building the click group. They do what cli.start and cli.run do
    with every other option left out: the same flags go to the same core.resolve_start."""
    from . import core, ui
    from .state import StateStore

    if os.environ.get("SANDBOX_DEBUG") == "1":
        from . import docker

        docker.set_trace(ui.trace_docker)

    def one(option: str) -> str | None:
        return values.get(option, [None])[0]

    flags: dict[str, object] = {"image": one("--image"),
                                "allow_hosts": values.get("--allow-host"),
                                "egress_network": one("--egress-network"),
                                "proxy_image": one("--proxy-image")}
    name = one("--name")
    store = StateStore()
    if verb == "start":
        from . import sandbox

        options = core.resolve_start(flags, warn=ui.warn)
        record = sandbox.start(store, options, name, progress=ui.info, report=ui.info)
        ui.data(record.name)
        return 0
    from . import execute

    options = core.resolve_start({**flags, "keep": False}, warn=ui.warn)
    forward, use_tty = execute.stdin_mode(None)
    result = core.run_once(store, options, command, name=name, stdin=forward, tty=use_tty,
                           progress=ui.info, report=ui.info)
    ui.report_stop(result.outcome, None, result.name)
    return result.exit_code


def plain_file(args: Sequence[str]) -> tuple[str, list[str]] | None:
    """(VERB, positionals) when ARGS is `read NAME PATH` or `write NAME PATH [TEXT]` with no
    option: no word that typer could read as one (a leading dash; a lone `-` as TEXT is a
    positional for typer too), and no `--`. Anything else goes through typer."""
    if not args or args[0] not in ("read", "write") or "_SANDBOX_COMPLETE" in os.environ:
        return None
    rest = list(args[1:])
    most = 2 if args[0] == "read" else 3
    if len(rest) < 2 or len(rest) > most or not all(rest):
        return None
    if any(word.startswith("-") for word in rest[:2]):
        return None
    if len(rest) == 3 and rest[2].startswith("-") and rest[2] != "-":
        return None
    return args[0], rest


def _plain_file(verb: str, words: list[str]) -> int:
    """`sandbox read NAME PATH` and `sandbox write NAME PATH [TEXT]` without typer or the
    click group (about 30 ms of a read's Python); the same filecommands body as cli.py's."""
    from . import filecommands

    if os.environ.get("SANDBOX_DEBUG") == "1":
        from . import docker, ui

        docker.set_trace(ui.trace_docker)
    if verb == "read":
        from .volume import READ_MAX_DEFAULT

        filecommands.read(words[0], words[1], READ_MAX_DEFAULT)
    else:
        filecommands.write(words[0], words[1], words[2] if len(words) == 3 else None)
    return 0


def _reopen_closed_streams() -> None:
    """Started with stdin, stdout or stderr closed (`sandbox ls >&-`), Python has None there;
    put /dev/null in its place so nothing crashes and no file we open lands on fd 0-2."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is None:
            try:
                os.fstat(fd)
            except OSError:
                os.dup2(os.open(os.devnull, os.O_RDWR), fd)
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115


def _run_typer(args: list[str]) -> int:
    """Parse ARGS with the typer app and run the command."""
    import typer

    from . import ui
    from ._click import ABORTS, CLICK_ERRORS, EXITS, USAGE_ERRORS
    from .cli import app

    group = typer.main.get_command(app)
    try:
        code = group.main(args=_normalise(args, group), prog_name="sandbox",
                          standalone_mode=False)
    except USAGE_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        ui.error(exc.format_message() + hint)  # type: ignore[attr-defined]
        return EXIT_USAGE
    except CLICK_ERRORS as exc:
        ui.error(exc.format_message())  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", 1))
    except ABORTS:
        ui.error("interrupted")
        return EXIT_INTERRUPTED
    except EXITS as exc:
        return int(getattr(exc, "exit_code", 0))
    return code if isinstance(code, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every failure a user can cause ends as one stderr line and an exit code."""
    from . import ui

    # A closed terminal (SIGHUP) or SIGQUIT must clean up as Ctrl-C does, not kill us mid-way.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, _on_signal)
    _reopen_closed_streams()
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    try:
        plain = plain_exec(args)
        if plain is not None:
            return _plain_exec(*plain)
        quick = plain_start(args)
        if quick is not None:
            return _plain_start(*quick)
        files = plain_file(args)
        return _plain_file(*files) if files is not None else _run_typer(args)
    except SandboxError as exc:
        ui.error(exc.message)
        return exc.exit_code
    except Signalled as exc:
        ui.error(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        ui.error("interrupted")
        return EXIT_INTERRUPTED
    except (BrokenPipeError, OutputClosed):
        # The reader went away (`sandbox ls | head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # the host refused something: an unwritable SANDBOX_HOME, a full disk
        where = f": {exc.filename}" if exc.filename else ""
        ui.error(f"{exc.strerror or exc}{where}")
        return EXIT_HOST


def entry() -> None:
    """Console-script target. Ends by os._exit once our streams are flushed: the
    interpreter's own teardown (freeing every module's objects) took ~16 ms of each command,
    a third of what `sandbox read` adds to the `docker cp` it runs. Nothing of ours is left
    to it: files are closed by their with-blocks, children are waited for, the threads that
    may still run are daemon threads, and no atexit handler is ours."""
    code = main()
    os._exit(_flushed(code))


def _flushed(code: int) -> int:
    """CODE once stdout and stderr are flushed. A reader that went away is not an error of
    ours (as in main); a failed write of output (a full disk under `> file`) is one line
    and EXIT_HOST, never lost in silence."""
    import contextlib  # loaded already, by ui

    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    except OSError as exc:
        with contextlib.suppress(OSError):
            sys.stderr.write(f"sandbox: error: could not write the output: "
                             f"{exc.strerror or exc}\n")
        code = code or EXIT_HOST
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    return code


if __name__ == "__main__":
    entry()
