"""The interface both backends implement, their errors, and the pieces they share."""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable
from ctypes import c_void_p
from dataclasses import dataclass
from typing import Any, Protocol

import wasmtime

from tinywasm_wasi.exceptions import GuestError

U32 = 0xFFFFFFFF
HostFunc = Callable[..., int | None]
"""``fn(caller: HostCaller, *args: int) -> int | None``."""


# -- errors ---------------------------------------------------------------------------------


class HostTrap(GuestError):
    """Raise inside a host function to trap the calling guest with this message."""


class MemoryRangeError(HostTrap):
    """`length` bytes at `ptr` are not all inside the guest's memory of `size` bytes."""

    def __init__(self, ptr: int, length: int, size: int) -> None:
        self.ptr, self.length, self.size = ptr, length, size
        super().__init__(f"{length} bytes at {ptr:#x} are outside guest memory ({size} bytes)")


class CallTrap(GuestError):
    """A guest call trapped. `trap_code` is None for host faults and other errors."""

    def __init__(
        self,
        message: str,
        trap_code: wasmtime.TrapCode | None = None,
        *,
        host_error: BaseException | None = None,
        details: str = "",
    ) -> None:
        self.message = message  # the cause, without wasmtime's wasm backtrace
        self.trap_code = trap_code
        self.host_error = host_error  # what a host function raised, if that caused it
        self.details = details or message  # wasmtime's full text, with the wasm backtrace
        super().__init__(message)


class CallExit(CallTrap):
    """The guest called WASI `proc_exit(code)`."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"proc_exit({code})")


# -- the interface both backends implement --------------------------------------------------


class GuestMemory(Protocol):
    """Bounds-checked access to guest memory. Addresses and lengths are taken as u32.

    Out-of-range accesses raise `MemoryRangeError`, which traps the guest when raised
    inside a host function.
    """

    def size(self) -> int: ...
    def read(self, ptr: int, length: int) -> bytes: ...
    def write(self, ptr: int, data: bytes) -> None: ...


class HostCaller(GuestMemory, Protocol):
    """The calling instance's memory; raises ValueError once its host function returned."""


class GuestFunc(Protocol):
    """One export of one store, called with ints: ``f(*args) -> int | None``."""

    def __call__(self, *args: int) -> int | None: ...


class HostFunctions(Protocol):
    """Host functions defined on one Linker.

    `bind` names the store and memory callbacks will most often come from, which
    saves looking up the caller's "memory" export on every callback.
    """

    def define(self, module: str, name: str, ty: wasmtime.FuncType, fn: HostFunc) -> None: ...
    def bind(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None: ...
    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def host(self, linker: wasmtime.Linker) -> HostFunctions: ...
    def func(self, store: wasmtime.Store, func: wasmtime.Func) -> GuestFunc: ...
    def memory(self, store: wasmtime.Store, memory: wasmtime.Memory) -> GuestMemory: ...
    def deadline(self, store: wasmtime.Store) -> Callable[[int], None]:
        """A setter for `store`'s epoch deadline (ticks from now); valid while `store` lives."""
        ...


# -- shared pieces --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fault:
    error: BaseException
    message: str


_faults = threading.local()  # .last: _Fault | None, per thread (see the module docstring)


def _record_fault(exc: BaseException, where: str) -> str:
    if isinstance(exc, HostTrap):
        message = str(exc)
    else:
        message = f"host function {where} raised {type(exc).__name__}: {exc}"
    _faults.last = _Fault(exc, message)
    return message


def _trap_error(details: str, code: wasmtime.TrapCode | None) -> CallTrap:
    """The CallTrap for wasmtime's error text; this thread's host fault if it caused it."""
    fault: _Fault | None = getattr(_faults, "last", None)
    _faults.last = None
    if code is None and fault is not None and _flat(fault.message) in _flat(details):
        if not isinstance(fault.error, Exception):
            raise fault.error  # KeyboardInterrupt, SystemExit: not ours to wrap
        return CallTrap(fault.message, None, host_error=fault.error, details=details)
    _, sep, cause = details.partition("Caused by:")
    reason = "; ".join(line.strip() for line in cause.splitlines() if line.strip())
    return CallTrap(reason if sep and reason else details.strip(), code, details=details)


def call_trap(trap: wasmtime.Trap) -> CallTrap:
    """A trap wasmtime-py raised itself (e.g. from a start function), as a CallTrap."""
    return _trap_error(trap.message, trap.trap_code)


def _flat(text: str) -> str:
    return " ".join(text.split())  # wasmtime indents the lines of a message it wraps


def _signature(ty: wasmtime.FuncType, what: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    params, results = tuple(map(str, ty.params)), tuple(map(str, ty.results))
    if any(k not in ("i32", "i64") for k in params + results):
        raise TypeError(f"{what} has types {params} -> {results}: only i32 and i64 are supported")
    if len(results) > 1:
        raise TypeError(f"{what} has {len(results)} results: at most one is supported")
    return params, results


def _check_result(result: object) -> int:
    if not isinstance(result, int):
        raise TypeError(f"returned {result!r} where the guest expects an int")
    return result


def _address(pointer: Any) -> int:
    address = ctypes.cast(pointer, c_void_p).value
    if address is None:
        raise ValueError("null pointer")
    return address


def _context_address(store: wasmtime.Store | wasmtime.Caller) -> int:
    return _address(store._context())


def _copy_out(address: int, length: int) -> bytes:
    """`length` bytes at `address`. Not `(c_char * length)`: ctypes caches every such type."""
    if length <= 0x7FFFFFFF:  # string_at takes a C int
        return ctypes.string_at(address, length)
    out = bytearray(length)
    ctypes.memmove((ctypes.c_char * 1).from_buffer(out), address, length)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class _Bound:
    store: weakref.ref[wasmtime.Store]
    ctx: int  # address of the store's context
    memory: wasmtime.Memory
    access: Any  # the fast backend's `_FastAccess` for it, shared by its callbacks


class _Binding:
    """The store and memory `HostFunctions.bind` named, replaced as one value.

    Callbacks refer to this, never to the Linker, and it refers to the store weakly:
    wasmtime keeps callbacks until the Linker and its instances are gone, so a strong
    reference from them back to either would keep both alive for ever.
    """

    __slots__ = ("bound",)

    def __init__(self) -> None:
        self.bound: _Bound | None = None

    def lookup(self, ctx: int) -> _Bound | None:
        """The binding if `ctx` is the bound store's context (not a later store's)."""
        bound = self.bound
        if bound is None or bound.ctx != ctx:
            return None
        store = bound.store()
        if store is None:
            return None
        try:
            store._context()
        except ValueError:  # closed: its address may belong to another store now
            return None
        return bound
