"""The guest interface, version 2, as data: what a module may import and export.

`inspect_module` checks a compiled module against it and returns what the host
needs to know (which optional exports exist). It reads types only: no store,
no instance, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import wasmtime

from tinywasm_wasi.exceptions import ModuleLoadError, UnknownImportError
from tinywasm_wasi.policy.authoring import guess_from_imports, import_hint
from tinywasm_wasi.policy.http_abi import http_mode

__all__ = ["HOST_IMPORTS", "HOST_IMPORTS_I32", "WASI_MODULE", "ModuleInterface", "inspect_module"]

HOST_MODULE = "env"
WASI_MODULE = "wasi_snapshot_preview1"

# name -> number of i32 parameters (no results)
HOST_IMPORTS: dict[str, int] = {
    "publish": 4,
    "subscribe": 3,
    "unsubscribe": 2,
    "ws_broadcast": 4,
    "log": 2,
}
# name -> number of i32 parameters, with one i32 result
HOST_IMPORTS_I32: dict[str, int] = {
    "config_get": 4,
    "message_sender": 2,  # version 2
}

# Every function of WASI preview 1; the host links all of them (most with an
# empty environment behind them), so a module may import any.
WASI_FUNCTIONS = frozenset(
    """args_get args_sizes_get environ_get environ_sizes_get clock_res_get
    clock_time_get fd_advise fd_allocate fd_close fd_datasync fd_fdstat_get
    fd_fdstat_set_flags fd_fdstat_set_rights fd_filestat_get fd_filestat_set_size
    fd_filestat_set_times fd_pread fd_prestat_get fd_prestat_dir_name fd_pwrite
    fd_read fd_readdir fd_renumber fd_seek fd_sync fd_tell fd_write path_create_directory
    path_filestat_get path_filestat_set_times path_link path_open path_readlink
    path_remove_directory path_rename path_symlink path_unlink_file poll_oneoff
    proc_exit proc_raise sched_yield random_get sock_accept sock_recv sock_send
    sock_shutdown""".split()
)

# export name -> (params, results) it must have when present
EXPORT_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "_initialize": ((), ()),
    "_start": ((), ()),
    "init": ((), ()),
    "malloc": (("i32",), ("i32",)),
    "alloc": (("i32",), ("i32",)),
    "free": (("i32",), ()),
    "on_message": (("i32",) * 2, ()),
    "on_topic_message": (("i32",) * 4, ()),
    "drain": ((), ("i32",)),
    "save_state": ((), ("i64",)),
    "restore_state": (("i32",) * 2, ()),  # or -> i32: non-zero means the state was rejected
    "handle": (("i32",) * 2, ("i32",)),
    "handle_http": (("i32",) * 2, ("i64",)),
    "health_check": ((), ("i32",)),
    "get_metadata": ((), ("i64",)),
    "validate_config": ((), ("i32",)),
}

# Exports that may also have this second signature.
EXPORT_ALTERNATIVES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "restore_state": (("i32",) * 2, ("i32",)),
}

_VALTYPES = {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64()}


@dataclass(frozen=True, slots=True)
class ModuleInterface:
    """What a compiled module offers the host."""

    exports: tuple[str, ...]
    imports: tuple[str, ...]
    entry: str | None  # "_initialize", "_start" or None
    allocator: str | None  # "malloc", "alloc" or None
    handler: str | None  # "on_topic_message", "on_message" or None
    has_init: bool
    has_free: bool
    has_drain: bool
    has_state: tuple[bool, bool]  # (save_state, restore_state) exported
    http: str | None = None  # "handle_http" (full mode), "handle" (compat mode) or None
    has_health_check: bool = False
    has_metadata: bool = False
    has_validate_config: bool = False


def _is_i32s(types: list[wasmtime.ValType], count: int) -> bool:
    return _types_are(types, ("i32",) * count)


def _types_are(types: list[wasmtime.ValType], names: tuple[str, ...]) -> bool:
    return len(types) == len(names) and all(
        t == _VALTYPES[n] for t, n in zip(types, names, strict=True)
    )


def inspect_module(module: wasmtime.Module) -> ModuleInterface:
    """Check `module` against the guest interface.

    Raises UnknownImportError naming the first import the host cannot
    satisfy, and ModuleLoadError for a missing `memory` or an export whose
    signature does not match the interface.
    """
    imports = []
    for imp in module.imports:
        where = f"{imp.module}.{imp.name}"
        imports.append(where)
        ty = imp.type
        if imp.module == HOST_MODULE and imp.name in HOST_IMPORTS:
            nparams = HOST_IMPORTS[imp.name]
            if not (
                isinstance(ty, wasmtime.FuncType)
                and _is_i32s(ty.params, nparams)
                and not ty.results
            ):
                raise UnknownImportError(
                    f"import {where} has the wrong type: the host provides "
                    f"{imp.name}({', '.join(['i32'] * nparams)}) with no result"
                )
        elif imp.module == HOST_MODULE and imp.name in HOST_IMPORTS_I32:
            nparams = HOST_IMPORTS_I32[imp.name]
            if not (
                isinstance(ty, wasmtime.FuncType)
                and _is_i32s(ty.params, nparams)
                and _is_i32s(ty.results, 1)
            ):
                raise UnknownImportError(
                    f"import {where} has the wrong type: the host provides "
                    f"{imp.name}({', '.join(['i32'] * nparams)}) -> i32"
                )
        elif imp.module == WASI_MODULE and imp.name in WASI_FUNCTIONS:
            continue
        else:
            known = ", ".join(f"env.{n}" for n in (*HOST_IMPORTS, *HOST_IMPORTS_I32))
            language = guess_from_imports(
                (f"{i.module}.{i.name}" for i in module.imports),
                (e.name for e in module.exports),
            )
            raise UnknownImportError(
                f"unknown import {where}: the host provides {known} and WASI preview 1 "
                f"({WASI_MODULE}.*); {import_hint(where, language)}"
            )

    exports = {exp.name: exp.type for exp in module.exports}
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise ModuleLoadError(
            "module does not export its memory as 'memory': build it with wasi-libc "
            '(zig cc --target=wasm32-wasi) or add (export "memory") in WAT'
        )
    for name, (params, results) in EXPORT_SIGNATURES.items():
        export_ty = exports.get(name)
        if export_ty is None:
            continue
        allowed = [(params, results)]
        if name in EXPORT_ALTERNATIVES:
            allowed.append(EXPORT_ALTERNATIVES[name])
        if not (
            isinstance(export_ty, wasmtime.FuncType)
            and any(
                _types_are(export_ty.params, p) and _types_are(export_ty.results, r)
                for p, r in allowed
            )
        ):
            want = " or ".join(
                f"{name}({', '.join(p)})" + (f" -> {r[0]}" if r else "") for p, r in allowed
            )
            raise ModuleLoadError(f"export {name!r} has the wrong type: expected {want}")

    entry = "_initialize" if "_initialize" in exports else "_start" if "_start" in exports else None
    allocator = "malloc" if "malloc" in exports else "alloc" if "alloc" in exports else None
    handler = (
        "on_topic_message"
        if "on_topic_message" in exports
        else "on_message"
        if "on_message" in exports
        else None
    )
    http = http_mode(exports)
    return ModuleInterface(
        exports=tuple(exports),
        imports=tuple(imports),
        entry=entry,
        allocator=allocator,
        handler=handler,
        has_init="init" in exports,
        has_free="free" in exports,
        has_drain="drain" in exports,
        has_state=("save_state" in exports, "restore_state" in exports),
        http=None if http is None else http.value,
        has_health_check="health_check" in exports,
        has_metadata="get_metadata" in exports,
        has_validate_config="validate_config" in exports,
    )
