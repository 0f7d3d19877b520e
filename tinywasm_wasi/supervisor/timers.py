"""Quarantine retry timers: one per module name, on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["RetryTimers"]


class RetryTimers:
    """Calls `fire(name)` once a quarantined module's backoff has elapsed."""

    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def schedule(self, name: str, delay: float) -> None:
        """(Re)arm `name`'s timer: a timer already set for it is replaced."""
        self.cancel(name)
        loop = asyncio.get_running_loop()
        self._timers[name] = loop.call_later(delay, self._run, name)

    def _run(self, name: str) -> None:
        self._timers.pop(name, None)
        self._fire(name)

    def cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def cancel_all(self) -> None:
        for name in list(self._timers):
            self.cancel(name)

    def __contains__(self, name: str) -> bool:
        return name in self._timers
