"""Quarantine of a module that keeps trapping: the record and the backoff rule. Pure data.

A module whose guest traps `traps` times within `window` seconds is taken out of
service (see `ModuleHost`): unsubscribed and closed, reported with its last
error, and retried with a fresh instance of the same compiled code after a
backoff. The backoff doubles when a retried version is quarantined again soon
after (within four backoffs), up to `MAX_BACKOFF`; a new file ends it at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["MAX_BACKOFF", "Quarantine", "next_backoff"]

C = TypeVar("C")  # what is retried: the compiled module, opaque here

MAX_BACKOFF = 300.0  # seconds


def next_backoff(previous: Quarantine[Any] | None, base: float, now: float) -> float:
    """The wait before the next retry: `base`, or double the last one if it recurred soon."""
    if previous is None or now - previous.retry_at > 4 * previous.backoff:
        return base
    return min(MAX_BACKOFF, max(base, previous.backoff * 2))


@dataclass(slots=True)
class Quarantine(Generic[C]):
    """A module out of service, and when it is retried."""

    compiled: C
    error: str | None
    since: float  # time.time()
    backoff: float  # seconds
    retry_at: float  # time.time() of the retry
    retries: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)  # the module's status when taken out

    def to_json(self) -> dict[str, Any]:
        data = dict(self.snapshot)
        data.update(
            state="quarantined",
            last_error=self.error,
            quarantined_at=self.since,
            retry_at=self.retry_at,
            backoff_s=self.backoff,
            retries=self.retries,
        )
        return data
