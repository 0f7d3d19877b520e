"""The ``ziglang`` package from PyPI: the compiler behind C, C++ and Zig."""

from __future__ import annotations

import sys

from tinywasm_wasi.build.toolchain import ToolchainMissingError, python_module

__all__ = ["INSTALL_HINT", "zig"]

INSTALL_HINT = "pip install 'tinywasm-wasi[authors]'  (or: pip install ziglang)"


def zig(language: str, *subcommand: str) -> list[str]:
    """``python -m ziglang <subcommand>``.

    Raises:
        ToolchainMissingError: ziglang is not installed in this Python.
    """
    if not python_module("ziglang"):
        raise ToolchainMissingError(
            f"cannot build {language}: the zig compiler (the ziglang package) is not "
            f"installed in this Python; install it with: {INSTALL_HINT}"
        )
    return [sys.executable, "-m", "ziglang", *subcommand]
