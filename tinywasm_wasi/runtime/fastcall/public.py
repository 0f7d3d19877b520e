"""The fallback backend: the same interface over wasmtime-py's public API."""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable
from typing import Any

import wasmtime

from tinywasm_wasi.runtime.fastcall.api import (
    U32,
    CallExit,
    GuestFunc,
    GuestMemory,
    HostFunc,
    HostFunctions,
    HostTrap,
    MemoryRangeError,
    _Binding,
    _Bound,
    _check_result,
    _context_address,
    _copy_out,
    _record_fault,
    _signature,
    _trap_error,
)

# -- the public-API backend: same interface, wasmtime-py's own calls -----------------------


class _PublicAccess:
    """`GuestMemory` over `wasmtime.Memory`; `_where` gives the memory and a Storelike."""

    def _where(self) -> tuple[wasmtime.Memory, Any]:
        raise NotImplementedError

    def size(self) -> int:
        memory, store = self._where()
        return int(memory.data_len(store))

    def read(self, ptr: int, length: int) -> bytes:
        memory, store = self._where()
        ptr &= U32
        length &= U32
        size = memory.data_len(store)
        if ptr + length > size:
            raise MemoryRangeError(ptr, length, size)
        if not length:
            return b""
        return _copy_out(ctypes.addressof(memory.data_ptr(store).contents) + ptr, length)

    def write(self, ptr: int, data: bytes) -> None:
        memory, store = self._where()
        ptr &= U32
        size = memory.data_len(store)
        if ptr + len(data) > size:
            raise MemoryRangeError(ptr, len(data), size)
        if data:
            base = ctypes.addressof(memory.data_ptr(store).contents)
            ctypes.memmove(base + ptr, data, len(data))


class _PublicMemory(_PublicAccess):
    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._store, self._memory = store, memory

    def _where(self) -> tuple[wasmtime.Memory, Any]:
        return self._memory, self._store


class _PublicCaller(_PublicAccess):
    def __init__(self, binding: _Binding, caller: wasmtime.Caller) -> None:
        self._binding, self._caller = binding, caller
        self._memory: wasmtime.Memory | None = None

    def _where(self) -> tuple[wasmtime.Memory, Any]:
        if self._memory is None:
            bound = self._binding.lookup(_context_address(self._caller))
            if bound is not None:
                self._memory = bound.memory
            else:
                memory = self._caller.get("memory")
                if not isinstance(memory, wasmtime.Memory):
                    raise HostTrap("the module exports no memory")
                self._memory = memory
        assert self._memory is not None
        return self._memory, self._caller


class _PublicHost:
    def __init__(self, linker: wasmtime.Linker) -> None:
        self._linker: wasmtime.Linker | None = linker
        self._binding = _Binding()

    def define(self, module: str, name: str, ty: wasmtime.FuncType, fn: HostFunc) -> None:
        if self._linker is None:
            raise ValueError(f"cannot define {module}.{name}: these host functions are closed")
        where = f"{module}.{name}"
        has_result = bool(_signature(ty, where)[1])
        binding = self._binding  # not self: see _Binding

        def wrapper(caller: wasmtime.Caller, *args: int) -> int | None:
            try:
                value = fn(_PublicCaller(binding, caller), *args)
                return _check_result(value) if has_result else None
            except BaseException as exc:
                raise wasmtime.Trap(_record_fault(exc, where)) from None

        self._linker.define_func(module, name, ty, wrapper, access_caller=True)

    def bind(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._binding.bound = _Bound(weakref.ref(store), _context_address(store), memory, None)

    def close(self) -> None:
        self._linker = self._binding.bound = None


class _PublicFunc:
    def __init__(self, store: wasmtime.Store, func: wasmtime.Func) -> None:
        params, _ = _signature(func.type(store), "guest function")
        self._store, self._func, self._nargs = store, func, len(params)

    def __call__(self, *args: int) -> int | None:
        if len(args) != self._nargs:
            raise TypeError(f"guest function takes {self._nargs} arguments, {len(args)} given")
        try:
            result = self._func(self._store, *args)
        except wasmtime.ExitTrap as exc:
            raise CallExit(exc.code) from None
        except wasmtime.Trap as exc:
            raise _trap_error(exc.message, exc.trap_code) from None
        except wasmtime.WasmtimeError as exc:
            raise _trap_error(str(exc), None) from None
        return None if result is None else int(result)


class _PublicBackend:
    name = "public"

    def host(self, linker: wasmtime.Linker) -> HostFunctions:
        return _PublicHost(linker)

    def func(self, store: wasmtime.Store, func: wasmtime.Func) -> GuestFunc:
        return _PublicFunc(store, func)

    def memory(self, store: wasmtime.Store, memory: wasmtime.Memory) -> GuestMemory:
        return _PublicMemory(store, memory)

    def deadline(self, store: wasmtime.Store) -> Callable[[int], None]:
        return store.set_epoch_deadline
