"""Building guest modules in every language: manifest, toolchains, the check, the dev loop.

`build_module(Path("modules/chat"), out_dir)` builds one module folder (see
`tinywasm_wasi.build.compile`); its manifest is `module.toml`
(`tinywasm_wasi.policy.manifest`); each language's compiler is a `Toolchain`
(`tinywasm_wasi.build.toolchain`, one file per language in `languages/`).
"""

from __future__ import annotations

from tinywasm_wasi.build.compile import BuildError, BuildResult, build_module, load_manifest
from tinywasm_wasi.build.toolchain import INCLUDE_DIR, SDK_DIR, Toolchain, ToolchainMissingError
from tinywasm_wasi.policy.manifest import MANIFEST_FILE, Language, Manifest

__all__ = [
    "INCLUDE_DIR",
    "MANIFEST_FILE",
    "SDK_DIR",
    "BuildError",
    "BuildResult",
    "Language",
    "Manifest",
    "Toolchain",
    "ToolchainMissingError",
    "build_module",
    "load_manifest",
]
