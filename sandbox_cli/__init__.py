"""sandbox: run untrusted code in locked-down Docker containers."""

__version__ = "0.1.0"
