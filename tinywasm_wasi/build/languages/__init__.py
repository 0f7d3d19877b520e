"""The guest languages `tinywasm build` compiles: one `Toolchain` per `Language`.

To add a language, write ``<language>.py`` with a class that implements
`tinywasm_wasi.build.toolchain.Toolchain` and add an instance here.
"""

from __future__ import annotations

from collections.abc import Mapping

from tinywasm_wasi.build.languages.assemblyscript import AssemblyScriptToolchain
from tinywasm_wasi.build.languages.c import CToolchain
from tinywasm_wasi.build.languages.cpp import CppToolchain
from tinywasm_wasi.build.languages.go import GoToolchain
from tinywasm_wasi.build.languages.rust import RustToolchain
from tinywasm_wasi.build.languages.wat import WatToolchain
from tinywasm_wasi.build.languages.zig import ZigToolchain
from tinywasm_wasi.build.toolchain import Toolchain
from tinywasm_wasi.policy.manifest import Language

__all__ = ["TOOLCHAINS", "toolchain"]

TOOLCHAINS: Mapping[Language, Toolchain] = {
    t.language: t
    for t in (
        CToolchain(),
        CppToolchain(),
        ZigToolchain(),
        RustToolchain(),
        GoToolchain(),
        AssemblyScriptToolchain(),
        WatToolchain(),
    )
}


def toolchain(language: Language) -> Toolchain | None:
    """The toolchain that builds `language`, or None if this build has none yet."""
    return TOOLCHAINS.get(language)
