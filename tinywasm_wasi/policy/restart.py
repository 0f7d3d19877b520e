"""How long the supervisor waits before restarting a worker that died. Pure."""

from __future__ import annotations

__all__ = ["FIRST_DELAY", "MAX_DELAY", "STABLE_AFTER", "restart_delay"]

FIRST_DELAY = 0.1  # seconds before the first restart: a crash costs little time
MAX_DELAY = 10.0  # seconds, at most, between restarts of a worker that keeps dying
STABLE_AFTER = 30.0  # seconds of uptime after which a death counts as the first again


def restart_delay(deaths: int, uptime: float) -> tuple[float, int]:
    """(seconds to wait, deaths counted) for a worker that died after `uptime` seconds.

    `deaths` is how many times in a row it died before this one. The wait doubles
    with each death in a row, up to `MAX_DELAY`; a worker that ran `STABLE_AFTER`
    seconds starts again from `FIRST_DELAY`.
    """
    if uptime >= STABLE_AFTER:
        deaths = 0
    deaths += 1
    return min(MAX_DELAY, FIRST_DELAY * 2 ** (deaths - 1)), deaths
