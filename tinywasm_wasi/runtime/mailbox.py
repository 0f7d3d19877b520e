"""A module's mailbox: a bounded FIFO of work served, one item at a time, by a shared pool.

An idle module costs no thread. A mailbox with work queues itself on a
`WorkerPool` (runtime/workers.py, a few threads for the whole process); a worker
runs one of its items and queues it again at the tail if it has more, so a
module's items run in order and never two at once, and modules take turns
(the scheduling rules: `policy/scheduling.py`). wasmtime releases the GIL while
guest code runs, so modules on different workers really run in parallel; a
slow module holds one worker for one item, bounded by its call deadline, never
the event loop; and a wasmtime Store, which is not thread-safe, is only ever
used by one thread at a time (the mailbox's lock orders the hand-overs).

Three kinds of item. Messages ``(topic, payload, sender)`` and HTTP `Request`s are
bounded together by `capacity` (overflow is refused and counted, never
silently lost), held together, and move together to another version during a
swap, so a request is answered exactly once by whichever version takes it.
A call (`call(fn)`), used for init, drain and state handoff, is never refused
and its result comes back through a `concurrent.futures.Future`.
A mailbox can be *held*: messages queue up but none is delivered until
`release()` (a call at the head of the queue still runs); the swap uses this to
keep a new version closed during cut-over.

The event loop never blocks on a mailbox: `on_settled(callback)` calls back
(from a worker, or at once) when the mailbox is idle or held with
nothing running, so a waiter on the loop needs no thread of its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tinywasm_wasi.config import Config
from tinywasm_wasi.exceptions import ModuleClosedError
from tinywasm_wasi.policy.scheduling import Settled as SettledState
from tinywasm_wasi.policy.scheduling import runnable, settled
from tinywasm_wasi.runtime.workers import WorkerPool, shared

log = logging.getLogger("tinywasm.mailbox")

__all__ = ["Delivery", "Mailbox", "Pending", "Reply", "Request", "Requeued"]

# topic, payload and sender; a message without a known sender may be just (topic, payload)
Delivery = tuple[str, bytes, str]  # topic, payload, sender ("" for none)


Reply = Callable[[bytes | None, BaseException | None], None]
# Called once when the mailbox settles: True when idle, False when held with work queued.
Settled = Callable[[bool], None]


class Request:
    """An HTTP request for the module's `export`.

    `reply(result, error)` is called exactly once, from whichever thread
    settles it; `cancelled()` says the client went away, so it is skipped.
    """

    __slots__ = ("body", "cancelled", "export", "limit", "reply")

    def __init__(
        self,
        export: str,
        body: bytes,
        limit: int,
        reply: Reply,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.export = export
        self.body = body
        self.limit = limit
        self.reply = reply
        self.cancelled = cancelled

    def fail(self, error: BaseException) -> None:
        self.reply(None, error)


Pending = Delivery | Request


def _size(item: Pending) -> int:
    return len(item.body) if isinstance(item, Request) else len(item[0]) + len(item[1])


class Requeued(Exception):
    """Raised by the answer callback when it put the request back in a queue unanswered."""


class _Call:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


def _ignore(_topic: str, _payload: bytes, _sender: str = "") -> None:
    """A closed mailbox's delivery callback."""


def _refuse(request: Request) -> bytes | None:
    """A closed mailbox's request callback."""
    raise ModuleClosedError("the module closed before the request ran")


class Mailbox:
    """Bounded, ordered work queue for one module, served one item at a time by a pool."""

    def __init__(
        self,
        name: str,
        capacity: int,
        deliver: Callable[[str, bytes, str], None],
        answer: Callable[[Request], bytes | None] | None = None,
        *,
        held: bool = False,
        byte_capacity: int = Config.mailbox_bytes,
        pool: WorkerPool | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.byte_capacity = byte_capacity
        self._deliver = deliver
        self._answer = answer
        self._pool = pool if pool is not None else shared()
        self._items: deque[Pending | _Call] = deque()
        self._messages = 0  # deliveries in _items (calls do not count against capacity)
        self._bytes = 0  # their topic, payload and request body bytes
        self._cond = threading.Condition(threading.Lock())
        self._busy = False  # a worker is running an item
        self._runner: threading.Thread | None = None  # the worker running it
        self._pausers = 0  # threads in wait_paused, waiting for the running item to end
        self._scheduled = False  # queued on the pool or running: never queued twice
        self._held = held
        self._closed = False
        self._settled: list[Settled] = []
        self.accepted = 0
        self.dropped = 0

    # -- producers (any thread) -------------------------------------------------------------

    def put(self, topic: str, payload: bytes, sender: str = "") -> bool:
        """Queue a message; False (and counted) when the mailbox is full or closed."""
        return self._put((topic, payload, sender))

    def put_request(self, request: Request) -> bool:
        """Queue an HTTP request like a message; False (and counted) when full or closed."""
        return self._put(request)

    def _put(self, item: Pending) -> bool:
        with self._cond:
            size = _size(item)
            if (
                self._closed
                or self._messages >= self.capacity
                or (self._messages and self._bytes + size > self.byte_capacity)
            ):
                self.dropped += 1
                return False
            self._items.append(item)
            self._messages += 1
            self._bytes += size
            self.accepted += 1
            self._schedule()
            return True

    def call(self, fn: Callable[[], Any], *, first: bool = False) -> concurrent.futures.Future[Any]:
        """Queue `fn` to run on a worker after what is queued before it.

        With `first`, it goes ahead of everything queued (used to restore state
        into a held new version before the messages waiting for it).
        """
        item = _Call(fn)
        with self._cond:
            if self._closed:
                raise ModuleClosedError(f"cannot call into module {self.name!r}: it is closed")
            if first:
                self._items.appendleft(item)
            else:
                self._items.append(item)
            self._schedule()
        return item.future

    def _runnable(self) -> bool:
        """Under the lock: a worker may start the next item."""
        items = self._items
        return runnable(
            queued=bool(items),
            head_is_call=bool(items) and isinstance(items[0], _Call),
            held=self._held,
            closed=self._closed,
        )

    def _schedule(self) -> None:
        """Under the lock: queue this mailbox on the pool if it has work and is not queued."""
        if not self._scheduled and self._runnable():
            self._scheduled = True
            self._pool.submit(self)

    # -- control ---------------------------------------------------------------------------

    def hold(self) -> None:
        """Stop starting new items (the one running finishes)."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        """Resume serving items, in the order they arrived."""
        with self._cond:
            self._held = False
            self._schedule()
            callbacks, state = self._take_settled()
        self._call_settled(callbacks, state)

    @property
    def queued_bytes(self) -> int:
        """Topic, payload and request body bytes of the queued messages and requests."""
        return self._bytes

    @property
    def depth(self) -> int:
        """Items queued, not counting the one running."""
        return len(self._items)

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._items and not self._busy

    def on_settled(self, callback: Settled) -> None:
        """Call `callback(True)` once nothing is queued or running, or `callback(False)` once
        it is held with nothing running but work queued (it cannot get idle by itself).

        Called at once (on this thread) if that is already so, else from a worker.
        """
        with self._cond:
            state = self._settled_state()
            if state is SettledState.WORKING:
                self._settled.append(callback)
                return
        callback(state is SettledState.IDLE)

    def forget_settled(self, callback: Settled) -> None:
        """Drop a callback registered with `on_settled` that is no longer wanted."""
        with self._cond, contextlib.suppress(ValueError):
            self._settled.remove(callback)

    def _settled_state(self) -> SettledState:
        """Under the lock."""
        items = self._items
        return settled(
            running=self._busy,
            queued=bool(items),
            head_is_call=bool(items) and isinstance(items[0], _Call),
            held=self._held,
            closed=self._closed,
        )

    def _take_settled(self) -> tuple[list[Settled], bool]:
        """Under the lock: the callbacks to call now and with what, if the mailbox settled."""
        if not self._settled:
            return [], False
        state = self._settled_state()
        if state is SettledState.WORKING:
            return [], False
        callbacks, self._settled = self._settled, []
        return callbacks, state is SettledState.IDLE

    @staticmethod
    def _call_settled(callbacks: list[Settled], idle: bool) -> None:
        """Without the lock."""
        for callback in callbacks:
            callback(idle)

    def wait_paused(self, timeout: float) -> bool:
        """Block until no item is running (after `hold()`); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy:
                if self._runner is threading.current_thread():
                    return False  # called from its own item: it cannot pause under itself
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pausers += 1
                try:
                    self._cond.wait(left)
                finally:
                    self._pausers -= 1
            return True

    def take_pending(self) -> list[Pending]:
        """Remove and return the queued messages and requests (calls stay), to hand elsewhere."""
        with self._cond:
            messages: list[Pending] = [i for i in self._items if not isinstance(i, _Call)]
            calls = [i for i in self._items if isinstance(i, _Call)]
            self._items.clear()
            self._items.extend(calls)
            self._messages = 0
            self._bytes = 0
            return messages

    def prepend(self, messages: list[Pending]) -> None:
        """Put `messages` in front of everything queued (they are older); never refused."""
        with self._cond:
            self._items.extendleft(reversed(messages))
            self._messages += len(messages)
            self._bytes += sum(_size(m) for m in messages)
            self._schedule()

    def close(self, timeout: float = 0.0) -> int:
        """Finish the running item, refuse new ones, leave the pool. Safe to call twice.

        Queued calls and requests fail with ModuleClosedError (a call whose caller
        gave up is skipped); queued messages are discarded (callers drain first, or
        take them with `take_pending`). Returns how many messages were discarded.
        Waits up to `timeout` for a running item to end (0: does not wait; the
        worker finishes it and moves on).
        """
        with self._cond:
            self._closed = True
            leftover = list(self._items)
            self._items.clear()
            self._messages = 0
            self._bytes = 0
            callbacks, self._settled = self._settled, []
            self._cond.notify_all()
        discarded = 0
        for item in leftover:
            closed = ModuleClosedError(f"module {self.name!r} closed before the call ran")
            if isinstance(item, _Call):
                if item.future.set_running_or_notify_cancel():  # False: cancelled by its caller
                    item.future.set_exception(closed)
            elif isinstance(item, Request):
                item.fail(closed)
            else:
                discarded += 1
        self._call_settled(callbacks, True)
        # The owner's callbacks are usually its bound methods, and the owner holds this
        # mailbox: drop them, so the owner is freed by reference counting alone. An item
        # a worker is still running keeps its own reference until it returns.
        self._deliver = _ignore
        self._answer = _refuse
        if timeout > 0:
            self.wait_paused(timeout)
        return discarded

    # -- on a worker -------------------------------------------------------------------------

    def run_one(self) -> bool:
        """Run the next item (called by the pool); True if another is ready to run."""
        with self._cond:
            if not self._runnable():  # held, emptied or closed since it was queued
                self._scheduled = False
                callbacks, state = self._take_settled()
                item = None
            else:
                item = self._items.popleft()
                self._busy = True
                self._runner = threading.current_thread()
                if not isinstance(item, _Call):
                    self._messages -= 1
                    self._bytes -= _size(item)
        if item is None:
            self._call_settled(callbacks, state)
            return False
        try:
            self._run(item)
        finally:
            del item  # not kept past its run: an item may hold its module
            with self._cond:
                self._busy = False
                self._runner = None
                if self._pausers:
                    self._cond.notify_all()  # wait_paused
                again = self._runnable()
                if not again:
                    self._scheduled = False
                callbacks, state = self._take_settled()
        self._call_settled(callbacks, state)
        return again

    def _run(self, item: Pending | _Call) -> None:
        if isinstance(item, _Call):
            if item.future.set_running_or_notify_cancel():
                try:
                    item.future.set_result(item.fn())
                except BaseException as exc:
                    item.future.set_exception(exc)
        elif isinstance(item, Request):
            if self._answer is None:
                item.fail(ModuleClosedError(f"module {self.name!r} does not answer requests"))
            else:
                self._answer_request(item)
        else:
            try:
                self._deliver(*item)
            except Exception:  # the deliver callback reports its own errors
                log.exception("module %r: delivery failed unexpectedly", self.name)

    def _answer_request(self, request: Request) -> None:
        if request.cancelled():  # the HTTP client went away
            return
        try:
            assert self._answer is not None
            result = self._answer(request)
        except Requeued:
            return  # another mailbox (or this one, later) answers it
        except BaseException as exc:
            request.reply(None, exc)
            return
        request.reply(result, None)
