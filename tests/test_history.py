"""The pure swap bookkeeping: the coalescing gate and the version history."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.history import (
    MAX_GOOD_VERSIONS,
    ModuleHistory,
    Outcome,
    SwapGate,
    VersionRecord,
)


def test_gate_runs_one_swap_and_folds_requests_into_one_follow_up() -> None:
    gate: SwapGate[str] = SwapGate()
    assert gate.request("v1") is True
    assert [gate.request(v) for v in ("v2", "v3", "v4")] == [False, False, False]
    assert gate.finish() == "v4"  # the latest request wins
    assert gate.running
    assert gate.finish() is None
    assert not gate.running
    assert gate.request("v5") is True


def test_gate_finish_without_a_swap_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="without a running swap"):
        SwapGate[str]().finish()


def record(sha: str, outcome: Outcome) -> VersionRecord:
    return VersionRecord(
        sha256=sha, size=1, at=0.0, trigger="api", outcome=outcome, duration_ms=1.0
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
