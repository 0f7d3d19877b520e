"""Hand calls from module threads to the event loop, batched.

Guest `ws_broadcast` calls arrive on module threads; the WebSocket hub lives
on the event loop. `LoopBridge.submit` appends to a deque and schedules at most
one flush at a time with `call_soon_threadsafe`, so a burst of broadcasts
costs one loop wake-up, and order across all threads is the order of `submit`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable

__all__ = ["LoopBridge"]

log = logging.getLogger("tinywasm.bridge")


class LoopBridge:
    """Run `sink(topic, payload)` on `loop` for every `submit`, in submit order."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sink: Callable[[str, bytes], object]
    ) -> None:
        self._loop = loop
        self._sink = sink
        self._pending: deque[tuple[str, bytes]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self.lost = 0

    def submit(self, topic: str, payload: bytes) -> None:
        """Queue one call; safe from any thread."""
        self._pending.append((topic, payload))
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed: the server is gone
            self.lost += len(self._pending)
            self._pending.clear()

    def _flush(self) -> None:
        with self._lock:
            self._scheduled = False
        pending = self._pending
        while pending:
            topic, payload = pending.popleft()
            try:
                self._sink(topic, payload)
            except Exception:
                log.exception("broadcast to %r failed", topic)
