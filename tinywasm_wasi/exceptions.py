"""Errors raised by the server package.

Hierarchy::

    TinywasmError             root of every error this package raises
    ├── ModuleLoadError       a .wasm file cannot become a running module
    │   └── UnknownImportError    it imports a function the host does not provide
    ├── GuestError            a call into a running module failed
    │   ├── GuestTrap             the guest trapped (trap code and message attached)
    │   ├── MailboxFullError      the module's mailbox is full; retry later
    │   ├── fastcall.HostTrap     raised in a host function to trap its guest
    │   │   └── fastcall.MemoryRangeError   a guest pointer outside its memory
    │   └── fastcall.CallTrap     a guest call trapped (fast-path layer; Guest turns it
    │       └── fastcall.CallExit     into GuestTrap); CallExit: proc_exit
    ├── ModuleClosedError     a module was used after it was closed
    ├── WorkerIdTaken         a live process in the fleet already has this worker's name
    ├── build.BuildError      compiling a C module failed
    ├── limits.LimitsError    a limit value or limits.toml is invalid (also a ValueError)
    ├── rules.RuleError       a middleware rule or module file name is invalid (ValueError)
    ├── names.ModuleNameError a module name outside the documented character set (ValueError)
    └── http_abi.ResponseError    a module's HTTP answer breaks the interface (ValueError)
"""

from __future__ import annotations

import enum

__all__ = [
    "GuestError",
    "GuestTrap",
    "MailboxFullError",
    "ModuleClosedError",
    "ModuleLoadError",
    "TinywasmError",
    "TrapCode",
    "UnknownImportError",
    "WorkerIdTaken",
]


class TinywasmError(Exception):
    """Root of every error raised by `tinywasm_wasi`."""


class ModuleLoadError(TinywasmError):
    """A module file could not be compiled, linked or started."""


class UnknownImportError(ModuleLoadError):
    """The module imports something the host does not provide."""


class GuestError(TinywasmError):
    """A call into a running module failed."""


class TrapCode(enum.StrEnum):
    """Why a guest call failed: wasmtime's trap codes for core modules, and the host's own."""

    STACK_OVERFLOW = "STACK_OVERFLOW"
    MEMORY_OUT_OF_BOUNDS = "MEMORY_OUT_OF_BOUNDS"
    HEAP_MISALIGNED = "HEAP_MISALIGNED"
    TABLE_OUT_OF_BOUNDS = "TABLE_OUT_OF_BOUNDS"
    INDIRECT_CALL_TO_NULL = "INDIRECT_CALL_TO_NULL"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    INTEGER_OVERFLOW = "INTEGER_OVERFLOW"
    INTEGER_DIVISION_BY_ZERO = "INTEGER_DIVISION_BY_ZERO"
    BAD_CONVERSION_TO_INTEGER = "BAD_CONVERSION_TO_INTEGER"
    UNREACHABLE = "UNREACHABLE"
    INTERRUPT = "INTERRUPT"  # ran past its call deadline
    OUT_OF_FUEL = "OUT_OF_FUEL"
    NULL_REFERENCE = "NULL_REFERENCE"
    ARRAY_OUT_OF_BOUNDS = "ARRAY_OUT_OF_BOUNDS"
    ALLOCATION_TOO_LARGE = "ALLOCATION_TOO_LARGE"
    CAST_FAILURE = "CAST_FAILURE"
    UNCAUGHT_EXCEPTION = "UNCAUGHT_EXCEPTION"
    OTHER = "OTHER"  # a code wasmtime added later; the message carries its name
    HOST_FAULT = "host fault"  # a host function refused the call (bad pointer, cap...)
    EXIT = "exit"  # the guest called proc_exit; `GuestTrap.exit_status` has the status

    @classmethod
    def of(cls, wasmtime_name: str) -> TrapCode:
        """Our code for one of wasmtime's `TrapCode` names."""
        member = cls.__members__.get(wasmtime_name)
        return cls.OTHER if member is None or member in _HOST_CODES else member


_HOST_CODES = frozenset({TrapCode.OTHER, TrapCode.HOST_FAULT, TrapCode.EXIT})


class GuestTrap(GuestError):
    """The guest trapped. `code` says why (None: no code); `call` is the export.

    `backtrace` names the guest functions on the stack, innermost first, when the module
    has a name section (the message then ends with them).
    """

    def __init__(
        self,
        module: str,
        call: str,
        message: str,
        code: TrapCode | None = None,
        *,
        exit_status: int | None = None,
        backtrace: tuple[str, ...] = (),
    ) -> None:
        self.module = module
        self.call = call
        self.code = code
        self.exit_status = exit_status
        self.backtrace = backtrace  # the guest's functions, innermost first (name section)
        label = ""
        if code is TrapCode.EXIT:
            label = f" [exit {exit_status}]"
        elif code is not None:
            label = f" [{code.value}]"
        super().__init__(f"module {module!r} trapped in {call}(){label}: {message}")


class MailboxFullError(GuestError):
    """The module's mailbox is full: the request was refused, not queued; retry later."""


class ModuleClosedError(TinywasmError, RuntimeError):
    """A module was used after it was closed."""


class WorkerIdTaken(TinywasmError, RuntimeError):
    """Another live process on the same NATS already beats under this worker's name
    (two machines with the same ``--node``); the message says what to do."""
