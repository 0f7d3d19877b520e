"""The worker threads that run every module's mailbox: a few, shared, actor-style.

An idle module costs no thread. A mailbox with work submits itself once
(`submit`); a worker takes it from the front of the queue, runs one item
(`Runnable.run_one`) and, if it still has work, puts it back at the tail. So:

- a module's items run in order, one at a time (it is queued at most once, and
  only put back after its item returned);
- modules with work take turns, one item each: a slow module holds one worker
  for one item at a time, which its call deadline bounds, and the other workers
  keep serving the rest;
- a wasmtime Store moves between threads but is never used by two at once (the
  mailbox's lock orders each hand-over).

wasmtime releases the GIL while guest code runs, so workers really run guests in
parallel; there are few of them because each runnable thread competes with the
event loop for the GIL (the size: `policy/scheduling.module_threads`).

Threads start on demand, up to the size, and then wait for work; `close()` ends
them once the queue is empty. The server's pool is `shared()`; tests may make their own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Protocol

from tinywasm_wasi.policy.scheduling import module_threads

__all__ = ["Runnable", "WorkerPool", "configure", "shared"]

log = logging.getLogger("tinywasm.workers")


class Runnable(Protocol):
    def run_one(self) -> bool:
        """Run one item; True if there is more work ready (it is then queued again)."""
        ...


class WorkerPool:
    """A bounded set of daemon threads serving `Runnable`s in turn."""

    def __init__(self, size: int = 0, *, name: str = "tinywasm-worker") -> None:
        self.size = module_threads(size, os.cpu_count())
        self.name = name
        self._ready: deque[Runnable] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads: set[threading.Thread] = set()
        self._idle = 0  # threads waiting for work
        self._closing = False
        self._started = 0  # threads ever started, for their names

    def submit(self, task: Runnable) -> None:
        """Queue `task` to have one item run. The caller makes sure it is queued once."""
        with self._cond:
            self._ready.append(task)
            if len(self._ready) > self._idle and len(self._threads) < self.size:
                self._start_thread()
            elif self._idle:  # else every thread is busy: one takes it when it is done
                self._cond.notify()

    def resize(self, size: int) -> None:
        """Serve with `size` threads from now on (0: automatic); extra ones end when idle."""
        with self._cond:
            self.size = module_threads(size, os.cpu_count())
            self._cond.notify_all()
            while len(self._ready) > self._idle and len(self._threads) < self.size:
                self._start_thread()

    @property
    def threads(self) -> int:
        """Threads running now."""
        with self._cond:
            return len(self._threads)

    @property
    def queued(self) -> int:
        """Mailboxes waiting for a worker."""
        return len(self._ready)

    def close(self, timeout: float = 0.0) -> None:
        """End the threads once the queue is empty; wait up to `timeout` for them.

        Work submitted later starts threads again.
        """
        with self._cond:
            self._closing = True
            threads = list(self._threads)
            self._cond.notify_all()
        if timeout > 0:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(timeout)

    # -- the workers -------------------------------------------------------------------------

    def _start_thread(self) -> None:
        """Under the lock."""
        self._closing = False
        self._started += 1
        thread = threading.Thread(
            target=self._work, name=f"{self.name}-{self._started}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        cond, ready = self._cond, self._ready
        while True:
            with cond:
                while not ready:
                    if self._closing or len(self._threads) > self.size:
                        self._threads.discard(me)
                        return
                    self._idle += 1
                    try:
                        cond.wait()
                    finally:
                        self._idle -= 1
                task = ready.popleft()
            try:
                again = task.run_one()
            except BaseException:  # run_one reports its own errors; never lose a worker
                log.exception("a module's mailbox failed unexpectedly")
                again = False
            if again:
                with cond:
                    ready.append(task)  # at the tail: the others' turns come first
            del task  # not kept while waiting: it may hold its module


_SHARED: WorkerPool | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> WorkerPool:
    """The process's pool, which every mailbox uses unless given another."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = WorkerPool()
        return _SHARED


def configure(size: int) -> WorkerPool:
    """Set the shared pool's size (0: automatic, min(4, CPUs + 1)); returns it."""
    pool = shared()
    pool.resize(size)
    return pool
