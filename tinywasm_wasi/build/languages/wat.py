"""WebAssembly text, assembled by wasmtime's ``wat2wasm`` (already a dependency)."""

from __future__ import annotations

import sys

from tinywasm_wasi.build.toolchain import BuildContext, Step
from tinywasm_wasi.policy.manifest import Language

__all__ = ["WatToolchain"]


class WatToolchain:
    """``python -m tinywasm_wasi.wat2wasm -o OUT FILE.wat``: one file per module."""

    language = Language.WAT
    source_globs: tuple[str, ...] = ("*.wat",)
    watch_globs: tuple[str, ...] = ("*.wat",)
    install_hint = "pip install wasmtime  (installed with tinywasm-wasi)"

    def find(self) -> list[str]:
        return [sys.executable, "-m", "tinywasm_wasi.wat2wasm"]

    def steps(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[Step]:
        sources = (str(source) for source in ctx.sources)
        return [Step([*self.find(), *flags, "-o", str(ctx.output), *sources])]
