"""Version history of one module name: its attempts and its last good versions.

Both are plain data structures: no I/O, no asyncio, tested directly.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["ModuleHistory", "Outcome", "Trigger", "VersionRecord", "iso_time"]

MAX_RECORDS = 50
MAX_GOOD_VERSIONS = 5


class Trigger(enum.StrEnum):
    """Why an attempt was made; shown in the history and the swap log line."""

    STARTUP = "startup"
    WATCHER = "watcher"
    API = "api"
    DEPLOY = "deploy"  # PUT /api/modules/{name}
    ROLLBACK = "rollback"
    DELETE = "delete"
    QUARANTINE = "quarantine"
    RETRY = "retry"
    CANARY = "canary"
    PLACEMENT = "placement"  # with several workers: its owner died, left or came back


class Outcome(enum.Enum):
    LOADED = "loaded"  # first version of a name
    SWAPPED = "swapped"
    PROMOTED = "promoted"  # a canary took all traffic after its window (or on command)
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
    trigger: Trigger
    outcome: Outcome
    duration_ms: float  # until the new version served (probation not included)
    held: int = 0  # messages held in the new version's mailbox during cut-over
    error: str | None = None
    warning: str | None = None  # it went ahead but lost something, e.g. the old state
    metadata: dict[str, Any] | None = None  # what the version's get_metadata said
    reason: str | None = None  # why a canary was promoted or rolled back

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: `at` as ISO 8601 (UTC), `at_unix` as seconds since the epoch."""
        data = asdict(self)
        data["at"] = iso_time(self.at)
        data["at_unix"] = self.at
        data["outcome"] = self.outcome.value
        data["trigger"] = self.trigger.value
        data["duration_ms"] = round(self.duration_ms, 3)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VersionRecord:
        """The record `to_json` made (as read back from the history file).

        Raises:
            ValueError: a field is missing or of the wrong kind.
        """
        try:
            at = data.get("at_unix")
            if not isinstance(at, int | float):
                at = datetime.fromisoformat(str(data["at"])).timestamp()
            error = data.get("error")
            return cls(
                sha256=str(data["sha256"]),
                size=int(data["size"]),
                at=float(at),
                trigger=Trigger(data["trigger"]),
                outcome=Outcome(data["outcome"]),
                duration_ms=float(data["duration_ms"]),
                held=int(data.get("held", 0)),
                error=None if error is None else str(error),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a history record: {exc!r} in {dict(data)!r}") from None


def iso_time(at: float) -> str:
    """Seconds since the epoch as ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


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
            Outcome.PROMOTED,
            Outcome.TIMED_OUT_DRAINING,
        ):
            self._good = deque(
                [(s, d) for s, d in self._good if s != record.sha256], maxlen=MAX_GOOD_VERSIONS
            )
            self._good.append((record.sha256, data))

    def bytes_of(self, sha256: str) -> bytes | None:
        """The bytes of a recent good version, if they are still kept."""
        return next((d for s, d in reversed(self._good) if s == sha256), None)

    def previous_good(self) -> tuple[str, bytes] | None:
        """The good version before the current one, or None if there is none."""
        return self._good[-2] if len(self._good) >= 2 else None

    def forget_current(self) -> None:
        """Drop the newest good version (after rolling back to the one before it)."""
        if self._good:
            self._good.pop()
