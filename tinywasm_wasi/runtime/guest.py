"""One instantiated module: its wasmtime Store, its exports and the host functions it calls.

A `Guest` is used by one thread at a time (the pool worker running its
mailbox's item): wasmtime stores are not thread-safe, and the mailbox guarantees
calls never overlap and hands the guest between workers under its lock. Everything the
guest asks of the outside world goes through a `GuestEffects` object, so this
file knows nothing of the bus, the WebSocket hub or asyncio.

Guest calls and host callbacks go through `fastcall` (wasmtime's unchecked C
API, with the public API as fallback): about 1 µs per call instead of 15-30.

Host functions validate every pointer and length against the guest's memory.
A bad one traps the guest call; the message is also recorded on the Guest,
because the public-API fallback passes host exceptions through a process-wide
global that another thread may overwrite.

Limits (`Limits`): the store caps linear memory (``memory.grow`` returns -1
past it), and every call gets an epoch deadline `call_timeout` ahead, so a
runaway call traps with INTERRUPT (see runtime.py for the epoch clock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import wasmtime

from bus import MAX_TOPIC_BYTES
from tinywasm_wasi.exceptions import GuestTrap, ModuleClosedError, ModuleLoadError, TrapCode
from tinywasm_wasi.policy import backtrace
from tinywasm_wasi.policy.limits import COMPAT_RESPONSE_CAP, MAX_LOG_LINE, Limits
from tinywasm_wasi.policy.metadata import MAX_METADATA
from tinywasm_wasi.runtime import fastcall
from tinywasm_wasi.runtime.abi import (
    HOST_IMPORTS,
    HOST_IMPORTS_I32,
    HOST_MODULE,
    WASI_MODULE,
    ModuleInterface,
)
from tinywasm_wasi.runtime.engine import deadline_ticks
from tinywasm_wasi.runtime.fastcall import HostCaller as Caller

__all__ = ["Guest", "GuestEffects"]

log = logging.getLogger("tinywasm.guest")

U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
ERRNO_SUCCESS = 0
ERRNO_BADF = 8
ERRNO_FAULT = 21
ERRNO_INVAL = 28
ERRNO_NOTSUP = 58
MAX_TABLE_ELEMENTS = 100_000  # per table; a C module's function table holds a few hundred
MAX_TABLES = 8
MAX_IOVECS = 1024  # IOV_MAX on Linux
HARD_LIMIT = 10  # a call that keeps calling host functions may run this many deadlines
KEPT_BLOCK_MIN = 256  # bytes: the smallest block kept for deliveries and requests
_FIRST_WINDOW = 512  # bytes looked at first for the NUL ending a compat response
KEPT_BLOCK_MAX = 64 * 1024  # bytes: larger data gets a block of its own, freed after
MAX_WRITE = 64 * 1024  # bytes of one fd_write that reach the log; the rest is consumed unseen
STDOUT, STDERR = 1, 2


class GuestEffects(Protocol):
    """What a guest may do to the world; implemented by the module that owns it."""

    def publish(self, topic: bytes, payload: bytes) -> None: ...
    def broadcast(self, topic: bytes, payload: bytes) -> None: ...
    def subscribe(self, pattern: bytes) -> None: ...
    def unsubscribe(self, pattern: bytes) -> None: ...
    def log(self, line: str, *, stream: str) -> None: ...
    def refuse(self, call: str, reason: str) -> None: ...


def _no_poll(_caller: Caller, _in: int, _out: int, _count: int, _events: int) -> int:
    return ERRNO_NOTSUP


class _ClosedMemory:
    """The memory of a closed guest: empty."""

    def size(self) -> int:
        return 0

    def read(self, ptr: int, length: int) -> bytes:
        raise ModuleClosedError("the module is closed: its memory is gone")

    def write(self, ptr: int, data: bytes) -> None:
        raise ModuleClosedError("the module is closed: its memory is gone")


_CLOSED_MEMORY = _ClosedMemory()


def _no_deadline(_ticks: int) -> None:
    """The deadline setter of a closed guest."""


class Guest:
    """A live instance of one compiled module. Use from one thread at a time (its mailbox)."""

    def __init__(
        self,
        name: str,
        engine: wasmtime.Engine,
        module: wasmtime.Module,
        interface: ModuleInterface,
        effects: GuestEffects,
        limits: Limits | None = None,
        config: Mapping[bytes, bytes] | None = None,
    ) -> None:
        self.name = name
        self.interface = interface
        self._config: Mapping[bytes, bytes] = config or {}
        # Who published the message being delivered (UTF-8), for `message_sender`;
        # None outside a delivery or for a message without one.
        self._sender: bytes | None = None
        self.limits = limits = limits or Limits()
        self._effects = effects
        self._fault: str | None = None
        self._partial: dict[int, bytes] = {STDOUT: b"", STDERR: b""}
        self._kept = (0, 0)  # (pointer, size) of the block kept for deliveries
        self._ticks = deadline_ticks(limits.call_timeout)
        self._hard_limit = HARD_LIMIT * limits.call_timeout
        self._hard_until = 0.0
        self._store: wasmtime.Store | None = wasmtime.Store(engine)
        self._store.set_wasi(wasmtime.WasiConfig())  # empty: no dirs, env or args
        self._store.set_limits(
            memory_size=limits.memory_limit,
            table_elements=MAX_TABLE_ELEMENTS,
            instances=1,
            tables=MAX_TABLES,
            memories=1,
        )
        backend = fastcall.backend()
        linker = wasmtime.Linker(engine)
        self._host = self._define_host_functions(backend, linker)
        try:
            self._store.set_epoch_deadline(self._ticks)  # covers a start function
            instance = linker.instantiate(self._store, module)
        except wasmtime.Trap as exc:
            self._release()
            trap = fastcall.call_trap(exc)
            raise self._trap("start", trap.message, trap.trap_code, trap.details) from None
        except wasmtime.WasmtimeError as exc:
            self._release()
            reason = " ".join(str(exc).strip().splitlines()[:2])
            if "memory minimum size" in reason:
                reason += f" (its initial memory is over the {limits.memory_limit} byte limit)"
            raise ModuleLoadError(f"cannot instantiate: {reason}") from None
        exports = instance.exports(self._store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)  # inspect_module checked it
        self._host.bind(self._store, memory)
        self._memory: fastcall.GuestMemory = backend.memory(self._store, memory)
        self._set_deadline: Callable[[int], None] = backend.deadline(self._store)
        self._funcs: dict[str, fastcall.GuestFunc] = {}
        for export in interface.exports:
            func = exports[export]
            if isinstance(func, wasmtime.Func):
                self._funcs[export] = backend.func(self._store, func)

    # -- calls into the guest -------------------------------------------------------------

    def start(self) -> None:
        """Run `_initialize` or `_start` (once), then `init()`. `proc_exit(0)` is success."""
        entry = self.interface.entry
        if entry is not None:
            try:
                self.call(entry)
            except GuestTrap as exc:
                if exc.code is not TrapCode.EXIT or exc.exit_status != 0:
                    raise
        if self.interface.has_init:
            self.call("init")

    def deliver(self, topic: str, payload: bytes, sender: str = "") -> None:
        """Hand one message to the guest's handler, through guest memory.

        During the call `message_sender` answers with `sender` ("" = no sender)."""
        handler = self.interface.handler
        if handler is None:
            raise GuestTrap(
                self.name,
                "on_message",
                "it subscribed but exports neither on_message nor on_topic_message",
                None,
            )
        if self.interface.allocator is None:
            raise GuestTrap(
                self.name,
                handler,
                "it exports no malloc or alloc, so the host cannot place the message in its memory",
                None,
            )
        if handler == "on_topic_message":
            tbytes = topic.encode()
            ptr, owned = self._lend(tbytes + payload)
            self._sender = sender.encode() if sender else None
            try:
                self.call(handler, ptr, len(tbytes), ptr + len(tbytes), len(payload))
            finally:
                self._sender = None
        else:
            ptr, owned = self._lend(payload)
            self._sender = sender.encode() if sender else None
            try:
                self.call(handler, ptr, len(payload))
            finally:
                self._sender = None
        if owned and self.interface.has_free:
            self.call("free", ptr)

    def drain(self) -> int:
        """Milliseconds the guest asks to wait before it is idle (0 = idle or no export)."""
        if not self.interface.has_drain:
            return 0
        result = self.call("drain")
        return max(0, int(result))

    def save_state(self) -> bytes | None:
        """The bytes `save_state()` points at (pointer high 32 bits, length low), or None."""
        if not self.interface.has_state[0]:
            return None
        packed = int(self.call("save_state")) & U64
        return self.read("save_state", packed >> 32, packed & U32, self.limits.memory_limit)

    def restore_state(self, data: bytes) -> str | None:
        """Hand `data` to `restore_state(ptr, len)`; None if taken, else why it was dropped."""
        if not self.interface.has_state[1]:
            return "the new version does not export restore_state"
        if self.interface.allocator is None:
            return "the new version exports restore_state but no malloc or alloc to receive it"
        ptr = self._place(data)
        result = self.call("restore_state", ptr, len(data))
        if self.interface.has_free:
            self.call("free", ptr)
        if result:  # the `-> i32` form: non-zero is a refusal
            tag = f" (version tag {int.from_bytes(data[:4], 'little')})" if len(data) >= 4 else ""
            return f"restore_state rejected the state{tag}"
        return None

    def validate_config(self) -> int | None:
        """`validate_config()`'s result (0 accepts the config), or None without the export."""
        if not self.interface.has_validate_config:
            return None
        result = int(self.call("validate_config")) & U32
        return result - (1 << 32) if result >= 1 << 31 else result

    def health_check(self) -> int | None:
        """`health_check()`'s result (0 is healthy), or None if the guest does not export it."""
        if not self.interface.has_health_check:
            return None
        result = int(self.call("health_check")) & U32
        return result - (1 << 32) if result >= 1 << 31 else result

    def metadata(self) -> bytes | None:
        """The bytes `get_metadata()` points at (pointer high 32 bits, length low), or None."""
        if not self.interface.has_metadata:
            return None
        packed = int(self.call("get_metadata")) & U64
        return self.read("get_metadata", packed >> 32, packed & U32, MAX_METADATA)

    def http(self, export: str, request: bytes, limit: int) -> bytes | None:
        """Call `handle` or `handle_http` with `request` placed in guest memory.

        `handle` returns a pointer to a NUL-terminated body (at most 64 KiB);
        `handle_http` returns ``ptr << 32 | len`` of a response of at most
        `limit` bytes. A 0 result means no response (None).
        """
        if self.interface.allocator is None:
            raise GuestTrap(
                self.name,
                export,
                "it exports no malloc or alloc, so the host cannot place the request in its memory",
                None,
            )
        ptr, owned = self._lend(request)
        result = int(self.call(export, ptr, len(request)))
        if export == "handle":
            body = None if result & U32 == 0 else self._read_cstring(export, result & U32)
        else:
            packed = result & U64
            body = None if packed == 0 else self.read(export, packed >> 32, packed & U32, limit)
        if owned and self.interface.has_free:
            self.call("free", ptr)
        return body

    def read(self, call: str, ptr: int, length: int, limit: int) -> bytes:
        """`length` bytes at `ptr` returned by `call`; GuestTrap if outside memory or too long."""
        if length > limit:
            raise GuestTrap(
                self.name, call, f"returned {length} bytes, over the {limit} byte limit", None
            )
        self._open(call)
        size = self._memory.size()
        if ptr + length > size:
            raise GuestTrap(
                self.name,
                call,
                f"returned {ptr:#x}+{length}, outside its memory ({size} bytes)",
                TrapCode.HOST_FAULT,
            )
        return self._memory.read(ptr, length)

    def _read_cstring(self, call: str, ptr: int) -> bytes:
        size = self._memory.size()
        if ptr >= size:
            raise GuestTrap(
                self.name, call, f"returned {ptr:#x}, outside its memory ({size} bytes)", None
            )
        # Most bodies are short: look for the NUL in a small window before copying the
        # whole 64 KiB one (a copy and a 64 KiB allocation per request otherwise).
        window = self._memory.read(ptr, min(_FIRST_WINDOW, size - ptr))
        end = window.find(b"\0")
        if end < 0 and len(window) == _FIRST_WINDOW:
            window = self._memory.read(ptr, min(COMPAT_RESPONSE_CAP + 1, size - ptr))
            end = window.find(b"\0")
        if end < 0:
            raise GuestTrap(
                self.name,
                call,
                f"returned a body with no NUL within {COMPAT_RESPONSE_CAP} bytes "
                "(compat responses are NUL-terminated text of at most 64 KiB; "
                "export handle_http for larger bodies)",
                None,
            )
        return window[:end]

    def close(self) -> None:
        """Release the store; flush a partial output line. Safe to call twice."""
        for fd, rest in self._partial.items():
            if rest:
                self._emit_output(fd, rest)
        self._partial = {STDOUT: b"", STDERR: b""}
        self._release()

    def _release(self) -> None:
        """Let go of the store and everything that keeps it alive.

        The host functions live in a registry of callbacks (a root) until wasmtime frees
        the store and the linker, and they hold this Guest's methods: so everything here
        that holds the store must let go of it, or the Guest, its store and its module's
        memory image (a memfd) are never freed, by the cyclic collector either.
        """
        self._funcs = {}
        self._memory = _CLOSED_MEMORY
        self._set_deadline = _no_deadline
        if self._store is not None:
            self._host.close()
            self._store = None

    @property
    def memory_size(self) -> int:
        return 0 if self._store is None else self._memory.size()

    # -- internals ------------------------------------------------------------------------

    def call(self, export: str, *args: int) -> Any:
        """Call export `export` with a fresh deadline; traps come back as GuestTrap."""
        self._open(export)
        self._fault = None
        self._hard_until = time.monotonic() + self._hard_limit
        try:
            self._set_deadline(self._ticks)
            return self._funcs[export](*args)
        except fastcall.CallExit as exc:
            raise GuestTrap(
                self.name, export, f"proc_exit({exc.code})", TrapCode.EXIT, exit_status=exc.code
            ) from None
        except fastcall.CallTrap as exc:
            raise self._trap(export, exc.message, exc.trap_code, exc.details) from None

    def _rearm(self) -> None:
        """After a host function: the deadline starts again, unless the call is past its cap.

        The deadline bounds guest code, not the host's work or a wait for the GIL
        inside a host function (under load that could interrupt a healthy module).
        A call that keeps calling the host is still stopped at `HARD_LIMIT` times
        the deadline.
        """
        if time.monotonic() < self._hard_until:
            self._set_deadline(self._ticks)

    def _open(self, call: str) -> wasmtime.Store:
        if self._store is None:
            raise ModuleClosedError(f"cannot call {call}() of module {self.name!r}: it is closed")
        return self._store

    def _trap(
        self, call: str, message: str, code: wasmtime.TrapCode | None, details: str = ""
    ) -> GuestTrap:
        names = backtrace.frames(details)
        shown = backtrace.describe(names)
        where = f" (at {shown})" if shown else ""
        if self._fault is not None:
            return GuestTrap(
                self.name, call, self._fault + where, TrapCode.HOST_FAULT, backtrace=names
            )
        if code is wasmtime.TrapCode.INTERRUPT:
            message = (
                f"interrupted: ran past its {self.limits.call_timeout * 1000:g} ms deadline "
                "(raise call_timeout for this module in limits.toml, or make the call shorter)"
            )
        if code is not None and TrapCode.of(code.name) is TrapCode.OTHER:
            message = f"{message} (wasmtime trap code {code.name})"
        return GuestTrap(
            self.name,
            call,
            message + where,
            None if code is None else TrapCode.of(code.name),
            backtrace=names,
        )

    def _lend(self, data: bytes) -> tuple[int, bool]:
        """Place a delivery or request; returns (pointer, whether the caller must free it).

        Data up to `KEPT_BLOCK_MAX` bytes goes into one block the host keeps from
        `malloc` and reuses, so a delivery costs one guest call instead of three.
        The block is freed when a larger one replaces it; the store's end frees
        the last one. Larger data gets its own block, freed after the call.
        """
        size = len(data)
        if size > KEPT_BLOCK_MAX:
            return self._place(data), True
        ptr, capacity = self._kept
        if size > capacity or ptr == 0:
            if ptr and self.interface.has_free:
                self._kept = (0, 0)
                self.call("free", ptr)
            capacity = min(KEPT_BLOCK_MAX, max(KEPT_BLOCK_MIN, 1 << (size - 1).bit_length()))
            ptr = self._allocate(capacity)
            self._kept = (ptr, capacity)
        if data:
            self._memory.write(ptr, data)
        return ptr, False

    def _place(self, data: bytes) -> int:
        ptr = self._allocate(len(data))
        if data:
            self._memory.write(ptr, data)
        return ptr

    def _allocate(self, size: int) -> int:
        """A block of `size` bytes from the guest's allocator, checked against its memory."""
        allocator = self.interface.allocator
        assert allocator is not None
        ptr = int(self.call(allocator, max(1, size))) & U32
        if ptr == 0:
            raise GuestTrap(self.name, allocator, f"returned 0 for {size} bytes", None)
        if ptr + size > self._memory.size():
            raise GuestTrap(self.name, allocator, f"returned {ptr:#x}, outside its memory", None)
        return ptr

    def _check(
        self, caller: fastcall.HostCaller, func: str, what: str, ptr: int, length: int
    ) -> None:
        """Trap the guest unless `ptr`..`ptr+length` lies inside its memory."""
        ptr &= U32
        length &= U32
        size = caller.size()
        if ptr + length > size:
            self._fault = (
                f"{func}: {what} at {ptr:#x} with length {length} is outside guest memory "
                f"({size} bytes)"
            )
            raise fastcall.HostTrap(self._fault)

    def _read(
        self, caller: fastcall.HostCaller, func: str, what: str, ptr: int, length: int
    ) -> bytes:
        self._check(caller, func, what, ptr, length)
        length &= U32
        return caller.read(ptr & U32, length) if length else b""

    def _define_host_functions(
        self, backend: fastcall.Backend, linker: wasmtime.Linker
    ) -> fastcall.HostFunctions:
        linker.define_wasi()
        linker.allow_shadowing = True
        host = backend.host(linker)
        i32 = wasmtime.ValType.i32()
        effects = self._effects
        read = self._read
        check = self._check
        max_payload = self.limits.max_payload

        def fits(c: Caller, call: str, tp: int, tl: int, pp: int = 0, pl: int = 0) -> bool:
            # Pointers are checked first (a bad one traps); caps before copying anything.
            size = c.size()
            if (tp & U32) + (tl & U32) > size:
                check(c, call, "topic", tp, tl)  # raises, with the message
            if (pp & U32) + (pl & U32) > size:
                check(c, call, "payload", pp, pl)
            if tl & U32 > MAX_TOPIC_BYTES:
                effects.refuse(call, f"topic of {tl & U32} bytes (the limit is {MAX_TOPIC_BYTES})")
                return False
            if pl & U32 > max_payload:
                effects.refuse(
                    call,
                    f"payload of {pl & U32} bytes (the limit is {max_payload}; "
                    "raise max_payload for this module in limits.toml)",
                )
                return False
            return True

        def publish(c: Caller, tp: int, tl: int, pp: int, pl: int) -> None:
            if fits(c, "publish", tp, tl, pp, pl):
                effects.publish(c.read(tp & U32, tl & U32), c.read(pp & U32, pl & U32))

        def ws_broadcast(c: Caller, tp: int, tl: int, pp: int, pl: int) -> None:
            if fits(c, "ws_broadcast", tp, tl, pp, pl):
                effects.broadcast(c.read(tp & U32, tl & U32), c.read(pp & U32, pl & U32))

        def subscribe(c: Caller, tp: int, tl: int, _handler_idx: int) -> None:
            if fits(c, "subscribe", tp, tl):
                effects.subscribe(c.read(tp & U32, tl & U32))

        def unsubscribe(c: Caller, tp: int, tl: int) -> None:
            if fits(c, "unsubscribe", tp, tl):
                effects.unsubscribe(c.read(tp & U32, tl & U32))

        def log_(c: Caller, mp: int, ml: int) -> None:
            check(c, "log", "message", mp, ml)  # the whole range, though only 4 KiB is read
            data = read(c, "log", "message", mp, min(ml & U32, MAX_LOG_LINE))
            if ml & U32 > MAX_LOG_LINE:
                effects.refuse("log", f"line of {ml & U32} bytes cut to {MAX_LOG_LINE}")
            effects.log(data.decode("utf-8", "replace"), stream="log")

        funcs: dict[str, Callable[..., None]] = {
            "publish": publish,
            "ws_broadcast": ws_broadcast,
            "subscribe": subscribe,
            "unsubscribe": unsubscribe,
            "log": log_,
        }
        rearm = self._rearm

        def rearming(fn: Callable[..., Any]) -> Callable[..., Any]:
            def host_function(c: Caller, *args: int) -> Any:
                try:
                    return fn(c, *args)
                finally:
                    rearm()

            return host_function

        for name, nparams in HOST_IMPORTS.items():
            ty = wasmtime.FuncType([i32] * nparams, [])
            host.define(HOST_MODULE, name, ty, rearming(funcs[name]))
        config = self._config

        def config_get(c: Caller, kp: int, kl: int, bp: int, bl: int) -> int:
            # The value's length (copied up to bl bytes), or -1 when the key is not set.
            check(c, "config_get", "key", kp, kl)
            check(c, "config_get", "buffer", bp, bl)
            if kl & U32 > MAX_TOPIC_BYTES:
                return -1
            value = config.get(c.read(kp & U32, kl & U32))
            if value is None:
                return -1
            n = min(len(value), bl & U32)
            if n:
                c.write(bp & U32, value[:n])
            return len(value)

        def message_sender(c: Caller, bp: int, bl: int) -> int:
            # Version 2. Who published the message being delivered: its length (copied up
            # to bl bytes), or -1 outside a delivery or for a message the server published.
            check(c, "message_sender", "buffer", bp, bl)
            sender = self._sender
            if sender is None:
                return -1
            n = min(len(sender), bl & U32)
            if n:
                c.write(bp & U32, sender[:n])
            return len(sender)

        results: dict[str, Callable[..., int]] = {
            "config_get": config_get,
            "message_sender": message_sender,
        }
        for name, nparams in HOST_IMPORTS_I32.items():
            ty = wasmtime.FuncType([i32] * nparams, [i32])
            host.define(HOST_MODULE, name, ty, rearming(results[name]))
        fd_write_ty = wasmtime.FuncType([i32] * 4, [i32])
        host.define(WASI_MODULE, "fd_write", fd_write_ty, rearming(self._fd_write))
        # WASI's poll_oneoff sleeps in host code, out of the call deadline's reach:
        # a guest may not block its worker, so sleeping is not supported.
        host.define(WASI_MODULE, "poll_oneoff", fd_write_ty, _no_poll)
        return host

    def _fd_write(
        self, caller: fastcall.HostCaller, fd: int, iovs: int, count: int, nwritten: int
    ) -> int:
        """WASI fd_write: stdout and stderr become log lines tagged with the module."""
        if fd not in (STDOUT, STDERR):
            return ERRNO_BADF
        size = caller.size()
        iovs &= U32
        count &= U32
        nwritten &= U32
        if count > MAX_IOVECS:
            return ERRNO_INVAL
        if iovs + 8 * count > size or nwritten + 4 > size:
            return ERRNO_FAULT
        table = caller.read(iovs, 8 * count)
        chunks = []
        total = 0
        budget = MAX_WRITE  # what reaches the log; the host never copies more per call
        for i in range(count):
            ptr = int.from_bytes(table[8 * i : 8 * i + 4], "little")
            length = int.from_bytes(table[8 * i + 4 : 8 * i + 8], "little")
            if ptr + length > size:
                return ERRNO_FAULT
            total += length
            if budget > 0 and length:
                take = min(length, budget)
                chunks.append(caller.read(ptr, take))
                budget -= take
        data = b"".join(chunks)
        caller.write(nwritten, min(total, U32).to_bytes(4, "little"))
        buffered = self._partial[fd] + data
        *lines, rest = buffered.split(b"\n")
        for line in lines:
            self._emit_output(fd, line)
        if len(rest) > MAX_LOG_LINE:
            self._emit_output(fd, rest)
            rest = b""
        self._partial[fd] = rest
        return ERRNO_SUCCESS

    def _emit_output(self, fd: int, line: bytes) -> None:
        if len(line) > MAX_LOG_LINE:
            self._effects.refuse("fd_write", f"line of {len(line)} bytes cut to {MAX_LOG_LINE}")
        text = line[:MAX_LOG_LINE].decode("utf-8", "replace").rstrip("\r")
        self._effects.log(text, stream="stdout" if fd == STDOUT else "stderr")
