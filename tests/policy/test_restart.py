"""The supervisor's restart backoff, as a table."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.restart import MAX_DELAY, STABLE_AFTER, restart_delay


@pytest.mark.parametrize(
    ("deaths", "uptime", "delay", "counted"),
    [
        (0, 0.5, 0.1, 1),
        (1, 0.5, 0.2, 2),
        (2, 0.5, 0.4, 3),
        (6, 0.5, 6.4, 7),
        (7, 0.5, MAX_DELAY, 8),
        (50, 0.5, MAX_DELAY, 51),
        (50, STABLE_AFTER, 0.1, 1),
        (3, STABLE_AFTER + 100, 0.1, 1),
    ],
)
def test_the_wait_doubles_per_death_in_a_row_and_resets_after_a_stable_run(
    deaths: int, uptime: float, delay: float, counted: int
) -> None:
    assert restart_delay(deaths, uptime) == pytest.approx((delay, counted))
