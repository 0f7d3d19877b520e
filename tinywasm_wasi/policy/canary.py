"""Canary releases as pure rules: the settings, the traffic split and the promote/roll back verdict.

A canary runs a new version beside the live (stable) one. `Split` decides, per
HTTP request or bus message, which version takes it; `judge` decides from the
canary's window (what it served, how much failed, for how long) whether to
promote it, roll it back, or keep watching. Blue-green is a canary at 0 %: it
takes no traffic and is never promoted automatically, only on command.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

from tinywasm_wasi.exceptions import TinywasmError

__all__ = ["CanaryError", "CanarySettings", "Split", "Verdict", "judge", "parse_canary_settings"]

BUCKETS = 10_000  # a sticky key's hash picks one of these; percent * 100 of them go to the canary


class CanaryError(TinywasmError, ValueError):
    """Canary settings that cannot be used; the message names the field and its range."""


@dataclass(frozen=True, slots=True)
class CanarySettings:
    percent: float = 10.0  # of requests and messages the canary takes, 0-100
    promote_requests: int = 1000  # the window: served at least this many...
    promote_seconds: float = 60.0  # ...for at least this long
    max_error_rate: float = 0.01  # failures / served the canary may not exceed
    sticky_header: str | None = None  # requests with the same value go to the same version
    sticky_cookie: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "percent": self.percent,
            "promote_after": {"requests": self.promote_requests, "seconds": self.promote_seconds},
            "max_error_rate": self.max_error_rate,
            "sticky": {"header": self.sticky_header, "cookie": self.sticky_cookie},
        }


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise CanaryError(
            f"canary {key!r} must be a number from {low:g} to {high:g}, not {value!r}"
        )
    return float(value)


def _name(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or not value.isascii() or not value.isprintable():
        raise CanaryError(f"sticky {key!r} must be a header or cookie name, not {value!r}")
    return value


def parse_canary_settings(data: object) -> CanarySettings:
    """Settings from the JSON the API receives, e.g. ``{"percent": 10, "promote_after":
    {"requests": 1000, "seconds": 60}, "max_error_rate": 0.01, "sticky": {"header": "X-User"}}``.

    Raises:
        CanaryError: not an object, an unknown key, or a value out of range.
    """
    if not isinstance(data, dict):
        raise CanaryError("canary settings must be a JSON object")
    unknown = sorted(set(data) - {"percent", "promote_after", "max_error_rate", "sticky"})
    if unknown:
        raise CanaryError(
            f"unknown canary setting(s) {', '.join(unknown)}: use percent, promote_after "
            "{requests, seconds}, max_error_rate and sticky {header | cookie}"
        )
    after = data.get("promote_after", {})
    sticky = data.get("sticky", {})
    if not isinstance(after, dict) or set(after) - {"requests", "seconds"}:
        raise CanaryError('canary "promote_after" must be {"requests": N, "seconds": S}')
    if not isinstance(sticky, dict) or set(sticky) - {"header", "cookie"}:
        raise CanaryError('canary "sticky" must be {"header": NAME} or {"cookie": NAME}')
    requests = _number(after, "requests", 1000, 1, 10**9)
    if requests != int(requests):
        raise CanaryError("canary 'requests' must be a whole number")
    return CanarySettings(
        percent=_number(data, "percent", 10, 0, 100),
        promote_requests=int(requests),
        promote_seconds=_number(after, "seconds", 60, 0, 86_400),
        max_error_rate=_number(data, "max_error_rate", 0.01, 0, 1),
        sticky_header=_name(sticky, "header"),
        sticky_cookie=_name(sticky, "cookie"),
    )


@dataclass(slots=True)
class Split:
    """Which version takes each request or message, by percentage.

    With a sticky key (a header's or cookie's value) the key's hash decides, so the
    same key always lands on the same version. Without one, a running sum spreads
    the canary's share evenly: at 10 %, exactly one in ten.
    """

    percent: float
    _sum: int = field(default=0, repr=False)

    def to_canary(self, key: str | None = None) -> bool:
        if key is not None:
            digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
            return int.from_bytes(digest[:4], "big") % BUCKETS < self.percent * (BUCKETS / 100)
        self._sum += round(self.percent * (BUCKETS / 100))  # whole buckets: no float drift
        if self._sum >= BUCKETS:
            self._sum -= BUCKETS
            return True
        return False


class Verdict(enum.Enum):
    PROMOTE = "promote"
    ROLL_BACK = "roll back"


def judge(
    settings: CanarySettings, served: int, failed: int, elapsed: float
) -> tuple[Verdict, str] | None:
    """Promote, roll back, or None to keep watching; with the reason for the history.

    Rolled back as soon as the failures exceed what the whole window allows
    (`max_error_rate` x `promote_requests`), so a bad canary is stopped early;
    promoted once the window has passed (both its requests and its seconds) under
    the threshold. A canary at 0 % (blue-green) is never decided here.
    """
    if settings.percent == 0:
        return None
    budget = settings.max_error_rate * max(settings.promote_requests, served)
    if failed > budget:
        rate = failed / served if served else 1.0
        return (
            Verdict.ROLL_BACK,
            f"canary error rate {rate:.3f} ({failed} of {served}) over the "
            f"{settings.max_error_rate:g} allowed",
        )
    if served >= settings.promote_requests and elapsed >= settings.promote_seconds:
        return (
            Verdict.PROMOTE,
            f"canary window passed: {failed} of {served} failed in {elapsed:.1f} s "
            f"(allowed rate {settings.max_error_rate:g})",
        )
    return None
