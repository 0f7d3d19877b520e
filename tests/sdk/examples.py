"""Build the SDK examples (examples/<lang>/<example>/) once per test session.

Every language has the same three examples: ``relay``, ``http_json`` and ``counter`` (WAT,
written by hand, has no ``http_json``: it would mean a CBOR reader in WebAssembly text). Go
also has ``refstyle``, written the way the Go reference's users write modules.
`built(lang, base)` compiles every example folder of a language with that language's real toolchain, through the same
build the ``tinywasm build`` command runs, into ``<base>/<lang>/``. Several xdist workers
share `base` (the session's common temporary folder), so each language is built once per
session: the first worker to take the language's lock builds it, the others wait and reuse.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

from tinywasm_wasi.build import build_module

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = ("relay", "http_json", "counter")
LANGS = ("c", "cpp", "zig", "rust", "go", "assemblyscript", "wat")
HTTP_LANGS = tuple(lang for lang in LANGS if (EXAMPLES_DIR / lang / "http_json").is_dir())
DONE = ".built"


def build(source: Path, out_dir: Path) -> Path:
    """Build one example folder into `out_dir` as ``tinywasm build`` does; return the .wasm."""
    return build_module(source, out_dir)


def built(lang: str, base: Path) -> Path:
    """The folder holding `lang`'s three examples, built from source once per session."""
    out = base / lang
    base.mkdir(parents=True, exist_ok=True)
    with (base / f"{lang}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (out / DONE).exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for example in sorted((EXAMPLES_DIR / lang).iterdir()):
                if (example / "module.toml").is_file():
                    build(example, out)
            (out / DONE).touch()
    return out
