"""The in-process Bus: delivery, drops, cancel, atomic swap, close. Threads, no event loop."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bus import Bus, BusClosedError, BusError, BusStats, Subscription, TopicError

Received = list[tuple[str, bytes]]


def recorder(result: bool | None = None) -> tuple[Received, Callable[[str, bytes], bool | None]]:
    """A handler that records what it receives and returns `result`."""
    received: Received = []

    def handler(topic: str, payload: bytes) -> bool | None:
        received.append((topic, payload))
        return result

    return received, handler


def test_publish_returns_number_of_accepting_handlers() -> None:
    bus = Bus()
    got1, h1 = recorder()
    got2, h2 = recorder(True)
    got3, h3 = recorder()
    bus.subscribe("chat", h1)
    bus.subscribe("chat", h2)
    bus.subscribe("other", h3)
    assert bus.publish("chat", b"hi") == 2
    assert bus.publish("nobody.listens", b"x") == 0
    assert got1 == got2 == [("chat", b"hi")]
    assert got3 == []


@pytest.mark.parametrize(
    ("pattern", "topic", "delivered"),
    [
        ("chat", "chat", True),
        ("chat", "chat.x", False),
        ("chat.*", "chat.x", True),
        ("chat.*", "chat", False),
        ("chat.*", "chat.x.y", False),
        ("chat.>", "chat.x.y", True),
        ("chat.>", "chat", False),
        (">", "anything.at.all", True),
        ("*.created", "users.created", True),
        ("*.created", "users.deleted", False),
    ],
)
def test_wildcard_delivery(pattern: str, topic: str, delivered: bool) -> None:
    bus = Bus()
    got, handler = recorder()
    bus.subscribe(pattern, handler)
    assert bus.publish(topic, b"p") == int(delivered)
    assert got == ([(topic, b"p")] if delivered else [])


def test_handlers_are_called_in_subscription_order() -> None:
    bus = Bus()
    calls: list[str] = []
    for name, pattern in [("w1", "a.>"), ("e1", "a.b"), ("w2", "*.b"), ("e2", "a.b")]:
        bus.subscribe(pattern, lambda _t, _p, name=name: calls.append(name))
    bus.publish("a.b", b"")
    assert calls == ["w1", "e1", "w2", "e2"]


def test_handler_returning_false_counts_as_dropped() -> None:
    bus = Bus()
    _, full = recorder(False)
    _, ok = recorder(None)
    refusing = bus.subscribe("chat", full)
    accepting = bus.subscribe("chat", ok)
    assert bus.publish("chat", b"1") == 1
    assert bus.publish("chat", b"2") == 1
    assert (refusing.delivered, refusing.dropped) == (0, 2)
    assert (accepting.delivered, accepting.dropped) == (2, 0)
    assert bus.stats() == BusStats(published=2, delivered=2, dropped=2, subscriptions=2)


def test_raising_handler_is_logged_dropped_and_does_not_stop_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="tinywasm.bus")
    bus = Bus()
    before, h_before = recorder()
    after, h_after = recorder()

    def broken(topic: str, payload: bytes) -> bool:
        raise RuntimeError("boom")

    bus.subscribe("chat.*", h_before)
    bad = bus.subscribe("chat.*", broken)
    bus.subscribe("chat.x", h_after)

    assert bus.publish("chat.x", b"m") == 2
    assert before == after == [("chat.x", b"m")]
    assert (bad.delivered, bad.dropped) == (0, 1)
    assert bus.stats().dropped == 1

    [record] = [r for r in caplog.records if r.name == "tinywasm.bus"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "subscriber 'chat.*' raised; message on 'chat.x' dropped"
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_cancel_stops_delivery_and_is_safe_twice() -> None:
    bus = Bus()
    got, handler = recorder()
    sub = bus.subscribe("chat", handler)
    assert sub.active and repr(sub) == "<Subscription 'chat' active>"
    bus.publish("chat", b"1")
    sub.cancel()
    sub.cancel()
    assert not sub.active and repr(sub) == "<Subscription 'chat' cancelled>"
    assert bus.publish("chat", b"2") == 0
    assert got == [("chat", b"1")]
    assert bus.stats().subscriptions == 0


def test_cancel_leaves_other_subscriptions_of_the_same_handler() -> None:
    bus = Bus()
    got, handler = recorder()
    first = bus.subscribe("chat", handler)
    bus.subscribe("chat", handler)
    first.cancel()
    assert bus.publish("chat", b"x") == 1
    assert got == [("chat", b"x")]


def test_swap_replaces_subscriptions() -> None:
    bus = Bus()
    old_got, old = recorder()
    new_got, new = recorder()
    sub = bus.subscribe("chat", old)
    created = bus.swap([sub], [("chat", new), ("chat.*", new)])
    assert [s.pattern for s in created] == ["chat", "chat.*"]
    assert all(isinstance(s, Subscription) and s.active for s in created)
    assert not sub.active
    sub.cancel()  # already cancelled by the swap: a no-op
    bus.publish("chat", b"1")
    bus.publish("chat.x", b"2")
    assert old_got == []
    assert new_got == [("chat", b"1"), ("chat.x", b"2")]
    assert bus.stats().subscriptions == 2


def test_swap_ignores_subscriptions_it_does_not_own() -> None:
    bus, other = Bus(), Bus()
    _, handler = recorder()
    foreign = other.subscribe("chat", handler)
    bus.swap([foreign], [])
    assert foreign.active
    assert other.publish("chat", b"") == 1


def test_swap_with_an_invalid_pattern_changes_nothing() -> None:
    bus = Bus()
    got, handler = recorder()
    sub = bus.subscribe("chat", handler)
    with pytest.raises(TopicError, match="has an empty token"):
        bus.swap([sub], [("chat", handler), ("a..b", handler)])
    assert sub.active
    assert bus.publish("chat", b"still") == 1
    assert got == [("chat", b"still")]
    assert bus.stats().subscriptions == 1


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [("", "topic is empty"), ("chat.*", "contains a wildcard"), ("a..b", "empty token")],
)
def test_publish_rejects_invalid_topic(topic: str, fragment: str) -> None:
    bus = Bus()
    with pytest.raises(TopicError, match=fragment):
        bus.publish(topic, b"")
    assert bus.stats().published == 0


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [("", "pattern is empty"), (">.a", "'>' may only be the last token"), ("ch*", "whole token")],
)
def test_subscribe_rejects_invalid_pattern(pattern: str, fragment: str) -> None:
    bus = Bus()
    with pytest.raises(TopicError, match=fragment):
        bus.subscribe(pattern, recorder()[1])
    assert bus.stats().subscriptions == 0


def test_close() -> None:
    bus = Bus()
    got, handler = recorder()
    sub = bus.subscribe("chat", handler)
    bus.publish("chat", b"before")
    bus.close()
    bus.close()  # safe twice
    with pytest.raises(BusClosedError, match=r"^cannot publish: the bus is closed$"):
        bus.publish("chat", b"after")
    with pytest.raises(BusClosedError, match=r"^cannot subscribe: the bus is closed$"):
        bus.subscribe("chat", handler)
    with pytest.raises(BusClosedError, match=r"^cannot subscribe: the bus is closed$"):
        bus.swap([sub], [("chat", handler)])
    assert got == [("chat", b"before")]
    assert sub.active  # a failed swap cancels nothing
    sub.cancel()
    assert bus.stats() == BusStats(published=1, delivered=1, dropped=0, subscriptions=0)


def test_closed_error_is_a_bus_error() -> None:
    bus = Bus()
    bus.close()
    with pytest.raises(BusError):
        bus.publish("chat", b"")
    with pytest.raises(RuntimeError):
        bus.publish("chat", b"")


def test_stats_counters() -> None:
    bus = Bus()
    assert bus.stats() == BusStats(published=0, delivered=0, dropped=0, subscriptions=0)
    _, ok = recorder()
    _, refuse = recorder(False)
    bus.subscribe("a", ok)
    bus.subscribe("a.*", ok)
    bus.subscribe("a.*", refuse)
    bus.publish("a", b"")  # 1 delivered
    bus.publish("a.b", b"")  # 1 delivered, 1 dropped
    bus.publish("z", b"")  # nobody
    stats = bus.stats()
    assert stats == BusStats(published=3, delivered=2, dropped=1, subscriptions=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.published = 0  # type: ignore[misc]


# --- concurrency -------------------------------------------------------------------

PUBLISHERS = 4
PER_PUBLISHER = 5_000


@pytest.fixture
def busy_threads() -> Iterator[None]:
    """Switch threads often so publishers and the swapper really interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _payload(publisher: int, n: int) -> bytes:
    return f"{publisher}:{n}".encode()


def _parse(payload: bytes) -> tuple[int, int]:
    publisher, n = payload.split(b":")
    return int(publisher), int(n)


def _publish_all(bus: Bus, topic: str, start: threading.Barrier) -> list[list[int]]:
    """Run the publishers in threads; return each one's list of publish() results."""

    def publish(publisher: int) -> list[int]:
        start.wait()
        return [bus.publish(topic, _payload(publisher, n)) for n in range(PER_PUBLISHER)]

    with ThreadPoolExecutor(PUBLISHERS) as pool:
        return list(pool.map(publish, range(PUBLISHERS)))


def _numbers_by_publisher(received: list[bytes]) -> dict[int, list[int]]:
    by: dict[int, list[int]] = {p: [] for p in range(PUBLISHERS)}
    for payload in received:
        publisher, n = _parse(payload)
        by[publisher].append(n)
    return by


@pytest.mark.usefixtures("busy_threads")
def test_swap_is_atomic_under_concurrent_publishers() -> None:
    bus = Bus()
    got_a: list[bytes] = []
    got_b: list[bytes] = []

    def handler_a(topic: str, payload: bytes) -> None:
        got_a.append(payload)

    def handler_b(topic: str, payload: bytes) -> None:
        got_b.append(payload)

    sub = bus.subscribe("load", handler_a)
    start = threading.Barrier(PUBLISHERS + 1)
    done = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal sub, swaps
        start.wait()
        while not done.is_set():
            [sub] = bus.swap([sub], [("load", handler_b if swaps % 2 == 0 else handler_a)])
            swaps += 1

    with ThreadPoolExecutor(1) as pool:
        swapping = pool.submit(swapper)
        try:
            results = _publish_all(bus, "load", start)
        finally:
            done.set()
        swapping.result()

    # Every publish found exactly one subscriber: never both handlers, never neither.
    assert all(r == 1 for per in results for r in per)
    assert swaps > 1 and got_a and got_b
    expected = {(p, n) for p in range(PUBLISHERS) for n in range(PER_PUBLISHER)}
    in_a = [_parse(m) for m in got_a]
    in_b = [_parse(m) for m in got_b]
    assert len(in_a) + len(in_b) == len(expected)
    assert set(in_a) | set(in_b) == expected
    assert not set(in_a) & set(in_b)
    for received in (got_a, got_b):
        for numbers in _numbers_by_publisher(received).values():
            assert numbers == sorted(numbers)
    assert bus.stats() == BusStats(
        published=len(expected), delivered=len(expected), dropped=0, subscriptions=1
    )


@pytest.mark.usefixtures("busy_threads")
def test_each_subscriber_sees_each_publishers_messages_in_order() -> None:
    bus = Bus()
    exact: list[bytes] = []
    wild: list[bytes] = []
    bus.subscribe("orders.new", lambda _t, p: exact.append(p))
    bus.subscribe("orders.>", lambda _t, p: wild.append(p))

    results = _publish_all(bus, "orders.new", threading.Barrier(PUBLISHERS))

    assert all(r == 2 for per in results for r in per)
    expected = list(range(PER_PUBLISHER))
    for received in (exact, wild):
        assert _numbers_by_publisher(received) == {p: expected for p in range(PUBLISHERS)}
    # The lock gives both subscribers one total order.
    assert exact == wild


def test_publish_checked_delivers_like_publish_and_refuses_after_close() -> None:
    bus = Bus()
    got: list[tuple[str, bytes]] = []
    bus.subscribe("a.*", lambda t, p: got.append((t, p)))
    assert bus.publish_checked("a.b", b"1") == 1  # a topic the caller validated already
    assert got == [("a.b", b"1")]
    assert bus.stats().published == 1
    bus.close()
    with pytest.raises(BusClosedError):
        bus.publish_checked("a.b", b"2")
