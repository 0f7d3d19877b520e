"""Sticky rollback: when a module is pinned to a version other than its file's, as pure rules.

A pin says "serve version P although the file holds version F". It is made
when what runs stops matching the file because of a rollback: a manual
``POST …/rollback``, or a new version rolled back during probation. It holds
until the file changes again (its bytes are no longer F) or ``POST …/unpin``.

The rules take hashes and outcomes and return decisions; `supervisor/pins.py`
keeps pins in the state directory and feeds these functions.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

from tinywasm_wasi.policy.history import Outcome, Trigger

__all__ = ["FileVerdict", "Pin", "judge_file", "pin_after", "pins_from_json", "pins_to_json"]


@dataclass(frozen=True, slots=True)
class Pin:
    """Module `name` serves `sha256` while its file holds `file_sha256`."""

    name: str
    sha256: str  # the version served
    file_sha256: str  # the file's bytes when the pin was made
    at: float  # time.time() of the rollback
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FileVerdict(enum.Enum):
    """What the file's current bytes mean for a pinned module."""

    PINNED = "pinned"  # the file still holds what was rolled away from: serve the pin
    CHANGED = "changed"  # the file changed since: the pin ends, the file is served


def judge_file(pin: Pin | None, file_sha256: str | None) -> FileVerdict | None:
    """None without a pin; otherwise whether the file's bytes keep or end it.

    A deleted file (`file_sha256` None) ends the pin as any change does.
    """
    if pin is None:
        return None
    return FileVerdict.PINNED if file_sha256 == pin.file_sha256 else FileVerdict.CHANGED


def pin_after(
    name: str,
    outcome: Outcome,
    trigger: Trigger,
    live_sha256: str | None,
    file_sha256: str | None,
    at: float,
) -> Pin | None:
    """The pin an attempt leaves behind, or None (then any old pin goes too).

    A rollback that leaves a version running which the file does not hold pins it:
    a probation failure (`ROLLED_BACK`) or a manual rollback that swapped
    (`Trigger.ROLLBACK`). Everything else leaves no pin.
    """
    if live_sha256 is None or file_sha256 is None or live_sha256 == file_sha256:
        return None
    if outcome is Outcome.ROLLED_BACK:
        reason = f"version {file_sha256[:12]} in the file was rolled back during probation"
    elif trigger is Trigger.ROLLBACK and outcome in (Outcome.SWAPPED, Outcome.TIMED_OUT_DRAINING):
        reason = f"rolled back by request from version {file_sha256[:12]} in the file"
    else:
        return None
    return Pin(name, live_sha256, file_sha256, at, reason)


def pins_to_json(pins: dict[str, Pin]) -> dict[str, Any]:
    return {"version": 1, "pins": [p.to_json() for _n, p in sorted(pins.items())]}


def pins_from_json(data: object) -> dict[str, Pin]:
    """Pins from the state file; entries that do not have the expected shape are skipped."""
    pins: dict[str, Pin] = {}
    if not isinstance(data, dict) or not isinstance(data.get("pins"), list):
        return pins
    for entry in data["pins"]:
        try:
            pin = Pin(
                name=str(entry["name"]),
                sha256=str(entry["sha256"]),
                file_sha256=str(entry["file_sha256"]),
                at=float(entry["at"]),
                reason=str(entry["reason"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        pins[pin.name] = pin
    return pins
