"""The wasmtime engine shared by every module, its epoch clock, and compiling module files.

Compiling is CPU work that wasmtime does with the GIL released; callers run
`compile_module` in a worker thread, off the event loop.

The engine runs with epoch interruption: a daemon thread advances the engine's
epoch every `EPOCH_TICK` seconds, and each call into a guest sets its store's
deadline a number of ticks ahead (`deadline_ticks`), so a runaway call traps
with INTERRUPT instead of holding its worker thread forever. Linear memories reserve
no address space up front (wasmtime's default is 4 GiB per instance), so
hundreds of modules fit in a small virtual address space.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.runtime.abi import ModuleInterface, inspect_module
from tinywasm_wasi.runtime.cache import ModuleCache
from tinywasm_wasi.runtime.workers import WorkerPool
from tinywasm_wasi.runtime.workers import shared as shared_workers

__all__ = ["ENGINE_SETTINGS", "EPOCH_TICK", "CompiledModule", "Runtime", "deadline_ticks"]

# Every wasmtime.Config attribute the engine sets; a compiled module is only valid
# for an engine built with the same settings (the compile cache keys on them).
ENGINE_SETTINGS: dict[str, bool | int] = {
    "epoch_interruption": True,
    "memory_reservation": 0,
    "memory_guard_size": 64 * 1024,
    "memory_reservation_for_growth": 1024 * 1024,
    # Off: wasmtime's C API cannot describe these proposals' value types (v128, typed and
    # GC references, exnref). Reading one in an import or export signature aborts the
    # whole process, so modules that use them are refused when they compile instead.
    "wasm_simd": False,
    "wasm_relaxed_simd": False,
    "wasm_gc": False,
    "wasm_function_references": False,
    "wasm_exceptions": False,
}
# Seconds between epoch increments. A deadline fires between `timeout` and `timeout`
# plus one tick. Finer ticks cost latency everywhere: each wake-up takes the GIL from
# the event loop (with 5 ms ticks fan-out p50 latency went from 3 ms to 67 ms; with
# 25 ms ticks it stayed at 1-3 ms).
EPOCH_TICK = 0.025


def deadline_ticks(timeout: float) -> int:
    """Epoch ticks to allow for a call of `timeout` seconds (at least `timeout`, plus one tick)."""
    return max(1, math.ceil(timeout / EPOCH_TICK)) + 1


@dataclass(frozen=True, slots=True)
class CompiledModule:
    """A module file compiled and checked against the guest interface."""

    name: str
    path: Path | None
    sha256: str
    size: int
    module: wasmtime.Module
    interface: ModuleInterface
    compile_ms: float  # compiling, or loading from the cache when `cached`
    cached: bool = False  # loaded from the compiled-module cache, not compiled


class _EpochClock:
    """One daemon thread advancing the epoch of every live Runtime's engine.

    Runtimes are held weakly, so one that is dropped without `close()` stops
    being ticked; the thread exits when none is left and restarts on demand.
    """

    def __init__(self) -> None:
        self._runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, runtime: Runtime) -> None:
        with self._lock:
            self._runtimes.add(runtime)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wasm-epoch", daemon=True)
                self._thread.start()

    def discard(self, runtime: Runtime) -> None:
        with self._lock:
            self._runtimes.discard(runtime)

    def _run(self) -> None:
        while True:
            time.sleep(EPOCH_TICK)
            with self._lock:
                engines = [r.engine for r in self._runtimes]
                if not engines:
                    self._thread = None
                    return
            for engine in engines:
                engine.increment_epoch()
            del engines


class Runtime:
    """Owns the wasmtime Engine, its epoch clock and the worker pool its modules run on.

    Thread-safe; `close()` stops the clock.
    """

    def __init__(self, cache_dir: Path | None = None, *, workers: WorkerPool | None = None) -> None:
        # The threads that run this runtime's modules' mailboxes (default: the process's).
        self.workers = workers if workers is not None else shared_workers()
        config = wasmtime.Config()
        for key, value in ENGINE_SETTINGS.items():
            setattr(config, key, value)
        self.engine = wasmtime.Engine(config)
        # Keyed on the same settings the engine was built from (and the wasmtime version).
        self.cache = ModuleCache(cache_dir, ENGINE_SETTINGS) if cache_dir is not None else None
        _CLOCK.add(self)

    def close(self) -> None:
        """Stop advancing this engine's epoch (calls then run without a deadline). Idempotent."""
        _CLOCK.discard(self)

    def compile_module(
        self, name: str, data: bytes, path: Path | None = None, *, sha256: str | None = None
    ) -> CompiledModule:
        """Compile and check `data`; raise ModuleLoadError with the reason if it is unusable.

        `sha256` is the bytes' hash when the caller has it already (it keys the cache).
        """
        started = time.perf_counter()
        if not data.startswith(b"\0asm"):
            what = "empty" if not data else "not a WebAssembly binary (no \\0asm magic)"
            raise ModuleLoadError(f"{what}: build it with `tinywasm build`")
        if sha256 is None:
            sha256 = hashlib.sha256(data).hexdigest()
        cache = self.cache
        module = cache.load(self.engine, sha256, name) if cache is not None else None
        cached = module is not None
        if module is None:
            try:
                module = wasmtime.Module(self.engine, data)
            except wasmtime.WasmtimeError as exc:
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                raise ModuleLoadError(f"invalid WebAssembly: {' '.join(lines[:3])}") from None
        interface = inspect_module(module)
        if cache is not None and not cached:  # only modules that pass the interface check
            cache.store(sha256, module, name)
        return CompiledModule(
            name=name,
            path=path,
            sha256=sha256,
            size=len(data),
            module=module,
            interface=interface,
            compile_ms=(time.perf_counter() - started) * 1000,
            cached=cached,
        )


_CLOCK = _EpochClock()
