"""What the status API says about a file that differs, and what /healthz lists, as tables."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.history import Outcome, Trigger, VersionRecord
from tinywasm_wasi.policy.status import ProblemKind, file_difference, problems


def rec(sha: str, outcome: Outcome, trigger: Trigger = Trigger.WATCHER, error: str | None = None):  # type: ignore[no-untyped-def]
    return VersionRecord(sha, 1, 0.0, trigger, outcome, 1.0, error=error)


A, B = "a" * 64, "b" * 64
LOADED = rec(A, Outcome.LOADED, Trigger.STARTUP)


@pytest.mark.parametrize(
    ("running", "on_disk", "history", "quarantined", "why"),
    [
        (A, A, [LOADED], False, None),
        (
            A,
            B,
            [LOADED, rec(B, Outcome.ROLLED_BACK, error="trap")],
            False,
            "rolled back: the file's version failed its probation (trap)",
        ),
        (A, B, [LOADED, rec(B, Outcome.REFUSED, error="bad magic")], False, "refused: bad magic"),
        (
            A,
            B,
            [LOADED, rec(B, Outcome.SWAPPED), rec(A, Outcome.SWAPPED, Trigger.ROLLBACK)],
            False,
            "rolled back by request",
        ),
        (A, B, [LOADED], False, "the file changed and has not been swapped in yet"),
        (A, None, [LOADED], False, "its file is gone"),
        (
            None,
            A,
            [rec(A, Outcome.REFUSED, Trigger.STARTUP, "no memory")],
            False,
            "refused: no memory",
        ),
        (None, A, [LOADED], True, "quarantined"),
        (None, A, [], False, "not loaded"),
    ],
)
def test_file_difference(
    running: str | None,
    on_disk: str | None,
    history: list[VersionRecord],
    quarantined: bool,
    why: str | None,
) -> None:
    said = file_difference("m", running, on_disk, history, quarantined=quarantined)
    if why is None:
        assert said is None
    else:
        assert said is not None and said.startswith(why), said


def test_problems_one_per_module_sorted_with_the_strongest_kind() -> None:
    found = problems(
        quarantined={"q": "trapped 5 times", "both": None},
        refused={"r": "bad magic", "rb": "failed probation", "both": "bad magic"},
        last_records={
            "rb": rec(B, Outcome.ROLLED_BACK),
            "manual": rec(A, Outcome.SWAPPED, Trigger.ROLLBACK),
            "fine": rec(A, Outcome.SWAPPED),
        },
    )
    assert [(p.module, p.kind) for p in found] == [
        ("both", ProblemKind.QUARANTINED),
        ("manual", ProblemKind.ROLLED_BACK),
        ("q", ProblemKind.QUARANTINED),
        ("r", ProblemKind.REFUSED),
        ("rb", ProblemKind.ROLLED_BACK),
    ]
    assert found[3].to_json() == {"module": "r", "problem": "refused", "detail": "bad magic"}
    assert problems({}, {}, {"fine": rec(A, Outcome.SWAPPED)}) == []
