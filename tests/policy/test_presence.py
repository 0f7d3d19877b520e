"""Presence bookkeeping (tinywasm_wasi.policy.presence), step by step."""

from __future__ import annotations

import gc
import tracemalloc

from tinywasm_wasi.policy import presence
from tinywasm_wasi.policy.presence import Member, PresenceIndex, PresenceStats

A, B, C = Member("ann", "c1", 1.0), Member("bob", "c2", 2.0), Member(None, "c3", 3.0)


def test_join_and_leave_tell_the_other_watchers_and_clean_up() -> None:
    index: PresenceIndex[str] = PresenceIndex()
    assert index.join("a", A, ["chat", "news"], watch=True) == []
    assert index.join("b", B, ["chat"], watch=False) == [("chat", ["a"])]
    assert index.join("c", C, ["chat", "news"], watch=True) == [("chat", ["a"]), ("news", ["a"])]
    assert index.join("c", C, ["chat"], watch=True) == []  # already there
    assert index.stats() == PresenceStats(topics=2, members=5, watchers=4)
    assert index.members("chat", 10) == (3, [A, B, C])
    assert index.members("chat", 2) == (3, [A, B])
    assert index.members("nobody", 10) == (0, [])
    events = index.leave("a", ["chat", "news", "elsewhere"])
    assert [(topic, member, sorted(w)) for topic, member, w in events] == [
        ("chat", A, ["c"]),
        ("news", A, ["c"]),
    ]
    assert index.leave("a", ["chat"]) == []  # twice is harmless
    assert index.leave("b", ["chat"]) == [("chat", B, ["c"])]
    assert index.leave("c", ["chat", "news"]) == [("chat", C, []), ("news", C, [])]
    assert index.stats() == PresenceStats(topics=0, members=0, watchers=0)


def test_member_json() -> None:
    assert A.to_json() == {"user": "ann", "conn": "c1", "since": 1.0}


def test_members_lists_in_joining_order_and_costs_the_limit() -> None:
    index: PresenceIndex[int] = PresenceIndex()
    for i in range(10_000):
        index.join(i, Member(None, f"c{i}", float(10_000 - i)), ["room"], watch=False)
    count, first = index.members("room", 3)
    assert count == 10_000 and [m.conn for m in first] == ["c0", "c1", "c2"]


def churn(index: PresenceIndex[int], start: int, count: int) -> None:
    """`count` connections join a shared topic and one of their own, then all leave."""
    for i in range(start, start + count):
        topics = ["room", f"user.{i}"]
        index.join(i, Member(None, f"c{i}", 0.0), topics, watch=i % 10 == 0)
    for i in range(start, start + count):
        index.leave(i, ["room", f"user.{i}"])


def test_10000_connections_leave_nothing_behind() -> None:
    """The index's own memory (traced where it allocates) returns to where it was.

    A warm-up round first lets the shared topic's dict and set reach their size;
    dicts do not shrink, so that size is the steady state. Then three rounds of
    10,000 joins and leaves each must leave the index's allocations exactly as
    they were: bookkeeping per connection, or a topic that outlives its last
    member, would show as growth here.
    """
    index: PresenceIndex[int] = PresenceIndex()
    index.join(-1, Member("steady", "c0", 0.0), ["room"], watch=True)
    presence_file = [tracemalloc.Filter(True, presence.__file__)]
    tracemalloc.start()
    try:
        churn(index, 0, 10_000)
        held: list[int] = []
        for round_ in range(1, 4):
            churn(index, round_ * 10_000, 10_000)
            gc.collect()
            snapshot = tracemalloc.take_snapshot().filter_traces(presence_file)
            held.append(sum(stat.size for stat in snapshot.statistics("filename")))
    finally:
        tracemalloc.stop()
    assert index.stats() == PresenceStats(topics=1, members=1, watchers=1)
    assert held[0] == held[1] == held[2], f"bytes held by the index after each round: {held}"
