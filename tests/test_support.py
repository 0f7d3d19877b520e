"""The tests' own helper: `eventually` waits for an event and says which one never came."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import eventually


async def test_returns_the_first_truthy_value_of_a_plain_predicate() -> None:
    calls = []

    def predicate() -> list[int]:
        calls.append(1)
        return [len(calls)] if len(calls) >= 3 else []

    assert await eventually(predicate, interval=0.001) == [3]


async def test_awaits_an_async_predicate() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)

    async def is_set() -> bool:
        return event.is_set()

    assert await eventually(is_set) is True


async def test_times_out_naming_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(
        AssertionError, match=r"after 0.05 s waiting for the door \(last value: 0\)"
    ):
        await eventually(lambda: 0, "the door", timeout=0.05)


async def test_without_a_name_the_message_shows_the_predicate_source() -> None:
    door = {"open": False}
    with pytest.raises(AssertionError, match=r'lambda: door\["open"\]'):
        await eventually(lambda: door["open"], timeout=0.02)


async def test_a_timeout_raised_by_the_predicate_itself_is_not_reported_as_ours() -> None:
    async def hangs() -> bool:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()
        return True

    with pytest.raises(TimeoutError):
        await eventually(hangs, timeout=5)
