"""The fixed-bucket histogram behind the duration metrics, as tables."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.histogram import CALL_BUCKETS, Histogram


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], [("0.1", 0), ("1.0", 0), ("+Inf", 0)]),
        ([0.1], [("0.1", 1), ("1.0", 1), ("+Inf", 1)]),  # a bound is inclusive (le)
        ([0.05, 0.5, 2.0], [("0.1", 1), ("1.0", 2), ("+Inf", 3)]),
        ([1.0, 1.0], [("0.1", 0), ("1.0", 2), ("+Inf", 2)]),
    ],
)
def test_cumulative_counts(values: list[float], expected: list[tuple[str, int]]) -> None:
    histogram = Histogram((0.1, 1.0))
    for value in values:
        histogram.observe(value)
    assert histogram.cumulative() == expected
    assert histogram.count == len(values)
    assert histogram.total == pytest.approx(sum(values))


@pytest.mark.parametrize("bounds", [(), (1.0, 0.5), (0.5, 0.5)])
def test_bounds_must_increase(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="distinct and increasing"):
        Histogram(bounds)


def test_shipped_buckets_are_valid() -> None:
    assert Histogram(CALL_BUCKETS).cumulative()[-1] == ("+Inf", 0)


def test_merged_adds_counts_and_sums() -> None:
    a, b = Histogram((1.0,)), Histogram((1.0,))
    a.observe(0.5)
    b.observe(2.0)
    both = a.merged(b)
    assert both.cumulative() == [("1.0", 1), ("+Inf", 2)] and both.total == 2.5
    with pytest.raises(ValueError, match="same bounds"):
        a.merged(Histogram((2.0,)))
