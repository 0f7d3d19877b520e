"""Helpers shared by the tests: waiting on an event instead of sleeping for it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

__all__ = ["DEFAULT_TIMEOUT", "eventually"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds: generous, so a busy shared machine slows a test, never fails it
POLL = 0.005  # seconds between two looks at the predicate


async def eventually(
    predicate: Callable[[], T | Awaitable[T]],
    what: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = POLL,
) -> T:
    """Wait until `predicate()` is truthy and return its value; fail after `timeout` seconds.

    `predicate` may be a plain or an async function. It is called at once, then every
    `interval` seconds. On timeout this raises AssertionError naming `what` (or the
    predicate's source line) and the last value seen, so a failing test says which
    event never came.
    """
    last: object = None
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            while True:
                value = predicate()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return cast(T, value)
                last = value
                await asyncio.sleep(interval)
    except TimeoutError:
        if not limit.expired():
            raise  # the predicate's own timeout, not ours
        raise AssertionError(
            f"timed out after {timeout:g} s waiting for {what or _describe(predicate)} "
            f"(last value: {last!r})"
        ) from None


def _describe(predicate: Callable[..., object]) -> str:
    """The predicate's source (a lambda's line), or its name."""
    try:
        source = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        source = ""
    return source or getattr(predicate, "__qualname__", repr(predicate))
