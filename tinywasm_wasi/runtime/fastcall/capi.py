"""The fast backend: wasmtime's unchecked C API through ctypes."""

from __future__ import annotations

import ctypes
import functools
import itertools
import weakref
from collections.abc import Callable
from ctypes import c_bool, c_char_p, c_int32, c_int64, c_size_t, c_void_p
from typing import Any, NoReturn

import wasmtime
from wasmtime import _ffi as ffi

from tinywasm_wasi.runtime.fastcall.api import (
    U32,
    CallExit,
    GuestFunc,
    GuestMemory,
    HostFunc,
    HostFunctions,
    HostTrap,
    MemoryRangeError,
    _address,
    _Binding,
    _Bound,
    _check_result,
    _context_address,
    _copy_out,
    _record_fault,
    _signature,
    _trap_error,
)

# -- the fast backend: the unchecked C API through ctypes ----------------------------------

# ValRaw slots are 16 bytes; an i32 sits in the low 4 bytes of its slot, an i64 in 8.
_SLOT = 16
_EXTERN_MEMORY = 3  # WASMTIME_EXTERN_MEMORY
_HOST_CALLBACK = ctypes.CFUNCTYPE(c_size_t, c_void_p, c_void_p, c_void_p, c_size_t)


class _Capi:
    """The C entry points the fast path needs, typed with plain addresses (cheapest in ctypes)."""

    def __init__(self, dll: ctypes.CDLL) -> None:
        if ctypes.sizeof(ffi.wasmtime_val_raw_t) != _SLOT:
            raise AttributeError("wasmtime_val_raw_t is not 16 bytes")

        def fn(name: str, restype: Any, *argtypes: Any, keep_gil: bool = True) -> Any:
            theirs = getattr(ffi, "_" + name, None)  # wasmtime-py's own binding, if any
            if theirs is not None and len(theirs.argtypes) != len(argtypes):
                raise AttributeError(f"{name} now takes {len(theirs.argtypes)} arguments")
            factory = ctypes.PYFUNCTYPE if keep_gil else ctypes.CFUNCTYPE
            return factory(restype, *argtypes)(_address(getattr(dll, name)))

        v, z = c_void_p, c_size_t
        # Runs guest code: gives up the GIL (CFUNCTYPE) so other threads run meanwhile.
        self.call = fn("wasmtime_func_call_unchecked", v, v, v, v, z, v, keep_gil=False)
        self.define = fn(
            "wasmtime_linker_define_func_unchecked", v, v, c_char_p, z, c_char_p, z, v, v, v, v
        )
        # Quick leaf calls, mostly made inside callbacks: keep the GIL (PYFUNCTYPE), as
        # dropping it there lets another thread hold it for a whole switch interval.
        self.caller_context = fn("wasmtime_caller_context", v, v)
        self.caller_export_get = fn("wasmtime_caller_export_get", c_bool, v, c_char_p, z, v)
        self.memory_data = fn("wasmtime_memory_data", v, v, v)
        self.memory_data_size = fn("wasmtime_memory_data_size", z, v, v)
        self.trap_new = fn("wasmtime_trap_new", v, c_char_p, z)
        # Set before every guest call: giving up the GIL here would invite a thread switch.
        self.set_epoch_deadline = fn(
            "wasmtime_context_set_epoch_deadline", None, v, ctypes.c_uint64
        )
        memmove = getattr(ctypes, "_memmove_addr", None)  # ctypes.memmove gives up the GIL
        self.memmove = ctypes.PYFUNCTYPE(v, v, v, z)(memmove) if memmove else ctypes.memmove


try:
    _capi: _Capi | None = _Capi(ffi.dll)
except AttributeError:  # a symbol is missing: this wasmtime cannot take the fast path
    _capi = None


class _FastAccess:
    """Reads and writes one memory through raw pointers, bounds-checked every time.

    The data pointer is read afresh for every access, as memory.grow may move the
    data. The size is re-read only when an access goes past the last size seen: a
    memory never shrinks, so that size is a safe lower bound.
    """

    __slots__ = ("_capi", "_ctx", "_keep", "_mem", "_size")

    def __init__(self, capi: _Capi, ctx: int, mem: int, keep: object = None) -> None:
        self._capi, self._ctx, self._mem, self._keep, self._size = capi, ctx, mem, keep, 0

    def _check(self, ptr: int, length: int) -> None:
        if ptr + length > self._size:
            self._size = self._capi.memory_data_size(self._ctx, self._mem)
            if ptr + length > self._size:
                raise MemoryRangeError(ptr, length, self._size)

    def size(self) -> int:
        self._size = self._capi.memory_data_size(self._ctx, self._mem)
        return self._size

    def read(self, ptr: int, length: int) -> bytes:
        ptr &= U32
        length &= U32
        self._check(ptr, length)
        if not length:
            return b""
        return _copy_out(self._capi.memory_data(self._ctx, self._mem) + ptr, length)

    def write(self, ptr: int, data: bytes) -> None:
        ptr &= U32
        self._check(ptr, len(data))
        if data:
            self._capi.memmove(self._capi.memory_data(self._ctx, self._mem) + ptr, data, len(data))


class _FastMemory(_FastAccess):
    __slots__ = ("_store",)

    def __init__(self, capi: _Capi, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        super().__init__(capi, _context_address(store), ctypes.addressof(memory._memory), memory)
        self._store = store  # keeps the context address valid

    def _check(self, ptr: int, length: int) -> None:
        self._store._context()  # raises ValueError if the store was closed
        super()._check(ptr, length)

    def size(self) -> int:
        self._store._context()
        return super().size()


class _FastCaller:
    """Finds the caller's memory on first use: the bound one, else its "memory" export."""

    __slots__ = ("_access", "_binding", "_caller", "_capi")

    def __init__(self, capi: _Capi, binding: _Binding, caller: int) -> None:
        self._capi, self._binding, self._caller = capi, binding, caller
        self._access: _FastAccess | None = None

    def _locate(self) -> _FastAccess:
        if not self._caller:
            raise ValueError("a HostCaller is only valid until its host function returns")
        binding, capi = self._binding, self._capi
        ctx: int = capi.caller_context(self._caller)
        bound = binding.lookup(ctx)
        if bound is not None:
            access: _FastAccess = bound.access
        else:
            extern = ffi.wasmtime_extern_t()
            found = capi.caller_export_get(self._caller, b"memory", 6, ctypes.addressof(extern))
            if not found or extern.kind != _EXTERN_MEMORY:  # type: ignore[comparison-overlap]
                raise HostTrap("the module exports no memory")
            mem = ctypes.addressof(extern) + ffi.wasmtime_extern_t.of.offset
            access = _FastAccess(capi, ctx, mem, extern)
        self._access = access
        return access

    def size(self) -> int:
        return (self._access or self._locate()).size()

    def read(self, ptr: int, length: int) -> bytes:
        return (self._access or self._locate()).read(ptr, length)

    def write(self, ptr: int, data: bytes) -> None:
        (self._access or self._locate()).write(ptr, data)


# Host functions by id (wasmtime's `env`), kept until wasmtime drops the function (the
# Linker and every instance made with it) and calls the finalizer below. Every host
# function enters through one C callback, `_enter`: a ctypes callback costs a libffi
# closure (pages of native memory), so one per host function per module would make
# each idle module several pages bigger.
_live_callbacks: dict[int, Callable[[int | None, int, int, int], int]] = {}
_callback_ids = itertools.count(1)


# The table is bound as a default argument: wasmtime may free functions while the
# interpreter shuts down, after this module's globals are gone.
def _forget_callback(env: int | None, _live: dict[int, Any] = _live_callbacks) -> None:
    _live.pop(env or 0, None)


def _enter(
    env: int | None,
    caller: int,
    slots: int,
    n: int,
    _live: dict[int, Any] = _live_callbacks,
    _capi: _Capi | None = _capi,
) -> int:
    trampoline = _live.get(env or 0)
    if trampoline is not None:
        return int(trampoline(env, caller, slots, n))
    message = b"host function called after it was released"
    return int(_capi.trap_new(message, len(message))) if _capi is not None else 0


_finalizer = ctypes.CFUNCTYPE(None, c_void_p)(_forget_callback)  # lives as long as the module
_finalize = _address(_finalizer)
_entry = _HOST_CALLBACK(_enter)
_entry_address = _address(_entry)


def _fast_trampoline(
    capi: _Capi, binding: _Binding, fn: HostFunc, where: str, params: tuple[str, ...], result: bool
) -> Callable[[int | None, int, int, int], int]:
    """The Python side of one host function: read the slots, call `fn`, never raise."""
    count = len(params)
    # Up to four i32 parameters (every host import so far) are indexed one by one, the
    # cheapest read ctypes has; anything else takes 8-byte slots and narrows the i32s.
    short = count <= 4 and "i64" not in params
    narrow, wide = c_int32 * (4 * max(count, 1)), c_int64 * (2 * max(count, 1))
    step = slice(0, 2 * count, 2)
    narrowed = [i for i, k in enumerate(params) if k == "i32"]
    result_at = c_int64.from_address
    trap_new = capi.trap_new

    def trampoline(_env: int | None, caller: int, slots: int, _n: int) -> int:
        host_caller = _FastCaller(capi, binding, caller)
        try:
            if not count:
                value = fn(host_caller)
            elif short:
                a = narrow.from_address(slots)
                if count == 4:
                    value = fn(host_caller, a[0], a[4], a[8], a[12])
                elif count == 3:
                    value = fn(host_caller, a[0], a[4], a[8])
                elif count == 2:
                    value = fn(host_caller, a[0], a[4])
                else:
                    value = fn(host_caller, a[0])
            else:
                args = wide.from_address(slots)[step]
                for i in narrowed:
                    args[i] = ((args[i] & U32) ^ 0x80000000) - 0x80000000
                value = fn(host_caller, *args)
            if result:
                result_at(slots).value = _check_result(value)
            return 0
        except BaseException as exc:
            try:
                message = _record_fault(exc, where).encode("utf-8", "replace")
            except BaseException:
                message = b"host function failed"
            trap: int = trap_new(message, len(message))  # wasmtime takes ownership
            return trap
        finally:
            host_caller._caller, host_caller._access = 0, None  # kept past the call: refuse

    return trampoline


class _FastHost:
    def __init__(self, capi: _Capi, linker: wasmtime.Linker) -> None:
        self._capi = capi
        self._linker: wasmtime.Linker | None = linker
        self._binding = _Binding()

    def define(self, module: str, name: str, ty: wasmtime.FuncType, fn: HostFunc) -> None:
        if self._linker is None:
            raise ValueError(f"cannot define {module}.{name}: these host functions are closed")
        where = f"{module}.{name}"
        params, results = _signature(ty, where)
        trampoline = _fast_trampoline(self._capi, self._binding, fn, where, params, bool(results))
        env = next(_callback_ids)
        _live_callbacks[env] = trampoline
        mod, nm = module.encode(), name.encode()
        err = self._capi.define(
            _address(self._linker.ptr()),
            mod,
            len(mod),
            nm,
            len(nm),
            _address(ty.ptr()),
            _entry_address,
            env,
            _finalize,
        )
        if err:  # wasmtime has already called the finalizer
            pointer = ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t))
            raise wasmtime.WasmtimeError._from_ptr(pointer)

    def bind(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        ctx = _context_address(store)
        access = _FastAccess(self._capi, ctx, ctypes.addressof(memory._memory), memory)
        self._binding.bound = _Bound(weakref.ref(store), ctx, memory, access)

    def close(self) -> None:
        self._linker = self._binding.bound = None


class _FastFunc:
    __slots__ = (
        "_args",
        "_call",
        "_ctx",
        "_func",
        "_func_addr",
        "_nargs",
        "_out",
        "_slots",
        "_slots_addr",
        "_slots_len",
        "_store",
        "_trap",
        "_trap_addr",
    )

    def __init__(self, capi: _Capi, store: wasmtime.Store, func: wasmtime.Func) -> None:
        params, results = _signature(func.type(store), "guest function")
        self._store, self._func = store, func  # keep both alive
        self._ctx = _context_address(store)
        self._func_addr = ctypes.addressof(func._func)
        self._call = capi.call
        self._nargs = len(params)
        self._slots_len = max(len(params), len(results), 1)
        self._slots = (c_int64 * (2 * self._slots_len))()  # ValRaw[n], as 8-byte halves
        self._slots_addr = ctypes.addressof(self._slots)
        self._args = slice(0, 2 * len(params), 2)
        self._out: Any = None
        if results:
            kind = c_int32 if results[0] == "i32" else c_int64
            self._out = kind.from_address(self._slots_addr)
        self._trap = c_void_p()
        self._trap_addr = ctypes.addressof(self._trap)

    def __call__(self, *args: int) -> int | None:
        if len(args) != self._nargs:
            raise TypeError(f"guest function takes {self._nargs} arguments, {len(args)} given")
        self._store._context()  # raises ValueError if the store was closed
        self._slots[self._args] = args  # type: ignore[call-overload]  # any sequence works
        err = self._call(
            self._ctx, self._func_addr, self._slots_addr, self._slots_len, self._trap_addr
        )
        if err or self._trap.value:
            self._fail(err)
        out = self._out
        return None if out is None else int(out.value)

    def _fail(self, err: int | None) -> NoReturn:
        if err:
            pointer = ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t))
            error = wasmtime.WasmtimeError._from_ptr(pointer)  # frees it when dropped
            if isinstance(error, wasmtime.ExitTrap):
                raise CallExit(error.code)
            raise _trap_error(str(error), None)
        address = _address(self._trap)
        self._trap.value = None
        trap = wasmtime.Trap._from_ptr(ctypes.cast(address, ctypes.POINTER(ffi.wasm_trap_t)))
        raise _trap_error(trap.message, trap.trap_code)


class _FastBackend:
    name = "fast"

    def __init__(self, capi: _Capi) -> None:
        self._capi = capi

    def host(self, linker: wasmtime.Linker) -> HostFunctions:
        return _FastHost(self._capi, linker)

    def func(self, store: wasmtime.Store, func: wasmtime.Func) -> GuestFunc:
        return _FastFunc(self._capi, store, func)

    def memory(self, store: wasmtime.Store, memory: wasmtime.Memory) -> GuestMemory:
        return _FastMemory(self._capi, store, memory)

    def deadline(self, store: wasmtime.Store) -> Callable[[int], None]:
        return functools.partial(self._capi.set_epoch_deadline, _context_address(store))
