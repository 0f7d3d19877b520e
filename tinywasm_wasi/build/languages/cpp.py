"""C++, compiled by zig c++ (``pip install ziglang``) against ``tinywasm.h``."""

from __future__ import annotations

from tinywasm_wasi.build.languages._zig import INSTALL_HINT, zig
from tinywasm_wasi.build.languages.c import reactor_args
from tinywasm_wasi.build.toolchain import BuildContext, Step
from tinywasm_wasi.policy.manifest import Language

__all__ = ["CppToolchain"]


class CppToolchain:
    """``python -m ziglang c++``, as C plus no exceptions (WASI has no unwinding)."""

    language = Language.CPP
    source_globs: tuple[str, ...] = ("*.cpp", "*.cc", "*.cxx", "*.c")
    watch_globs: tuple[str, ...] = ("*.cpp", "*.cc", "*.cxx", "*.c", "*.h", "*.hpp")
    install_hint = INSTALL_HINT

    def find(self) -> list[str]:
        return zig("C++", "c++")

    def steps(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[Step]:
        return [Step([*self.find(), *self.args(ctx, flags)])]

    def args(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[str]:
        return reactor_args(ctx, ("-fno-exceptions", *flags))
