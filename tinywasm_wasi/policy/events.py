"""The log's event vocabulary: one name and one level per life-cycle event (pure).

Every place that loads, swaps, refuses, rolls back, quarantines, retries or
unloads a module logs through `event_extra`, so the same event has the same
level whether it happens at start-up, on a file change or from the API, and a
JSON log line (`tinywasm_wasi.logs.JsonFormatter`) carries `event`, `module`
and the event's fields (sha256, trigger, duration_ms, held, error).
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from tinywasm_wasi.policy.history import Outcome

__all__ = ["EXTRA_KEY", "OUTCOME_EVENTS", "LogEvent", "event_extra"]

EXTRA_KEY = "tinywasm"  # the LogRecord attribute the fields travel in


class LogEvent(enum.StrEnum):
    LOAD = "load"  # a first version of a name is serving
    SWAP = "swap"  # a new version is serving (on probation): logged the moment it serves
    PROBATION = "probation"  # a new version passed its probation and is kept
    REFUSE = "refuse"  # a file was not loaded; the running version (if any) keeps serving
    ROLLBACK = "rollback"  # back to the previous version (failed probation, or asked for)
    QUARANTINE = "quarantine"  # taken out of service for trapping too often
    RETRY = "retry"  # a quarantined module tried again (back in service, or not yet)
    UNLOAD = "unload"  # its file is gone: the module is stopped
    PROMOTE = "promote"  # a canary took all traffic (its window passed, or on command)
    PLACE = "place"  # with several workers: a module starts or stops here as its owner changes

    @property
    def level(self) -> int:
        return _LEVELS[self]


_LEVELS = {
    LogEvent.LOAD: logging.INFO,
    LogEvent.SWAP: logging.INFO,
    LogEvent.PROBATION: logging.INFO,
    LogEvent.REFUSE: logging.WARNING,
    LogEvent.ROLLBACK: logging.WARNING,
    LogEvent.QUARANTINE: logging.ERROR,
    LogEvent.RETRY: logging.WARNING,
    LogEvent.UNLOAD: logging.INFO,
    LogEvent.PROMOTE: logging.INFO,
    LogEvent.PLACE: logging.WARNING,
}


def event_extra(event: LogEvent, module: str, **fields: Any) -> dict[str, Any]:
    """The `extra=` for a log call: the event, the module's name and the event's fields."""
    data = {"event": event.value, "module": module}
    data.update({k: v for k, v in fields.items() if v is not None})
    return {EXTRA_KEY: data}


# The event and the line (its first %s is the module's name) for each recorded outcome
# of a change; the swap line itself is logged earlier, when the new version serves.
OUTCOME_EVENTS: dict[Outcome, tuple[LogEvent, str]] = {
    Outcome.LOADED: (LogEvent.LOAD, "loaded module %s"),
    Outcome.SWAPPED: (LogEvent.PROBATION, "swap %s: probation passed, the new version stays"),
    Outcome.TIMED_OUT_DRAINING: (
        LogEvent.PROBATION,
        "swap %s: probation passed, the new version stays (the old one timed out draining)",
    ),
    Outcome.REFUSED: (LogEvent.REFUSE, "swap %s refused, the running version stays"),
    Outcome.ROLLED_BACK: (
        LogEvent.ROLLBACK,
        "swap %s rolled back: the new version failed its probation, the old one serves",
    ),
    Outcome.UNLOADED: (LogEvent.UNLOAD, "unloaded module %s"),
    Outcome.PROMOTED: (LogEvent.PROMOTE, "canary %s promoted: the new version takes all traffic"),
    Outcome.QUARANTINED: (LogEvent.QUARANTINE, "module %s quarantined"),
}
