"""Cheap guest calls and host callbacks through wasmtime's unchecked C API (issue #6).

wasmtime-py's `Func.__call__` rebuilds the function type and converts every value
(≈30 µs a call) and its host trampoline costs ≈3 µs, ≈8 µs with two memory reads. The
C API's unchecked entry points pass raw 16-byte `ValRaw` slots instead: ≈0.8 µs a
call, ≈0.5 µs a callback, ≈2.4 µs with two reads (``python -m bench.fastcall``).
A `Backend` hands out three small objects, over that C API (`FAST`) or over the
public API (`PUBLIC`, the fallback), with the same behaviour:

- `HostFunctions`: defines host functions on a `Linker`. Each is called as
  ``fn(caller, *args)`` with a `HostCaller` (bounds-checked guest memory) and its
  i32/i64 arguments as signed ints, and returns one int or None.
- `GuestFunc`: calls one export with int arguments; returns one int or None.
- `GuestMemory`: bounds-checked reads and writes of a store's memory.

A trap raises `CallTrap` (`.trap_code` as `wasmtime.Trap.trap_code`); `proc_exit`
raises `CallExit` (`.code`). An exception raised by a host function traps the guest:
`HostTrap` with its own message, anything else with a message naming the function.
The exception is recorded per thread (wasmtime-py uses one global for all threads)
and comes back as `CallTrap.host_error`.

Threads: a guest call gives up the GIL while guest code runs, so guests in different
threads run in parallel; callbacks take it back. Calls made from inside a callback
keep it, so a callback never waits out another thread's switch interval.
`GuestFunc` and `GuestMemory` belong to their store's thread, like the store.
"""

from __future__ import annotations

from tinywasm_wasi.runtime.fastcall.api import (
    Backend,
    CallExit,
    CallTrap,
    GuestFunc,
    GuestMemory,
    HostCaller,
    HostFunc,
    HostFunctions,
    HostTrap,
    MemoryRangeError,
    call_trap,
)
from tinywasm_wasi.runtime.fastcall.capi import _capi, _FastBackend, _live_callbacks
from tinywasm_wasi.runtime.fastcall.public import _PublicBackend

__all__ = [
    "FAST",
    "PUBLIC",
    "Backend",
    "CallExit",
    "CallTrap",
    "GuestFunc",
    "GuestMemory",
    "HostCaller",
    "HostFunc",
    "HostFunctions",
    "HostTrap",
    "MemoryRangeError",
    "backend",
    "call_trap",
    "prefer_fast_path",
]

_live_callbacks = _live_callbacks  # host functions alive, by id (the tests watch it)

FAST: Backend | None = None if _capi is None else _FastBackend(_capi)
PUBLIC: Backend = _PublicBackend()

_prefer_fast = True  # what backend() picks by default; see prefer_fast_path


def prefer_fast_path(enabled: bool) -> None:
    """Set what `backend()` picks by default: FAST where available (True) or PUBLIC.

    For the whole process, before modules are loaded; the CLI calls it for
    ``TINYWASM_FASTPATH=0``. Backends already handed out are not changed.
    """
    global _prefer_fast
    _prefer_fast = enabled


def backend(fast: bool | None = None) -> Backend:
    """The backend to use: FAST where this wasmtime has it, unless `fast` is False.

    With `fast=None`, the choice made with `prefer_fast_path` (FAST unless told otherwise).

    Raises:
        RuntimeError: `fast=True` but this wasmtime lacks an unchecked C entry point.
    """
    if fast is None:
        if not _prefer_fast:
            return PUBLIC
        return PUBLIC if FAST is None else FAST
    if not fast:
        return PUBLIC
    if FAST is None:
        raise RuntimeError(
            "this wasmtime lacks the unchecked C API the fast path needs: "
            "use fast=False, or wasmtime 50 as pyproject.toml pins"
        )
    return FAST
