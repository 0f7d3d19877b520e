"""Hand work from module threads to the event loop, batched.

Guest `ws_broadcast` calls arrive on module threads; the WebSocket hub lives
on the event loop. `LoopBridge.submit` appends to a deque and schedules at most
one flush at a time with `call_soon_threadsafe`, so a burst of broadcasts
costs one loop wake-up, and order across all threads is the order of `submit`.

`Answers` does the same for the answers to HTTP requests: a module thread
settles an asyncio future through it, and a burst of answers costs one wake-up
instead of one per request (as `asyncio.wrap_future` would).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Answers", "LoopBridge"]

log = logging.getLogger("tinywasm.bridge")


class _Batched:
    """Run `_flush` on `loop` once per burst of `_wake` calls from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._scheduled = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush on `loop` from now on (for a bridge made before its loop runs)."""
        self._loop = loop

    def _wake(self) -> bool:
        """Schedule a flush unless one is pending; False if the loop is closed."""
        with self._lock:
            if self._scheduled:
                return True
            self._scheduled = True
        loop = self._loop
        if loop is None:
            raise RuntimeError("bridge used before bind(loop)")
        try:
            loop.call_soon_threadsafe(self._run_flush)
        except RuntimeError:  # the loop is closed: the server is gone
            return False
        return True

    def _run_flush(self) -> None:
        with self._lock:
            self._scheduled = False
        self._flush()

    def _flush(self) -> None:
        raise NotImplementedError


class LoopBridge(_Batched):
    """Run `sink(topic, payload)` on `loop` for every `submit`, in submit order."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None, sink: Callable[[str, bytes], object]
    ) -> None:
        super().__init__(loop)
        self._sink = sink
        self._pending: deque[tuple[str, bytes]] = deque()

    def submit(self, topic: str, payload: bytes) -> None:
        """Queue one call; safe from any thread. After the loop closed, nobody listens."""
        self._pending.append((topic, payload))
        if not self._wake():
            self._pending.clear()

    def _flush(self) -> None:
        pending = self._pending
        while pending:
            topic, payload = pending.popleft()
            try:
                self._sink(topic, payload)
            except Exception:
                log.exception("broadcast to %r failed", topic)


class Answers(_Batched):
    """Settle asyncio futures of `loop` from any thread, one loop wake-up per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._pending: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()

    def future(self) -> tuple[asyncio.Future[Any], Callable[[Any, BaseException | None], None]]:
        """A new future and the function (any thread) that settles it: `reply(result, error)`."""
        assert self._loop is not None
        future = self._loop.create_future()

        def reply(result: Any, error: BaseException | None) -> None:
            self._pending.append((future, result, error))
            if not self._wake():  # the loop is closed: nobody waits any more
                self._pending.clear()

        return future, reply

    def _flush(self) -> None:
        pending = self._pending
        while pending:
            future, result, error = pending.popleft()
            if future.done():  # cancelled: the client went away
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
