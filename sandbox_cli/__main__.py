"""Entry point: argv normalisation, then the one error boundary of the program."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from .errors import EXIT_INTERRUPTED, EXIT_USAGE, SandboxError, Signalled

# Commands whose trailing arguments are a command line for the container; the number is how
# many positionals of ours come before it (NAME for exec, none for run).
_PASSTHROUGH_COMMANDS = {"exec": 1, "run": 0}


def split_command_line(args: Sequence[str], value_options: set[str], leading: int) -> list[str]:
    """Insert `--` where the container's command line begins, unless the user already did.

    Our own options may come before or after NAME; the first other positional starts the
    command, and everything from there on belongs to it (so `exec box node -e 'x'` never
    reads `-e` as ours).
    """
    out: list[str] = []
    positionals = 0
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + list(args[i:])
        if arg.startswith("-") and arg != "-":
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
            return argv[: index + 1] + split_command_line(argv[index + 1 :], value_options,
                                                          leading)
    return argv


def _on_signal(signum: int, frame: object) -> None:
    raise Signalled(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every failure a user can cause ends as one stderr line and an exit code."""
    import typer

    from . import ui
    from ._click import ABORTS, CLICK_ERRORS, EXITS, USAGE_ERRORS
    from .cli import app

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    group = typer.main.get_command(app)
    args = _normalise(list(sys.argv[1:] if argv is None else argv), group)
    code: object
    try:
        code = group.main(args=args, prog_name="sandbox", standalone_mode=False)
    except SandboxError as exc:
        ui.error(exc.message)
        code = exc.exit_code
    except Signalled as exc:
        ui.error(exc.message)
        code = exc.exit_code
    except USAGE_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        ui.error(exc.format_message() + hint)  # type: ignore[attr-defined]
        code = EXIT_USAGE
    except CLICK_ERRORS as exc:
        ui.error(exc.format_message())  # type: ignore[attr-defined]
        code = getattr(exc, "exit_code", 1)
    except ABORTS:
        ui.error("interrupted")
        code = EXIT_INTERRUPTED
    except EXITS as exc:
        code = getattr(exc, "exit_code", 0)
    except KeyboardInterrupt:
        ui.error("interrupted")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`sandbox ls | head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    return code if isinstance(code, int) else 0


def entry() -> None:
    """Console-script target."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
