"""AssemblyScript, compiled by ``asc`` from npm under node.

The compiler is pinned in ``sdk/assemblyscript/package.json`` and installed beside the SDK
(``npm ci --prefix <sdk>/assemblyscript``); an ``asc`` in the module's own ``node_modules``
or on PATH works too. The SDK is the package ``tinywasm`` (``--path <sdk>/assemblyscript``).
"""

from __future__ import annotations

from pathlib import Path

from tinywasm_wasi.build.toolchain import (
    SDK_DIR,
    BuildContext,
    Step,
    ToolchainMissingError,
    which,
)
from tinywasm_wasi.policy.manifest import Language

__all__ = ["AssemblyScriptToolchain"]

SDK_PACKAGES = ("assemblyscript",)
ASC = ("node_modules", "assemblyscript", "bin", "asc.js")
INSTALL_HINT = "npm ci --prefix <sdk>/assemblyscript  (the pinned compiler; needs node and npm)"


class AssemblyScriptToolchain:
    """``node asc.js <entry>.ts -O3 --debug --use abort= --path <sdk>/assemblyscript``.

    ``--use abort=`` drops the ``env.abort`` import the server does not provide (a failed
    assertion traps instead), and ``--debug`` keeps the name section for backtraces.
    """

    language = Language.ASSEMBLYSCRIPT
    source_globs: tuple[str, ...] = ("*.ts",)
    watch_globs: tuple[str, ...] = ("*.ts",)
    install_hint = INSTALL_HINT.replace("<sdk>", str(SDK_DIR))

    def find(self) -> list[str]:
        return self._asc(None)

    def _asc(self, module_dir: Path | None) -> list[str]:
        node = which("node")
        if node is None:
            raise ToolchainMissingError(
                "cannot build AssemblyScript: node is not installed (apt-get install nodejs "
                f"npm); then install the compiler with: {self.install_hint}"
            )
        places = [SDK_DIR.joinpath(*SDK_PACKAGES, *ASC)]
        if module_dir is not None:
            places.insert(0, module_dir.joinpath(*ASC))
        for asc in places:
            if asc.is_file():
                return [node, str(asc)]
        on_path = which("asc")
        if on_path is not None:
            return [on_path]
        raise ToolchainMissingError(
            "cannot build AssemblyScript: the asc compiler is not installed; install it "
            f"with: {self.install_hint}"
        )

    def steps(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[Step]:
        return [
            Step(
                [
                    *self._asc(ctx.module_dir),
                    _entry(ctx),
                    "--path",
                    str(ctx.sdk_dir.joinpath(*SDK_PACKAGES)),
                    "--use",
                    "abort=",
                    "-O3",
                    "--debug",
                    *flags,
                    "--outFile",
                    str(ctx.output),
                ]
            )
        ]


def _entry(ctx: BuildContext) -> str:
    """The entry file: ``index.ts``, ``<name>.ts``, else the first source."""
    for wanted in ("index.ts", f"{ctx.name}.ts", "main.ts"):
        for source in ctx.sources:
            if source.name == wanted:
                return str(source)
    return str(ctx.sources[0])
