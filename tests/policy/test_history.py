"""The version history (pure). Coalescing is the swap machine's: tests/policy/test_swap.py."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.history import (
    MAX_GOOD_VERSIONS,
    ModuleHistory,
    Outcome,
    Trigger,
    VersionRecord,
)


def record(sha: str, outcome: Outcome) -> VersionRecord:
    return VersionRecord(
        sha256=sha, size=1, at=0.0, trigger=Trigger.API, outcome=outcome, duration_ms=1.0
    )


def test_history_keeps_only_versions_that_served_for_rollback() -> None:
    history = ModuleHistory()
    history.add(record("a", Outcome.LOADED), b"A")
    assert history.previous_good() is None
    history.add(record("b", Outcome.REFUSED), b"B")
    history.add(record("c", Outcome.ROLLED_BACK), b"C")
    assert history.previous_good() is None
    history.add(record("d", Outcome.SWAPPED), b"D")
    assert history.previous_good() == ("a", b"A")
    assert [r.sha256 for r in history.records] == ["a", "b", "c", "d"]


def test_history_good_versions_are_bounded_and_deduplicated() -> None:
    history = ModuleHistory()
    for i in range(MAX_GOOD_VERSIONS + 3):
        history.add(record(str(i), Outcome.SWAPPED), str(i).encode())
    history.add(record("5", Outcome.SWAPPED), b"5")  # the same version again moves to the end
    assert history.previous_good() == ("7", b"7")
    history.forget_current()
    assert history.previous_good() == ("6", b"6")


def test_record_json_uses_the_outcome_text() -> None:
    data = record("a", Outcome.TIMED_OUT_DRAINING).to_json()
    assert data["outcome"] == "timed out draining"
    assert data["sha256"] == "a"


def test_record_json_has_iso_time_and_reads_back() -> None:
    original = VersionRecord(
        sha256="ab" * 32,
        size=10,
        at=1_790_000_000.25,
        trigger=Trigger.ROLLBACK,
        outcome=Outcome.ROLLED_BACK,
        duration_ms=1.5,
        held=3,
        error="trapped",
    )
    data = original.to_json()
    assert data["at"] == "2026-09-21T14:13:20.250+00:00"
    assert data["at_unix"] == original.at
    assert VersionRecord.from_json(data) == original
    del data["at_unix"]  # the ISO time alone is enough
    assert VersionRecord.from_json(data) == original


@pytest.mark.parametrize(
    "bad",
    [{}, {"sha256": "a"}, {"sha256": "a", "size": 1, "at": "x", "trigger": "api"}],
)
def test_a_damaged_record_is_a_value_error(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        VersionRecord.from_json(bad)
