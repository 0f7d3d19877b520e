"""What to tell a module's author: the fix for each problem, in the module's language.

Pure tables and rules, shared by the build (`tinywasm build` fails with the fix) and the
server (an unknown import is refused with the fix). `guess_from_imports` tells the
language a compiled module probably came from, for the server, which has no manifest.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tinywasm_wasi.policy.manifest import Language

__all__ = [
    "FIXES",
    "Finding",
    "Problem",
    "Severity",
    "fix",
    "guess_from_imports",
    "import_hint",
    "review",
]


class Problem(enum.StrEnum):
    """Something in a built module that the server refuses, or that will not work."""

    NO_ALLOCATOR = "no-allocator"  # receives data (messages, requests, state) but no malloc
    NO_FREE = "no-free"  # allocator without free: every delivery leaks its block
    NO_HANDLER = "no-handler"  # subscribes but exports no on_message / on_topic_message
    ABORT_IMPORT = "abort-import"  # AssemblyScript's default env.abort
    GO_JS_IMPORTS = "go-js-imports"  # Go built for GOOS=js (gojs.*)
    UNKNOWN_IMPORT = "unknown-import"  # any other import the host does not provide
    NO_MEMORY = "no-memory"  # memory not exported as "memory"
    HALF_STATE = "half-state"  # save_state without restore_state, or the reverse
    NOTHING_EXPORTED = "nothing-exported"  # no init, handler or HTTP export: it does nothing


class Severity(enum.StrEnum):
    """An error fails the build; a warning is printed and the build succeeds."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found in a built module: what is wrong and how to fix it."""

    problem: Problem
    severity: Severity
    message: str


_ALLOCATOR_FIX = {
    Language.C: "add `TW_EXPORT_ALLOCATOR();` (from tinywasm.h) at file scope",
    Language.CPP: "add `TW_EXPORT_ALLOCATOR();` (from tinywasm.h) at file scope",
    Language.ZIG: 'export the SDK\'s allocator: `const tw = @import("tinywasm");` and '
    "`comptime { tw.exportAllocator(); }`",
    Language.RUST: "build with the default command, which exports wasi-libc's malloc and "
    "free (`-C link-arg=--export=malloc`); do not define `malloc`/`free` in Rust: they "
    "clash with wasi-libc's",
    Language.GO: 'import "tinywasm/tinywasm": it exports malloc and free and pins the '
    "blocks it hands to the host",
    Language.ASSEMBLYSCRIPT: 'add `export { malloc, free } from "tinywasm";`',
    Language.WAT: 'export a `(func (export "malloc") (param i32) (result i32))` and a '
    '`(func (export "free") (param i32))`',
}

FIXES: Mapping[Problem, Mapping[Language, str]] = {
    Problem.NO_ALLOCATOR: _ALLOCATOR_FIX,
    Problem.NO_FREE: _ALLOCATOR_FIX,
    Problem.NO_HANDLER: {
        Language.C: "add `TW_EXPORT(on_message) void on_message(const char *p, int len)` "
        "(or on_topic_message to get the topic too)",
        Language.CPP: "add `TW_EXPORT(on_message) void on_message(const char *p, int len)`",
        Language.WAT: 'export `(func (export "on_message") (param i32 i32))`',
    },
    Problem.ABORT_IMPORT: {
        Language.ASSEMBLYSCRIPT: "build with `--use abort=` (the default manifest does), "
        "so the module does not import env.abort",
    },
    Problem.GO_JS_IMPORTS: {
        Language.GO: "build with GOOS=wasip1 GOARCH=wasm and -buildmode=c-shared "
        "(the default manifest does), not GOOS=js",
    },
    Problem.UNKNOWN_IMPORT: {
        Language.C: "declare host functions with tinywasm.h's TW_IMPORT only; a libc "
        "function outside WASI preview 1 cannot be linked",
        Language.CPP: "declare host functions with tinywasm.h's TW_IMPORT only",
        Language.GO: "use only `//go:wasmimport env <name>` for the host's functions "
        "(publish, subscribe, unsubscribe, ws_broadcast, log) and build with GOOS=wasip1",
        Language.RUST: "declare only the host's functions in `#[link(wasm_import_module = "
        '"env")]` (the SDK does) and build for wasm32-wasi',
    },
    Problem.NO_MEMORY: {
        Language.WAT: 'add `(memory (export "memory") 1)`',
        Language.C: "build with zig cc --target=wasm32-wasi (tinywasm build does)",
    },
    Problem.HALF_STATE: {
        Language.C: "export both: save_state returns tw_state_save(version, &data, size), "
        "restore_state reads it with tw_state_open(...) (tinywasm.h)",
        Language.CPP: "export both save_state and restore_state (tinywasm.hpp: "
        "tinywasm::state::save and tinywasm::state::open)",
        Language.ZIG: "export both save_state and restore_state (tw.state.save, tw.state.open)",
        Language.RUST: "write both `tinywasm::save_state!` and `tinywasm::restore_state!`",
        Language.GO: "register both tinywasm.OnSaveState and tinywasm.OnRestoreState",
        Language.ASSEMBLYSCRIPT: "export both save_state and restore_state (the SDK's "
        "saveState and openState)",
    },
}

_GENERIC = {
    Problem.NO_ALLOCATOR: "export malloc (or alloc) and free",
    Problem.NO_FREE: "export free(ptr) beside malloc",
    Problem.NO_HANDLER: "export on_message(ptr, len) or on_topic_message(tptr, tlen, ptr, len)",
    Problem.ABORT_IMPORT: "AssemblyScript: build with `--use abort=`",
    Problem.GO_JS_IMPORTS: "Go: build with GOOS=wasip1 GOARCH=wasm -buildmode=c-shared",
    Problem.UNKNOWN_IMPORT: "import only env.publish, env.subscribe, env.unsubscribe, "
    "env.ws_broadcast, env.log and WASI preview 1",
    Problem.NO_MEMORY: "export the linear memory as 'memory'",
    Problem.HALF_STATE: "export both save_state and restore_state",
    Problem.NOTHING_EXPORTED: "export init, on_message, handle or handle_http",
}


def fix(problem: Problem, language: Language | None) -> str:
    """How to fix `problem` in `language` (a general fix when it has no specific one)."""
    specific = FIXES.get(problem, {})
    if language is not None and language in specific:
        return specific[language]
    return _GENERIC[problem]


def guess_from_imports(imports: Iterable[str], exports: Iterable[str]) -> Language | None:
    """The language a module's imports and exports suggest (``module.name`` strings), or None."""
    imported = set(imports)
    exported = set(exports)
    if any(i.startswith("gojs.") for i in imported) or "go.buildid" in exported:
        return Language.GO
    if "env.abort" in imported or {"__new", "__pin", "__collect"} & exported:
        return Language.ASSEMBLYSCRIPT
    if "__wasm_call_ctors" in exported and "alloc" in exported:
        return Language.RUST
    return None


def import_hint(where: str, language: Language | None) -> str:
    """What to do about the unknown import `where` (``module.name``)."""
    if where == "env.abort":
        return fix(Problem.ABORT_IMPORT, Language.ASSEMBLYSCRIPT)
    if where.startswith("gojs."):
        return fix(Problem.GO_JS_IMPORTS, Language.GO)
    return fix(Problem.UNKNOWN_IMPORT, language)


# Exports the host calls with data it placed in the guest's memory through its allocator.
_RECEIVERS = ("on_message", "on_topic_message", "handle", "handle_http", "restore_state")


def review(
    exports: Iterable[str],
    subscribes: bool,
    language: Language | None,
) -> list[Finding]:
    """The problems in a module that loaded, from its exports and whether it subscribed."""
    names = set(exports)
    allocator = bool({"malloc", "alloc"} & names)
    handler = bool({"on_message", "on_topic_message"} & names)
    receives = [n for n in _RECEIVERS if n in names]
    found: list[Finding] = []
    if subscribes and not handler:
        found.append(
            Finding(
                Problem.NO_HANDLER,
                Severity.ERROR,
                "it subscribes but exports neither on_message nor on_topic_message, so it "
                f"could not receive anything: {fix(Problem.NO_HANDLER, language)}",
            )
        )
    if receives and not allocator:
        found.append(
            Finding(
                Problem.NO_ALLOCATOR,
                Severity.ERROR,
                f"it exports {', '.join(receives)} but no malloc or alloc, so the host cannot "
                f"hand it any data: {fix(Problem.NO_ALLOCATOR, language)}",
            )
        )
    elif allocator and "free" not in names and receives:
        found.append(
            Finding(
                Problem.NO_FREE,
                Severity.WARNING,
                "it exports an allocator but no free, so every message or request leaks "
                f"its block: {fix(Problem.NO_FREE, language)}",
            )
        )
    if ("save_state" in names) != ("restore_state" in names):
        have, lacks = (
            ("save_state", "restore_state")
            if "save_state" in names
            else ("restore_state", "save_state")
        )
        found.append(
            Finding(
                Problem.HALF_STATE,
                Severity.WARNING,
                f"it exports {have} but not {lacks}, so its state does not survive a swap to "
                f"a build of itself: {fix(Problem.HALF_STATE, language)}",
            )
        )
    if not (handler or "init" in names or {"handle", "handle_http"} & names):
        found.append(
            Finding(
                Problem.NOTHING_EXPORTED,
                Severity.WARNING,
                "it exports no init, message handler or HTTP handler, so it never runs: "
                f"{fix(Problem.NOTHING_EXPORTED, language)}",
            )
        )
    return found
