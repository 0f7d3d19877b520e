"""tinywasm-wasi: host WebAssembly modules on a pub/sub bus with WebSocket fan-out."""

from tinywasm_wasi.config import Config
from tinywasm_wasi.exceptions import (
    GuestError,
    GuestTrap,
    ModuleClosedError,
    ModuleLoadError,
    TinywasmError,
    UnknownImportError,
)

__all__ = [
    "Config",
    "DefaultServer",
    "GuestError",
    "GuestTrap",
    "ModuleClosedError",
    "ModuleLoadError",
    "TinywasmError",
    "UnknownImportError",
    "WasiServer",
]


def __getattr__(name: str) -> object:
    # The servers pull in aiohttp; import them only when asked for.
    if name in ("WasiServer", "DefaultServer"):
        from tinywasm_wasi import server

        return getattr(server, name)
    raise AttributeError(f"module 'tinywasm_wasi' has no attribute {name!r}")
