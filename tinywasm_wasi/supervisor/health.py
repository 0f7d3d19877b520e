"""Periodic health checks: every `interval` seconds, each live module's `health_check()`.

A module that answers non-zero, traps or does not answer in time is marked
unhealthy in its status (it keeps serving: the check reports, it does not act).
The check before a version takes traffic is part of starting it (`runtime/module.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tinywasm_wasi.runtime.module import WasmModule

__all__ = ["HealthChecker"]

log = logging.getLogger("tinywasm.health")


class HealthChecker:
    """One background task checking every live module in turn; `close()` stops it."""

    def __init__(self, live: Callable[[], list[WasmModule]], interval: float) -> None:
        self._live = live
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="health checks")

    async def check_all(self) -> None:
        """One round: every live module with a health_check, all at once."""
        modules = [m for m in self._live() if m.compiled.interface.has_health_check]
        await asyncio.gather(*(m.check_health(max(1.0, self.interval)) for m in modules))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_all()
            except Exception:  # a bug here must not end the checks
                log.exception("health check round failed")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
