"""Build the SDK examples (examples/<lang>/<example>/) once per test session.

Every language has the same three examples: ``relay``, ``http_json`` and ``counter`` (WAT,
written by hand, has no ``http_json``: it would mean a CBOR reader in WebAssembly text). Go
also has ``refstyle``, written the way the Go reference's users write modules.
`built(lang, base)` compiles every example folder of a language with its real toolchain,
through ``tinywasm build``'s own build, into ``<base>/<lang>/``. Several xdist workers
share `base` (the session's common temporary folder), so each language is built once per
session: the first worker to take the language's lock builds it, the others wait and reuse.

A language whose toolchain is not installed is skipped, with the install command; with
``TINYWASM_REQUIRE_TOOLCHAINS=1`` (CI) that is a failure instead.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from tinywasm_wasi.build import Language, ToolchainMissingError, build_module
from tinywasm_wasi.build.languages import toolchain
from tinywasm_wasi.policy.authoring import Problem

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = ("relay", "http_json", "counter")
LANGS = ("c", "cpp", "zig", "rust", "go", "assemblyscript", "wat")
HTTP_LANGS = tuple(lang for lang in LANGS if (EXAMPLES_DIR / lang / "http_json").is_dir())
# Relays that answer "who" (message_sender, guest interface version 2).
SENDER_LANGS = ("c", "zig", "rust", "go", "assemblyscript")
DONE = ".built"
REQUIRE = "TINYWASM_REQUIRE_TOOLCHAINS"
REFERENCE_WARNINGS = {Problem.NO_FREE}


def require_toolchain(lang: str) -> None:
    """Skip the test if `lang`'s compiler is missing (fail under TINYWASM_REQUIRE_TOOLCHAINS)."""
    chain = toolchain(Language(lang))
    assert chain is not None, f"no toolchain for {lang}"
    try:
        chain.find()
    except ToolchainMissingError as exc:
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{REQUIRE}=1 but {exc}")
        pytest.skip(str(exc))


def built(lang: str, base: Path) -> Path:
    """The folder holding `lang`'s examples, built from source once per session."""
    require_toolchain(lang)
    out = base / lang
    base.mkdir(parents=True, exist_ok=True)
    with (base / f"{lang}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (out / DONE).exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for example in sorted((EXAMPLES_DIR / lang).iterdir()):
                if (example / "module.toml").is_file():
                    result = build_module(example, out, cache_dir=base / "build-cache")
                    found = {w.problem for w in result.warnings}
                    # The reference's modules export malloc only: the build warns, rightly.
                    assert found == (REFERENCE_WARNINGS if example.name == "refstyle" else set())
            (out / DONE).touch()
    return out
