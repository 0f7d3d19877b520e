"""The mailbox on its own: bounds by count and by bytes, order, hold, hand-over of pending work."""

from __future__ import annotations

import threading

from tinywasm_wasi.runtime.mailbox import Mailbox, Request


class Sink:
    """A deliver callback that blocks until released, so the queue can be filled."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.gate = threading.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.gate.wait(5)
        self.got.append((topic, payload))


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
        assert box.wait_idle(5)
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
        assert box.wait_idle(5)
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
