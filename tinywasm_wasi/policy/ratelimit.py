"""Rate limits as plain objects: a token bucket, a line gate and a log-line limiter.

All are pure apart from the clock: `TokenBucket.take` is given the time, and
`LineGate` and `LogLimiter` read an injectable clock (``time.monotonic`` by default).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

__all__ = ["LineGate", "LogLimiter", "TokenBucket"]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; the bucket starts full.

    `take` always takes a token, even one not earned yet, and says how long to
    wait before acting on it. A caller that waits that long before taking the
    next one keeps to `rate` on average, with at most `burst` at once.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, *, burst: float | None = None, now: float = 0.0) -> None:
        """Create a full bucket.

        Args:
            rate: tokens per second, more than zero.
            burst: most tokens saved up; default ``max(1, rate)``.
            now: the current time, in the clock later passed to `take`.

        Raises:
            ValueError: `rate` is not more than zero, or `burst` is less than 1.
        """
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be more than zero tokens a second, not {rate}")
        burst = max(1.0, rate) if burst is None else burst
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1 token, not {burst}")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = self.burst
        self._last = now

    def take(self, now: float) -> float:
        """Take one token at time `now`; return the seconds to wait before using it (0: now)."""
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_take(self, now: float) -> bool:
        """Take one token at time `now` if one is saved up; False (nothing taken) if not."""
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class LineGate:
    """Lets one line through per `interval` seconds and counts the ones it holds back.

    The one log-flood rule of the server: a rate-limited logger or log filter asks
    `admit` for every line, drops it on None, and otherwise appends `note(n)`, so
    the line that gets through says how many were left out before it.
    """

    __slots__ = ("_clock", "_last", "_suppressed", "interval")

    def __init__(
        self, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._last = -math.inf
        self._suppressed = 0

    @property
    def suppressed(self) -> int:
        """Lines held back since the last one let through."""
        return self._suppressed

    def admit(self) -> int | None:
        """None: hold this line back. Else let it through: the count held back before it."""
        now = self._clock()
        if now - self._last < self.interval:
            self._suppressed += 1
            return None
        held, self._last, self._suppressed = self._suppressed, now, 0
        return held

    @staticmethod
    def note(held: int) -> str:
        """What a line let through appends: "" or " (N similar lines suppressed)"."""
        return f" ({held} similar lines suppressed)" if held else ""


class LogLimiter:
    """Log at most one line per `interval` seconds; the next line counts what was left out."""

    __slots__ = ("_gate", "level", "logger")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 1.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.level = level
        self._gate = LineGate(interval=interval, clock=clock)

    @property
    def interval(self) -> float:
        return self._gate.interval

    @property
    def suppressed(self) -> int:
        """Lines left out since the last one logged."""
        return self._gate.suppressed

    def __call__(self, msg: str, *args: object) -> bool:
        """Log `msg % args` unless a line was logged less than `interval` ago; True if logged."""
        held = self._gate.admit()
        if held is None:
            return False
        if held:
            msg += " (%d similar lines suppressed)"
            args = (*args, held)
        self.logger.log(self.level, msg, *args)
        return True
