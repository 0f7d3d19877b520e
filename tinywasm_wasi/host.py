"""The set of running modules: loading a folder of .wasm files, stopping them all.

A file that cannot be loaded is refused with a logged reason and never stops
the others. Loading runs in three steps across all files (start, activate,
release; see `module.py`) so messages published from one module's `init()`
reach every module started with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from bus import Bus
from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.module import Broadcast, ModuleState, WasmModule
from tinywasm_wasi.runtime import Runtime

__all__ = ["ModuleHost", "is_module_file"]

log = logging.getLogger("tinywasm.host")


def is_module_file(path: Path) -> bool:
    """True for `name.wasm`; False for hidden and temporary files editors and compilers leave."""
    name = path.name
    return (
        name.endswith(".wasm")
        and not name.startswith(".")
        and "_temp_" not in name
        and not name.endswith((".tmp.wasm", "~.wasm"))
        and len(name) > len(".wasm")
    )


class ModuleHost:
    """Owns every running WasmModule, by name."""

    def __init__(
        self,
        runtime: Runtime,
        bus: Bus,
        broadcast: Broadcast,
        *,
        mailbox_size: int,
        drain_timeout: float,
    ) -> None:
        self.runtime = runtime
        self.bus = bus
        self._broadcast = broadcast
        self.mailbox_size = mailbox_size
        self.drain_timeout = drain_timeout
        self.modules: dict[str, WasmModule] = {}
        self.refused: dict[str, str] = {}

    async def load_dir(self, directory: Path) -> None:
        """Load every module file in `directory` (sorted by name)."""
        if not directory.is_dir():
            log.error(
                "modules folder %s does not exist: no modules loaded "
                "(set --modules-dir or TINYWASM_MODULES_DIR)",
                directory,
            )
            return
        paths = sorted(p for p in directory.iterdir() if is_module_file(p))
        started = await asyncio.gather(*(self._start_file(p) for p in paths))
        ready = [m for m in started if m is not None]
        for module in ready:
            module.activate()
            self.modules[module.name] = module
        for module in ready:
            module.release()
        log.info(
            "%d module(s) loaded from %s, %d refused",
            len(ready),
            directory,
            len(paths) - len(ready),
        )

    async def _start_file(self, path: Path) -> WasmModule | None:
        name = path.name[: -len(".wasm")]
        begun = time.perf_counter()
        try:
            data = await asyncio.to_thread(path.read_bytes)
            compiled = await asyncio.to_thread(self.runtime.compile_module, name, data, path)
            module = WasmModule(
                compiled, self.runtime, self.bus, self._broadcast, mailbox_size=self.mailbox_size
            )
            await module.start()
        except (OSError, TinywasmError) as exc:
            self.refused[name] = str(exc)
            log.error("refused module %s: %s", path.name, exc)
            return None
        log.info(
            "loaded module %s (%d bytes, sha256 %s, %.1f ms)",
            name,
            compiled.size,
            compiled.sha256[:12],
            (time.perf_counter() - begun) * 1000,
        )
        return module

    async def quiesce(self, timeout: float) -> bool:
        """Wait until every mailbox is empty and idle at once (messages between modules
        settle), or `timeout` passes. Returns True when all were idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(m.mailbox.idle for m in self.modules.values()):
                return True
            await asyncio.sleep(0.005)
        return False

    async def stop(self) -> None:
        """Let traffic settle, drain every module (up to the drain timeout), close them all."""
        modules = list(self.modules.values())
        await self.quiesce(self.drain_timeout)
        results = await asyncio.gather(*(m.drain(self.drain_timeout) for m in modules))
        for module, idle in zip(modules, results, strict=True):
            if not idle:
                log.warning(
                    "module %s: drain timed out after %.1f s with %d message(s) queued",
                    module.name,
                    self.drain_timeout,
                    module.mailbox.depth,
                )
        await asyncio.gather(*(m.close() for m in modules))
        self.modules.clear()

    def live(self) -> list[WasmModule]:
        return [m for m in self.modules.values() if m.state is ModuleState.LIVE]
