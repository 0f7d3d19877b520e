"""Rust, compiled by a ``rustc`` that has the WebAssembly/WASI standard library.

Debian: ``apt-get install rustc libstd-rust-dev-wasm32`` (target ``wasm32-wasi``); rustup:
``rustup target add wasm32-wasip1``. No cargo: the SDK (``sdk/rust``) is compiled once into
an rlib, kept in the build cache, and the module is a ``cdylib`` that uses it as crate
``tinywasm``.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from tinywasm_wasi.build.toolchain import BuildContext, Step, ToolchainMissingError, which
from tinywasm_wasi.policy.manifest import Language

__all__ = ["RustToolchain"]

INSTALL_HINT = (
    "apt-get install rustc libstd-rust-dev-wasm32  (Debian; or with rustup: "
    "rustup target add wasm32-wasip1)"
)
# Newer Rust calls WASI preview 1 wasm32-wasip1; Rust before 1.78 (Debian's) wasm32-wasi.
TARGETS = ("wasm32-wasip1", "wasm32-wasi")
# rustup's rustc first (newer), then the distribution's.
CANDIDATES = ("rustc", "/usr/bin/rustc")
SDK_CRATE = ("rust", "src", "lib.rs")
EDITION = "2021"
_PROBE_TIMEOUT_S = 30.0


def _target(rustc: str) -> str | None:
    """The WASI target `rustc` has a standard library for, or None."""
    try:
        sysroot = subprocess.run(
            [rustc, "--print", "sysroot"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    for target in TARGETS:
        if (Path(sysroot) / "lib" / "rustlib" / target / "lib").is_dir():
            return target
    return None


class RustToolchain:
    """``rustc --target wasm32-wasi(p1) --crate-type cdylib -O`` with the SDK as a crate.

    libc's ``malloc`` and ``free`` are exported with ``--export`` link arguments: Rust's
    standard library allocates with them on WASI, and a Rust function named ``malloc``
    or ``free`` would clash with wasi-libc's (``duplicate symbol``).
    """

    language = Language.RUST
    source_globs: tuple[str, ...] = ("*.rs", "src/*.rs")
    watch_globs: tuple[str, ...] = ("*.rs", "src/*.rs")
    install_hint = INSTALL_HINT

    def find(self) -> list[str]:
        return [self._rustc()[0]]

    def _rustc(self) -> tuple[str, str]:
        seen = []
        for candidate in CANDIDATES:
            rustc = which(candidate)
            if rustc is None or rustc in seen:
                continue
            seen.append(rustc)
            target = _target(rustc)
            if target is not None:
                return rustc, target
        found = f" ({', '.join(seen)} has no WASI standard library)" if seen else ""
        raise ToolchainMissingError(
            f"cannot build Rust: no rustc with the {' or '.join(TARGETS)} target{found}; "
            f"install it with: {INSTALL_HINT}"
        )

    def steps(self, ctx: BuildContext, flags: tuple[str, ...]) -> list[Step]:
        rustc, target = self._rustc()
        common = ["--edition", EDITION, "--target", target, "-O", "-C", "strip=debuginfo"]
        steps: list[Step] = []
        sdk = ctx.sdk_dir.joinpath(*SDK_CRATE)
        extern: list[str] = []
        if sdk.is_file():
            rlib_dir = self._sdk_cache(ctx, rustc, target, sdk.parent)
            rlib = rlib_dir / "libtinywasm.rlib"
            if not rlib.is_file():
                rlib_dir.mkdir(parents=True, exist_ok=True)
                steps.append(
                    Step(
                        [
                            rustc,
                            *common,
                            "--crate-type",
                            "rlib",
                            "--crate-name",
                            "tinywasm",
                            str(sdk),
                            "--out-dir",
                            str(rlib_dir),
                        ]
                    )
                )
            extern = ["--extern", f"tinywasm={rlib}", "-L", str(rlib_dir)]
        steps.append(
            Step(
                [
                    rustc,
                    *common,
                    "--crate-type",
                    "cdylib",
                    "--crate-name",
                    "module",
                    "-C",
                    "link-arg=--export=malloc",
                    "-C",
                    "link-arg=--export=free",
                    *extern,
                    *flags,
                    _root(ctx),
                    "-o",
                    str(ctx.output),
                ]
            )
        )
        return steps

    @staticmethod
    def _sdk_cache(ctx: BuildContext, rustc: str, target: str, sdk_src: Path) -> Path:
        """The SDK rlib's folder, named by what it was built from (compiler, target, source)."""
        digest = hashlib.sha256(f"{Path(rustc).resolve()}\0{target}\0".encode())
        for source in sorted(sdk_src.glob("*.rs")):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
        return ctx.cache_dir / "rust" / digest.hexdigest()[:16]


def _root(ctx: BuildContext) -> str:
    """The crate root: ``lib.rs`` (or ``src/lib.rs``), ``<name>.rs``, else the first source."""
    for wanted in ("lib.rs", f"{ctx.name}.rs", "main.rs"):
        for source in ctx.sources:
            if source.name == wanted:
                return str(source)
    return str(ctx.sources[0])
