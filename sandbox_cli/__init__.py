"""sandbox: run untrusted code in locked-down Docker containers.

The Python API (see README "Python API"): Sandbox.start() / Sandbox.attach(), list_sandboxes(),
and the SandboxError hierarchy. Its names are loaded on first use (module __getattr__), so
`import sandbox_cli` costs next to nothing and never loads typer, rich or yaml.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (~2 ms cold)

__version__ = "0.1.0"

# name -> module that defines it (relative to this package)
_LAZY = {
    "Sandbox": "api", "ExecResult": "api", "ExecStream": "api", "SandboxInfo": "api",
    "CopyResult": "api", "list_sandboxes": "api",
    "SandboxError": "errors", "InvalidInput": "errors", "ConfigError": "errors",
    "SandboxNotFound": "errors", "NameInUse": "errors", "UnsafePath": "errors",
    "DockerUnavailable": "errors", "ImageError": "errors", "DockerError": "errors",
}

__all__ = [
    "ConfigError", "CopyResult", "DockerError", "DockerUnavailable", "ExecResult", "ExecStream",
    "ImageError", "InvalidInput", "NameInUse", "Sandbox", "SandboxError", "SandboxInfo",
    "SandboxNotFound", "UnsafePath", "__version__", "list_sandboxes",
]

if TYPE_CHECKING:
    from typing import Any

    from .api import CopyResult, ExecResult, ExecStream, Sandbox, SandboxInfo, list_sandboxes
    from .errors import (
        ConfigError,
        DockerError,
        DockerUnavailable,
        ImageError,
        InvalidInput,
        NameInUse,
        SandboxError,
        SandboxNotFound,
        UnsafePath,
    )


def __getattr__(name: str) -> Any:
    """Load an API name on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandbox_cli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
