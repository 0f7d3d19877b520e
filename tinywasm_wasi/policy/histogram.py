"""A fixed-bucket histogram of durations, cheap enough for every call (pure).

`observe` is one `bisect` and two additions, with no lock: it is called from one
thread per histogram (a module's mailbox thread, or the event loop), and a
reader on another thread may see a count one behind, which a scrape tolerates.
The metrics collector turns it into a Prometheus histogram at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["CALL_BUCKETS", "REQUEST_BUCKETS", "SWAP_BUCKETS", "Histogram"]

# Upper bounds in seconds. A guest call takes microseconds; a swap milliseconds to seconds.
CALL_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SWAP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Counts of observations per bucket (`le` upper bounds), their sum and their count."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"bucket bounds must be distinct and increasing, not {bounds!r}")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def merged(self, other: Histogram) -> Histogram:
        """A new histogram holding both; the bounds must be the same."""
        if other.bounds != self.bounds:
            raise ValueError("only histograms with the same bounds can be merged")
        out = Histogram(self.bounds)
        out.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        out.total = self.total + other.total
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count of observations <= le) per bucket, +Inf last: Prometheus' shape."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out
