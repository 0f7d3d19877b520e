"""What a guest language's toolchain must tell the build: the `Toolchain` protocol.

One small file per language in `tinywasm_wasi.build.languages` implements it, and
`tinywasm_wasi.build.languages.TOOLCHAINS` maps each `Language` to its toolchain. The
build (`tinywasm_wasi.build.compile`) does the rest the same way for every language:
it reads the manifest, expands placeholders, runs the command with a timeout into a
temporary file, renames it into place and checks the result as the server would.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tinywasm_wasi.config import data_dir
from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.policy.manifest import Language

__all__ = [
    "INCLUDE_DIR",
    "SDK_DIR",
    "BuildContext",
    "Step",
    "Toolchain",
    "ToolchainMissingError",
    "python_module",
    "which",
]

# tinywasm.h and friends: shipped in the package, or modules/include in a checkout.
INCLUDE_DIR = data_dir("include", "modules/include")
# The SDKs of the other languages: shipped in the package, or sdk/ in a checkout.
SDK_DIR = data_dir("sdk", "sdk")


class ToolchainMissingError(TinywasmError):
    """A language's compiler is not installed; the message names the install command."""


@dataclass(frozen=True, slots=True)
class BuildContext:
    """Where one build reads and writes; what the placeholders in a manifest expand to."""

    name: str  # the module folder's name, e.g. "chat"
    module_dir: Path  # absolute
    sources: tuple[Path, ...]  # absolute, sorted; what the source globs matched
    output: Path  # the temporary file the last step must write
    scratch: Path  # an empty folder for this build's intermediate files, removed after it
    cache_dir: Path  # a folder kept between builds, e.g. for GOCACHE (create what you use)
    include_dir: Path = INCLUDE_DIR
    sdk_dir: Path = SDK_DIR

    def placeholders(self) -> dict[str, str]:
        """The values of ``{output}``, ``{name}``, ... (``{sources}`` is expanded apart)."""
        return {
            "output": str(self.output),
            "name": self.name,
            "dir": str(self.module_dir),
            "include": str(self.include_dir),
            "sdk": str(self.sdk_dir),
            "python": sys.executable,
        }


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a build: its arguments, folder (None: the module folder), extra variables."""

    argv: list[str]
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)


class Toolchain(Protocol):
    """A guest language's compiler, as the build uses it.

    Implement it as a small class in ``tinywasm_wasi/build/languages/<language>.py`` and
    add an instance to ``TOOLCHAINS`` in ``languages/__init__.py``. Nothing in it may
    print, and the only error it raises is `ToolchainMissingError`.

    Attributes:
        language: the `Language` it builds.
        source_globs: files given to the compiler when the manifest has no ``sources``,
            relative to the module folder, e.g. ``("*.c",)``.
        watch_globs: files ``tinywasm dev`` watches when the manifest has no ``watch``,
            e.g. ``("*.c", "*.h")``.
        install_hint: the command that installs the compiler, shown when it is missing,
            e.g. ``pip install 'tinywasm-wasi[authors]'``.
    """

    language: Language
    source_globs: tuple[str, ...]
    watch_globs: tuple[str, ...]
    install_hint: str

    def find(self) -> list[str]:
        """The command that runs the compiler, e.g. ``[sys.executable, "-m", "ziglang", "cc"]``.

        Raises:
            ToolchainMissingError: it is not installed; the message says what is missing
                and ends with `install_hint`.
        """
        ...

    def steps(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[Step]:
        """The default build: commands run in order; the last one writes `ctx.output`.

        `flags` (the manifest's ``[build] flags``, placeholders expanded) go where the
        compiler takes options. Keep the name section (no ``-s``, no strip): backtraces
        name the guest's functions with it. Intermediate files go in `ctx.scratch`.

        Raises:
            ToolchainMissingError: as `find`.
        """
        ...


def which(program: str) -> str | None:
    """The full path of `program` on PATH, or None."""
    return shutil.which(program)


def python_module(module: str) -> bool:
    """True if `module` can be imported by this Python (e.g. ``ziglang``)."""
    return importlib.util.find_spec(module) is not None
