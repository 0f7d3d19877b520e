"""Canary rules as tables: settings, the split, the verdict."""

from __future__ import annotations

from typing import Any

import pytest

from tinywasm_wasi.policy.canary import (
    CanaryError,
    CanarySettings,
    Split,
    Verdict,
    judge,
    parse_canary_settings,
)


def test_settings_from_the_api_json() -> None:
    settings = parse_canary_settings(
        {
            "percent": 10,
            "promote_after": {"requests": 1000, "seconds": 60},
            "max_error_rate": 0.01,
            "sticky": {"header": "X-User"},
        }
    )
    assert settings == CanarySettings(10.0, 1000, 60.0, 0.01, "X-User", None)
    assert parse_canary_settings({}) == CanarySettings()
    assert parse_canary_settings(settings.to_json() | {"sticky": {"cookie": "uid"}}).sticky_cookie


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([], "must be a JSON object"),
        ({"percnt": 5}, "unknown canary setting(s) percnt"),
        ({"percent": 101}, "'percent' must be a number from 0 to 100"),
        ({"percent": True}, "'percent' must be a number"),
        ({"percent": "10"}, "'percent' must be a number"),
        ({"max_error_rate": -0.1}, "'max_error_rate' must be a number from 0 to 1"),
        ({"promote_after": {"requests": 0}}, "'requests' must be a number from 1"),
        ({"promote_after": {"requests": 1.5}}, "whole number"),
        ({"promote_after": {"minutes": 1}}, '"promote_after" must be'),
        ({"promote_after": 5}, '"promote_after" must be'),
        ({"sticky": {"header": ""}}, "sticky 'header' must be a header or cookie name"),
        ({"sticky": {"query": "x"}}, '"sticky" must be'),
    ],
)
def test_bad_settings_say_which_and_why(data: Any, says: str) -> None:
    with pytest.raises(CanaryError) as caught:
        parse_canary_settings(data)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("percent", "of_1000"), [(0, 0), (10, 100), (25, 250), (33.3, 333), (100, 1000)]
)
def test_the_unkeyed_split_takes_exactly_its_share(percent: float, of_1000: int) -> None:
    split = Split(percent)
    assert sum(split.to_canary() for _ in range(1000)) == of_1000


def test_a_sticky_key_always_lands_on_the_same_version_and_keys_spread_by_share() -> None:
    split = Split(10)
    keys = [f"user-{i}" for i in range(2000)]
    first = [split.to_canary(k) for k in keys]
    assert [split.to_canary(k) for k in keys] == first
    assert 140 <= sum(first) <= 260  # 10 % of 2000, give or take the hash
    assert not any(Split(0).to_canary(k) for k in keys)
    assert all(Split(100).to_canary(k) for k in keys)


S = CanarySettings(percent=10, promote_requests=1000, promote_seconds=60, max_error_rate=0.01)


@pytest.mark.parametrize(
    ("settings", "served", "failed", "elapsed", "verdict"),
    [
        (S, 0, 0, 0.0, None),
        (S, 500, 5, 30.0, None),  # within the budget, window not passed
        (S, 1000, 10, 59.0, None),  # enough requests, not enough time
        (S, 999, 0, 600.0, None),  # enough time, not enough requests
        (S, 1000, 10, 60.0, Verdict.PROMOTE),  # at the threshold: passes
        (S, 5000, 50, 60.0, Verdict.PROMOTE),
        (S, 30, 11, 1.0, Verdict.ROLL_BACK),  # the whole window's budget is spent early
        (S, 5000, 51, 600.0, Verdict.ROLL_BACK),
        (CanarySettings(percent=0), 0, 0, 1e6, None),  # blue-green: only on command
        (CanarySettings(percent=0), 100, 100, 1e6, None),
        (CanarySettings(max_error_rate=0), 1, 1, 0.0, Verdict.ROLL_BACK),
    ],
)
def test_verdict(
    settings: CanarySettings, served: int, failed: int, elapsed: float, verdict: Verdict | None
) -> None:
    decided = judge(settings, served, failed, elapsed)
    assert (decided[0] if decided else None) is verdict
    if decided is not None:
        assert f"{failed} of {served}" in decided[1]
