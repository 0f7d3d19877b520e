"""The trap window: how many traps, how close together, make a module faulty. Pure."""

from __future__ import annotations

from collections import deque

__all__ = ["TrapWindow"]


class TrapWindow:
    """`limit` traps within `window` seconds is too many; `record(now)` says when it is."""

    def __init__(self, limit: int, window: float) -> None:
        self._times: deque[float] = deque(maxlen=limit)
        self.window = window

    def record(self, now: float) -> bool:
        """Count a trap at `now` (a monotonic clock); True while the last `limit` fit the window."""
        times = self._times
        times.append(now)
        return len(times) == times.maxlen and now - times[0] <= self.window
