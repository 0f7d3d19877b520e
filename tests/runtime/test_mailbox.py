"""The mailbox on its own: bounds by count and by bytes, order, hold, hand-over of pending work."""

from __future__ import annotations

import threading

from tinywasm_wasi.runtime.mailbox import Mailbox, Request


class Sink:
    """A deliver callback that blocks until released, so the queue can be filled."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()  # a delivery has started

    def __call__(self, topic: str, payload: bytes, sender: str = "") -> None:
        self.entered.set()
        self.gate.wait(5)
        self.got.append((topic, payload))


def settled(box: Mailbox, timeout: float = 5) -> bool:
    """Block until the mailbox calls back that it settled; True when it got idle."""
    done = threading.Event()
    result: list[bool] = []

    def record(idle: bool) -> None:
        result.append(idle)
        done.set()

    box.on_settled(record)
    return done.wait(timeout) and result == [True]


def test_the_byte_bound_refuses_what_would_overflow_and_counts_it() -> None:
    sink = Sink()
    box = Mailbox("m", capacity=100, deliver=sink, byte_capacity=1000, held=True)
    try:
        assert box.put("t", bytes(600))  # 601 bytes with the topic
        assert not box.put("t", bytes(600))  # 1202 > 1000: refused
        assert box.put("t", bytes(300))  # 902: fits
        assert box.queued_bytes == 902
        assert box.dropped == 1 and box.accepted == 2
        request = Request("handle", bytes(200), 1024, lambda _result, _error: None)
        assert not box.put_request(request)  # a request counts its body the same way
        sink.gate.set()
        box.release()
        assert settled(box)
        assert box.queued_bytes == 0
        assert [len(p) for _, p in sink.got] == [600, 300]
    finally:
        sink.gate.set()
        box.close()


def test_one_message_bigger_than_the_byte_bound_still_fits_an_empty_mailbox() -> None:
    sink = Sink()
    sink.gate.set()
    box = Mailbox("m", capacity=10, deliver=sink, byte_capacity=10)
    try:
        assert box.put("t", bytes(100))  # refusing it forever would lose it for sure
        assert settled(box)
        assert sink.got == [("t", bytes(100))]
    finally:
        box.close()


def test_taking_pending_work_moves_its_bytes_too() -> None:
    sink = Sink()
    box = Mailbox("a", capacity=10, deliver=sink, byte_capacity=100, held=True)
    other = Mailbox("b", capacity=10, deliver=sink, byte_capacity=100, held=True)
    try:
        box.put("t", bytes(40))
        box.put("t", bytes(40))
        moved = box.take_pending()
        assert box.queued_bytes == 0 and len(moved) == 2
        other.prepend(moved)
        assert other.queued_bytes == 82
        assert not other.put("t", bytes(40))  # the moved work counts against the bound
    finally:
        sink.gate.set()
        box.close()
        other.close()


def test_close_skips_a_call_its_caller_gave_up_on_and_fails_the_others() -> None:
    sink = Sink()
    box = Mailbox("m", capacity=10, deliver=sink)
    try:
        box.put("t", b"blocks")  # the thread sits in this delivery until the gate opens
        assert sink.entered.wait(5)
        abandoned = box.call(lambda: "never")
        waiting = box.call(lambda: "never either")
        assert abandoned.cancel()  # what asyncio.wrap_future does when its awaiter times out
        assert box.put("t", b"queued") and box.put("t", b"queued too")
        assert box.close() == 2  # no InvalidStateError; the two queued messages discarded
        assert abandoned.cancelled()
        assert "closed before the call ran" in str(waiting.exception(timeout=1))
    finally:
        sink.gate.set()
        box.close()


def test_on_settled_calls_back_when_idle_or_stuck_behind_a_hold() -> None:
    sink = Sink()
    box = Mailbox("m", capacity=10, deliver=sink)
    results: list[bool] = []
    settled = threading.Event()

    def record(idle: bool) -> None:
        results.append(idle)
        settled.set()

    try:
        box.on_settled(record)  # idle already: called at once
        assert results == [True]
        box.put("t", b"1")
        box.put("t", b"2")
        settled.clear()
        box.on_settled(record)
        assert results == [True], "not settled while a delivery runs"
        sink.gate.set()
        assert settled.wait(5)
        assert results == [True, True] and sink.got == [("t", b"1"), ("t", b"2")]

        box.hold()
        box.put("t", b"3")
        settled.clear()
        box.on_settled(record)  # held with work queued: it cannot get idle by itself
        assert settled.wait(5)
        assert results == [True, True, False]

        box.forget_settled(record)  # forgetting an unknown callback is fine
    finally:
        sink.gate.set()
        box.close()
