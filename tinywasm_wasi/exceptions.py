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
    ├── build.BuildError      compiling a C module failed
    ├── limits.LimitsError    a limit value or limits.toml is invalid (also a ValueError)
    ├── rules.RuleError       a middleware rule or module file name is invalid (ValueError)
    └── http_abi.ResponseError    a module's HTTP answer breaks the interface (ValueError)
"""

from __future__ import annotations

__all__ = [
    "GuestError",
    "GuestTrap",
    "MailboxFullError",
    "ModuleClosedError",
    "ModuleLoadError",
    "TinywasmError",
    "UnknownImportError",
]


class TinywasmError(Exception):
    """Root of every error raised by `tinywasm_wasi`."""


class ModuleLoadError(TinywasmError):
    """A module file could not be compiled, linked or started."""


class UnknownImportError(ModuleLoadError):
    """The module imports something the host does not provide."""


class GuestError(TinywasmError):
    """A call into a running module failed."""


class GuestTrap(GuestError):
    """The guest trapped. `code` is wasmtime's trap code name or None; `call` the export."""

    def __init__(self, module: str, call: str, message: str, code: str | None = None) -> None:
        self.module = module
        self.call = call
        self.code = code
        label = f" [{code}]" if code else ""
        super().__init__(f"module {module!r} trapped in {call}(){label}: {message}")


class MailboxFullError(GuestError):
    """The module's mailbox is full: the request was refused, not queued; retry later."""


class ModuleClosedError(TinywasmError, RuntimeError):
    """A module was used after it was closed."""
