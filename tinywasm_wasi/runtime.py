"""The wasmtime engine shared by every module, and compiling module files.

Compiling is CPU work that wasmtime does with the GIL released; callers run
`compile_module` in a worker thread, off the event loop.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from tinywasm_wasi.abi import ModuleInterface, inspect_module
from tinywasm_wasi.exceptions import ModuleLoadError

__all__ = ["CompiledModule", "Runtime"]


@dataclass(frozen=True, slots=True)
class CompiledModule:
    """A module file compiled and checked against the guest interface."""

    name: str
    path: Path | None
    sha256: str
    size: int
    module: wasmtime.Module
    interface: ModuleInterface
    compile_ms: float


class Runtime:
    """Owns the wasmtime Engine. Thread-safe."""

    def __init__(self) -> None:
        self.engine = wasmtime.Engine(wasmtime.Config())

    def compile_module(self, name: str, data: bytes, path: Path | None = None) -> CompiledModule:
        """Compile and check `data`; raise ModuleLoadError with the reason if it is unusable."""
        started = time.perf_counter()
        if not data.startswith(b"\0asm"):
            what = "empty" if not data else "not a WebAssembly binary (no \\0asm magic)"
            raise ModuleLoadError(f"{what}: build it with `python -m cmd.tinywasm build`")
        try:
            module = wasmtime.Module(self.engine, data)
        except wasmtime.WasmtimeError as exc:
            first = str(exc).strip().splitlines()
            raise ModuleLoadError(f"invalid WebAssembly: {' '.join(first[:3])}") from None
        interface = inspect_module(module)
        return CompiledModule(
            name=name,
            path=path,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            module=module,
            interface=interface,
            compile_ms=(time.perf_counter() - started) * 1000,
        )
