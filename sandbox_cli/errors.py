"""The error hierarchy: every failure a user can cause maps to one line and one exit code."""

from __future__ import annotations

# Exit codes, documented in README.md ("Exit codes"). exec and run pass the command's own code.
EXIT_OK = 0
EXIT_PROBLEM = 1  # doctor found a problem
EXIT_HOST = 1  # the host refused a file operation (unwritable SANDBOX_HOME, disk full)
EXIT_USAGE = 2  # bad input: options, names, paths, ports, globs, durations, config files
EXIT_NOT_FOUND = 3  # no such sandbox
EXIT_FILE = 4  # a file inside a sandbox is missing or refused (link, FIFO, device, directory)
EXIT_DOCKER_UNAVAILABLE = 5  # docker binary missing, daemon down or not permitted
EXIT_IMAGE = 6  # image missing, pull failed, build failed
EXIT_DOCKER = 7  # any other docker failure
EXIT_TIMEOUT = 124  # exec/run --timeout expired (as timeout(1))
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM, e.g. a cancelled CI job (128 + signal number)


class SandboxError(Exception):
    """Base class: a failure of sandbox itself, shown as one line on stderr."""

    exit_code = EXIT_DOCKER

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SandboxError):
    """A name, path, port, glob, duration, env pair or image reference was refused."""

    exit_code = EXIT_USAGE


class ConfigError(InvalidInput):
    """A configuration file could not be used; the message names the file and line."""


class SandboxNotFound(SandboxError):
    """No sandbox by that name."""

    exit_code = EXIT_NOT_FOUND


class NameInUse(InvalidInput):
    """A sandbox (or container) by that name already exists."""


class UnsafePath(SandboxError):
    """A path inside a sandbox's folder is missing or not something we will touch."""

    exit_code = EXIT_FILE


class DockerUnavailable(SandboxError):
    """The docker CLI is missing or cannot reach the daemon. REASON is the message without
    the hint (doctor shows the reason; it must not tell you to run doctor)."""

    exit_code = EXIT_DOCKER_UNAVAILABLE

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(f"{reason} ({hint})" if hint else reason)
        self.reason = reason


class ImageError(SandboxError):
    """An image could not be found, pulled or built."""

    exit_code = EXIT_IMAGE


class DockerError(SandboxError):
    """A docker command failed for another reason; carries its argv, code and stderr."""

    exit_code = EXIT_DOCKER

    def __init__(self, message: str, argv: list[str] | None = None, returncode: int = 0,
                 stderr: str = "") -> None:
        super().__init__(message)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr = stderr


class OutputClosed(BaseException):
    """Whoever reads our stdout went away (`sandbox ls | head`): stop quietly. A
    BaseException, so typer's own EPIPE handling (exit 1) never sees it."""


class Signalled(BaseException):
    """SIGINT or SIGTERM arrived: raised from our signal handler so that `finally` blocks
    (run's purge, exec's in-container kill) still clean up. A BaseException, so no
    `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.exit_code = 128 + signum
        self.message = "interrupted" if self.exit_code == EXIT_INTERRUPTED else "terminated"
        if signum == 1:
            self.message = "hung up"
