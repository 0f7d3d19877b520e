"""When a module's mailbox may run, when it has settled, and how big the pools are.

Mailboxes are served by a small shared pool of worker threads (`runtime/workers.py`),
actor-style: a mailbox with work is *scheduled* (queued on the pool once), a worker
runs **one** item of it, and then puts it back at the tail of the pool's queue if it
still has work. So a module's items run in order and never two at once, and modules
with work take turns: a slow one holds at most one worker for one item (which the
call deadline bounds), never the others' turns.

The decisions here are pure: the mailbox asks them under its lock.
"""

from __future__ import annotations

import enum

__all__ = [
    "DEFAULT_LOAD_CONCURRENCY",
    "MAX_MODULE_THREADS",
    "Settled",
    "load_concurrency",
    "module_threads",
    "runnable",
    "settled",
]

MAX_MODULE_THREADS = 256
DEFAULT_LOAD_CONCURRENCY = 8  # module files read, compiled and started at once


class Settled(enum.Enum):
    """What a waiter for a settled mailbox is told (see `settled`)."""

    WORKING = "working"  # an item runs, or one will run: not settled yet
    IDLE = "idle"  # nothing queued or running (or closed)
    STUCK = "stuck"  # held with messages queued and nothing running: it cannot get idle alone


def runnable(*, queued: bool, head_is_call: bool, held: bool, closed: bool) -> bool:
    """True when a worker may start the mailbox's next item.

    Held, messages and requests wait but a call at the head still runs (init, state
    handoff and close go through a held mailbox).
    """
    if closed or not queued:
        return False
    return head_is_call or not held


def settled(
    *, running: bool, queued: bool, head_is_call: bool, held: bool, closed: bool
) -> Settled:
    """Whether the mailbox has settled: idle, stuck behind a hold, or still working."""
    if running:
        return Settled.WORKING
    if closed or not queued:
        return Settled.IDLE
    if held and not head_is_call:
        return Settled.STUCK
    return Settled.WORKING


def module_threads(configured: int, cpus: int | None) -> int:
    """Worker threads serving every module's mailbox: `configured`, or min(4, cpus + 1) for 0.

    More than one, so one slow module never holds up all the others; few, because
    each runnable thread competes with the event loop for the GIL.
    """
    if configured < 0 or configured == 1:
        raise ValueError(
            "module threads must be 0 (automatic) or at least 2: with one, a slow module "
            "would hold up every other"
        )
    if configured:
        return min(configured, MAX_MODULE_THREADS)
    return max(2, min(4, (cpus or 1) + 1))


def load_concurrency(threads: int) -> int:
    """Module versions read, compiled and started at once while loading a folder or a burst
    of changes: at least `DEFAULT_LOAD_CONCURRENCY`, and twice the module threads (compiling
    runs off the pool, starting on it, so both stay busy)."""
    return max(DEFAULT_LOAD_CONCURRENCY, 2 * threads)
