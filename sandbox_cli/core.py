"""The rules every face (CLI, Python API, MCP server) shares and would otherwise copy: how
start options are settled from flags, config files and SANDBOX_* variables, how env pairs and
timeouts are read, and `run`'s whole life (create, copy, start attached, stop, discard).

Nothing here prints or exits: values come back, failures raise SandboxError subclasses, and
talk goes to the callbacks the caller passes (the CLI passes ui.info / ui.warn).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import docker, execute, sandbox, validate
from .errors import InvalidInput
from .state import StateStore

if TYPE_CHECKING:  # config imports nothing heavy, but exec and read never need it
    from .config import StartOptions

Talk = Callable[[str], None]  # one line for a person (progress or warning)


def env_pairs(values: Iterable[str] | None,
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """KEY=VALUE strings (or KEY, taking ENVIRON's value, default os.environ) as a dict."""
    host = dict(os.environ if environ is None else environ)
    return dict(validate.env_pair(v, host) for v in values or [])


def env_mapping(values: Mapping[str, str] | None) -> dict[str, str]:
    """A {KEY: VALUE} mapping checked as `-e KEY=VALUE` is (names, NUL, line breaks, size)."""
    pairs: dict[str, str] = {}
    for key, value in (values or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidInput(f"invalid environment variable {key!r}: names and values "
                               "must be strings")
        if "=" in key:
            raise InvalidInput(f"invalid environment variable {key!r}: expected KEY=VALUE")
        pairs.update([validate.env_pair(f"{key}={value}", {})])
    return pairs


def timeout_seconds(value: str | float | None) -> float | None:
    """A timeout as given: seconds (a number, or its text) or a duration such as 5m."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"invalid timeout {value!r}: expected a positive number of seconds")
    if isinstance(value, (int, float)):
        return validate.timeout(float(value))
    try:
        return validate.timeout(float(value))
    except ValueError:
        return float(validate.duration(value))


def resolve_start(flags: Mapping[str, Any], warn: Talk | None = None,
                  use_config: bool = True) -> StartOptions:
    """The options a start uses: FLAGS (None = not given) over SANDBOX_* variables over the
    project file (sandbox.yaml) over the user file over the defaults, every value checked.
    WARN hears of a file ignored (another user's) and of a project file that loosens the
    defaults. Without USE_CONFIG, files and variables are skipped: FLAGS over the defaults."""
    from . import config

    if not use_config:
        checked = {key: config._CONVERTERS[key](value) for key, value in flags.items()
                   if value is not None}
        return config._apply(config.StartOptions(), checked)
    resolved = config.resolve(flags)
    for path in resolved.ignored:
        if warn:
            warn(f"ignoring {path}: it is owned by another user")
    if resolved.loosened_by_project and warn:
        project = resolved.files[-1]
        settings = ", ".join(config.describe(key, getattr(resolved.options, key))
                             for key in resolved.loosened_by_project)
        warn(f"{project} loosens the defaults: {settings}")
    return resolved.options


class RunResult:
    """How `run` went: the sandbox it used (gone now), and the command's outcome. (A plain
    class, as the other records on the path of start and run: see state.SandboxRecord.)"""

    __slots__ = ("code", "name", "outcome")

    def __init__(self, name: str, outcome: execute.Outcome | execute.ExecResult,
                 code: int | None = None) -> None:
        self.name, self.outcome = name, outcome
        self.code = code  # what an AFTER step (run_once) made of the command's code

    @property
    def exit_code(self) -> int:
        """The command's exit code (124 on timeout), or what the AFTER step made of it."""
        return self.code if self.code is not None else _code(self.outcome)


def _code(outcome: execute.Outcome | execute.ExecResult) -> int:
    return outcome.exit_code if isinstance(outcome, execute.ExecResult) else outcome.code


def _blame_handoff_too(outcome: execute.Outcome | execute.ExecResult
                       ) -> execute.Outcome | execute.ExecResult:
    """With --allow-host, `run`'s first program is the egress handoff (by the image's
    python3): a "not found" may be it, not the command."""
    hint = " (or python3, which --allow-host's handoff runs first)"
    if isinstance(outcome, execute.ExecResult):
        outcome.not_started += hint
        outcome.stderr = f"{execute.PREFIX}{outcome.not_started}\n".encode()
        return outcome
    return outcome._replace(not_started=outcome.not_started + hint)


def run_once(store: StateStore, options: StartOptions, command: Sequence[str], *,
             name: str | None = None, patterns: Sequence[str] = (),
             workdir: str | None = None, timeout: float | None = None,
             stdin: bool = False, tty: bool = False, captured: bool = False,
             progress: Talk | None = None, report: Talk | None = None,
             copied: Callable[[sandbox.CopySummary], None] | None = None,
             after: Callable[[str, int], int] | None = None) -> RunResult:
    """`run`: a one-shot sandbox whose main process is COMMAND (sandbox.create_one_shot),
    PATTERNS copied in first (COPIED hears the summary), started attached (STDIN: ours is
    forwarded), streamed to our stdout/stderr or CAPTURED, stopped at TIMEOUT, and always
    discarded, also on failure or signal. AFTER(name, code), when given, runs once the command
    has ended (timed out too) and before the discard, and returns the exit code to report
    (run --copy-out)."""
    if captured and tty:
        raise InvalidInput("--json keeps stdout and stderr apart: it cannot use --tty")
    record = sandbox.create_one_shot(store, options, command, name=name, workdir=workdir,
                                     stdin=stdin, tty=tty, progress=progress, report=report)
    finished = False
    try:
        if patterns:
            summary = sandbox.copy_to(store, record.name, patterns)
            if copied:
                copied(summary)
        argv = docker.start_attached_argv(record.name, stdin=stdin)

        def stop() -> bool:  # the command is the container's main process: end the container
            sandbox.remove_container(sandbox.container_ref(record))
            return True

        # run's TTL shell (docker.TTL_SCRIPT) says so on stderr when the command cannot start
        intercept = None if tty else (2, execute.TTL_MARKER)
        began = time.time()
        outcome: execute.Outcome | execute.ExecResult
        if captured:
            outcome = execute.finish_report(
                execute.capture(argv, stdin=stdin, timeout=timeout, stop=stop,
                                intercept=intercept, command=command),
                record.container_id, began, options.memory)
        else:
            outcome = execute.finish_report(
                execute.stream(argv, stdin=stdin, timeout=timeout, stop=stop,
                               intercept=intercept, command=command),
                record.container_id, began, options.memory)
        if outcome.not_started and _code(outcome) == 127:
            from . import egress  # (on this failure path only)

            if egress.hands_off_in_sandbox(record):
                outcome = _blame_handoff_too(outcome)
        # The attached client returned by itself: the container has ended (and --rm removes it).
        finished = not outcome.timed_out
        result = RunResult(record.name, outcome)
        if after is not None:
            result.code = after(record.name, result.exit_code)
    finally:
        sandbox.discard(store, record, container_gone=finished)
    return result
