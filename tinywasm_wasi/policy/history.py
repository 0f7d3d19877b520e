"""Version history of one module name, and the pure rule that coalesces swap requests.

Both are plain data structures: no I/O, no asyncio, tested directly.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

__all__ = ["ModuleHistory", "Outcome", "SwapGate", "VersionRecord"]

T = TypeVar("T")

MAX_RECORDS = 50
MAX_GOOD_VERSIONS = 5


class Outcome(enum.Enum):
    LOADED = "loaded"  # first version of a name
    SWAPPED = "swapped"
    TIMED_OUT_DRAINING = "timed out draining"  # swapped, but the old version never got idle
    REFUSED = "refused"  # the new version failed to stage; the old one kept serving
    ROLLED_BACK = "rolled back"  # the new version failed after cut-over; the old one resumed
    UNLOADED = "unloaded"
    QUARANTINED = "quarantined"  # it kept trapping: taken out of service until a retry


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One attempt to load, swap or unload a module."""

    sha256: str
    size: int
    at: float  # time.time() when the attempt started
    trigger: str  # "startup", "watcher", "api", "rollback", "delete", "quarantine", "retry"
    outcome: Outcome
    duration_ms: float  # until the new version served (probation not included)
    held: int = 0  # messages held in the new version's mailbox during cut-over
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["duration_ms"] = round(self.duration_ms, 3)
        return data


class ModuleHistory:
    """Recent attempts (bounded) and the last few good versions' bytes, for rollback."""

    def __init__(self) -> None:
        self.records: deque[VersionRecord] = deque(maxlen=MAX_RECORDS)
        self._good: deque[tuple[str, bytes]] = deque(maxlen=MAX_GOOD_VERSIONS)

    def add(self, record: VersionRecord, data: bytes | None = None) -> None:
        """Record an attempt; `data` is kept when the attempt put that version in service."""
        self.records.append(record)
        if data is not None and record.outcome in (
            Outcome.LOADED,
            Outcome.SWAPPED,
            Outcome.TIMED_OUT_DRAINING,
        ):
            self._good = deque(
                [(s, d) for s, d in self._good if s != record.sha256], maxlen=MAX_GOOD_VERSIONS
            )
            self._good.append((record.sha256, data))

    def previous_good(self) -> tuple[str, bytes] | None:
        """The good version before the current one, or None if there is none."""
        return self._good[-2] if len(self._good) >= 2 else None

    def forget_current(self) -> None:
        """Drop the newest good version (after rolling back to the one before it)."""
        if self._good:
            self._good.pop()


class SwapGate(Generic[T]):
    """Per-module rule: one swap at a time; requests meanwhile become one follow-up.

    `request(item)` returns True when the caller should run a swap of `item` now.
    While one runs, further requests return False and replace the single pending
    follow-up (the latest wins). `finish()` returns that follow-up exactly once,
    or None when there is none and the gate is free again.
    """

    def __init__(self) -> None:
        self._running = False
        self._next: T | None = None

    @property
    def running(self) -> bool:
        return self._running

    def request(self, item: T) -> bool:
        if self._running:
            self._next = item
            return False
        self._running = True
        return True

    def finish(self) -> T | None:
        if not self._running:
            raise RuntimeError("SwapGate.finish() without a running swap")
        follow_up, self._next = self._next, None
        if follow_up is None:
            self._running = False
        return follow_up
