"""Zig (``pip install ziglang``), with the SDK ``sdk/zig/tinywasm.zig`` as module ``tinywasm``."""

from __future__ import annotations

from tinywasm_wasi.build.languages._zig import INSTALL_HINT, zig
from tinywasm_wasi.build.toolchain import BuildContext, Step
from tinywasm_wasi.policy.manifest import Language

__all__ = ["ZigToolchain"]

SDK_FILE = ("zig", "tinywasm.zig")


class ZigToolchain:
    """``zig build-exe -target wasm32-wasi -fno-entry -rdynamic -O ReleaseSmall``.

    The first source is the root; ``@import("tinywasm")`` reaches the SDK when it is there.
    """

    language = Language.ZIG
    source_globs: tuple[str, ...] = ("*.zig",)
    watch_globs: tuple[str, ...] = ("*.zig",)
    install_hint = INSTALL_HINT

    def find(self) -> list[str]:
        return zig("Zig", "build-exe")

    def steps(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[Step]:
        return [Step([*self.find(), *self.args(ctx, flags)])]

    def args(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[str]:
        root = _root(ctx)
        sdk = ctx.sdk_dir.joinpath(*SDK_FILE)
        modules = ["-Mroot=" + str(root)]
        if sdk.is_file():
            modules = ["--dep", "tinywasm", *modules, "-Mtinywasm=" + str(sdk)]
        return [
            "-target",
            "wasm32-wasi",
            "-fno-entry",
            "-rdynamic",
            "-O",
            "ReleaseSmall",
            "-fno-strip",  # keep the name section for backtraces
            f"-femit-bin={ctx.output}",
            *flags,
            *modules,
        ]


def _root(ctx: BuildContext) -> str:
    """The root source: ``main.zig`` or ``<name>.zig`` if there, else the first one."""
    for wanted in ("main.zig", f"{ctx.name}.zig"):
        for source in ctx.sources:
            if source.name == wanted:
                return str(source)
    return str(ctx.sources[0])
