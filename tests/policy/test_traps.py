"""The trap window (pure)."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.traps import TrapWindow


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0.0, 1.0], [False, False]),
        ([0.0, 1.0, 2.0], [False, False, True]),  # 3 within 10 s
        ([0.0, 5.0, 10.0], [False, False, True]),  # exactly the window still counts
        ([0.0, 5.0, 10.5], [False, False, False]),  # the first fell out of the window
        ([0.0, 5.0, 10.5, 11.0], [False, False, False, True]),  # the last three fit again
    ],
)
def test_three_traps_within_ten_seconds(times: list[float], expected: list[bool]) -> None:
    window = TrapWindow(3, 10.0)
    assert [window.record(t) for t in times] == expected
