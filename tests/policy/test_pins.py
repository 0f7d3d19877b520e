"""Sticky rollback rules as tables: when a pin is made, kept or ended."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.history import Outcome, Trigger
from tinywasm_wasi.policy.pins import (
    FileVerdict,
    Pin,
    judge_file,
    pin_after,
    pins_from_json,
    pins_to_json,
)

A, B, C = "a" * 64, "b" * 64, "c" * 64
PIN = Pin("m", sha256=A, file_sha256=B, at=1.0, reason="r")


@pytest.mark.parametrize(
    ("pin", "file_sha", "verdict"),
    [
        (None, B, None),
        (PIN, B, FileVerdict.PINNED),  # the file still holds what was rolled back from
        (PIN, C, FileVerdict.CHANGED),
        (PIN, A, FileVerdict.CHANGED),  # the file now holds the pinned version itself
        (PIN, None, FileVerdict.CHANGED),  # deleted
    ],
)
def test_judge_file(pin: Pin | None, file_sha: str | None, verdict: FileVerdict | None) -> None:
    assert judge_file(pin, file_sha) is verdict


@pytest.mark.parametrize(
    ("outcome", "trigger", "live", "file", "pinned"),
    [
        (Outcome.ROLLED_BACK, Trigger.WATCHER, A, B, True),
        (Outcome.ROLLED_BACK, Trigger.DEPLOY, A, B, True),
        (Outcome.SWAPPED, Trigger.ROLLBACK, A, B, True),
        (Outcome.TIMED_OUT_DRAINING, Trigger.ROLLBACK, A, B, True),
        (Outcome.ROLLED_BACK, Trigger.ROLLBACK, A, B, True),
        (Outcome.SWAPPED, Trigger.ROLLBACK, A, A, False),  # the file holds what runs
        (Outcome.SWAPPED, Trigger.WATCHER, A, B, False),  # not a rollback
        (Outcome.REFUSED, Trigger.WATCHER, A, B, False),
        (Outcome.REFUSED, Trigger.ROLLBACK, A, B, False),
        (Outcome.ROLLED_BACK, Trigger.WATCHER, None, B, False),  # nothing runs
        (Outcome.ROLLED_BACK, Trigger.WATCHER, A, None, False),  # no file
    ],
)
def test_pin_after(
    outcome: Outcome, trigger: Trigger, live: str | None, file: str | None, pinned: bool
) -> None:
    pin = pin_after("m", outcome, trigger, live, file, 5.0)
    if not pinned:
        assert pin is None
        return
    assert pin is not None
    assert (pin.name, pin.sha256, pin.file_sha256, pin.at) == ("m", live, file, 5.0)
    assert (file or "")[:12] in pin.reason


def test_pins_round_trip_and_damaged_entries_are_skipped() -> None:
    other = Pin("n", C, A, 2.0, "x")
    assert pins_from_json(pins_to_json({"m": PIN, "n": other})) == {"m": PIN, "n": other}
    damaged = {"pins": [{"name": "m"}, "junk", PIN.to_json() | {"at": "soon"}, PIN.to_json()]}
    assert pins_from_json(damaged) == {"m": PIN}
    assert pins_from_json([]) == {}
    assert pins_from_json({"pins": 3}) == {}
