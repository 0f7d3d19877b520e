"""C, compiled by zig cc (``pip install ziglang``) against ``tinywasm.h``."""

from __future__ import annotations

from tinywasm_wasi.build.languages._zig import INSTALL_HINT, zig
from tinywasm_wasi.build.toolchain import BuildContext, Step
from tinywasm_wasi.policy.manifest import Language

__all__ = ["CToolchain", "reactor_args"]


def reactor_args(ctx: BuildContext, flags: tuple[str, ...], optimise: str = "-O2") -> list[str]:
    """clang arguments for a WASI reactor with a 64 KiB stack; no ``-s``: names stay."""
    return [
        "--target=wasm32-wasi",
        "-mexec-model=reactor",
        optimise,
        "-Wl,-z,stack-size=65536",
        "-I",
        str(ctx.include_dir),
        *flags,
        "-o",
        str(ctx.output),
        *(str(source) for source in ctx.sources),
    ]


class CToolchain:
    """``python -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -O2``."""

    language = Language.C
    source_globs: tuple[str, ...] = ("*.c",)
    watch_globs: tuple[str, ...] = ("*.c", "*.h")
    install_hint = INSTALL_HINT

    def find(self) -> list[str]:
        return zig("C", "cc")

    def steps(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[Step]:
        return [Step([*self.find(), *self.args(ctx, flags)])]

    def args(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[str]:
        return reactor_args(ctx, flags)
