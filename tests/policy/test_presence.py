"""Presence bookkeeping (tinywasm_wasi.policy.presence), step by step."""

from __future__ import annotations

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
