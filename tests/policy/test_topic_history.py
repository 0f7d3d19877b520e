"""Topic history (tinywasm_wasi.policy.topic_history): rules, positions, logs and recovery."""

from __future__ import annotations

import itertools

import pytest

from tinywasm_wasi.policy.topic_history import (
    ENTRY_OVERHEAD,
    HistoryRule,
    MemoryHistory,
    Position,
    TopicLog,
    parse_history_rule,
    parse_position,
    parse_since,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("chat.>:100:300s", HistoryRule("chat.>", 100, 300.0)),
        ("chat:1:5", HistoryRule("chat", 1, 5.0)),
        ("a.*:10:2m", HistoryRule("a.*", 10, 120.0)),
        ("x:10:1.5h", HistoryRule("x", 10, 5400.0)),
        (" events:5:0.5s ", HistoryRule("events", 5, 0.5)),
        ("a:b:3:4", HistoryRule("a:b", 3, 4.0)),  # the pattern may hold a colon
    ],
)
def test_parse_history_rule(text: str, expected: HistoryRule) -> None:
    assert parse_history_rule(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chat", "is not pattern:size:ttl"),
        ("chat:100", "is not pattern:size:ttl"),
        ("a..b:1:1", "has an empty token"),
        ("chat:0:1", "size must be 1 to 100000 messages"),
        ("chat:x:1", "size must be 1 to 100000 messages"),
        ("chat:100001:1", "size must be 1 to 100000"),
        ("chat:1:0", "ttl must be a time more than zero"),
        ("chat:1:-3s", "ttl must be a time more than zero"),
        ("chat:1:5d", "ttl must be a time more than zero"),
        ("chat:1:inf", "ttl must be a time more than zero"),
        ("chat:1:", "ttl must be a time more than zero"),
    ],
)
def test_parse_history_rule_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_history_rule(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("41:ab12", (None, Position(41, "ab12"))),
        ("0:e", (None, Position(0, "e"))),
        ("chat:41:ab12", ("chat", Position(41, "ab12"))),
        ("rooms.a:7:x", ("rooms.a", Position(7, "x"))),
    ],
)
def test_parse_since(text: str, expected: tuple[str | None, Position]) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize(
    "text", ["", "41", "x:ab", "-1:ab", "41:", ":ab", "chat.*:1:e", "a..b:1:e", "1" * 19 + ":e"]
)
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text)


def test_position_text_round_trips() -> None:
    assert parse_position(str(Position(12, "ep"))) == Position(12, "ep")


RULE = HistoryRule("chat", 5, 10.0)


def filled(count: int, *, start: float = 0.0, step: float = 1.0) -> TopicLog:
    log = TopicLog(RULE, "E")
    for i in range(count):
        log.append(f"m{i + 1}".encode(), start + i * step)
    return log


@pytest.mark.parametrize(
    ("count", "since", "recovered", "offsets"),
    [
        (0, Position(0, "E"), True, []),  # nothing published, nothing missed
        (3, Position(0, "E"), True, [1, 2, 3]),
        (3, Position(1, "E"), True, [2, 3]),
        (3, Position(3, "E"), True, []),
        (5, Position(0, "E"), True, [1, 2, 3, 4, 5]),
        (7, Position(2, "E"), True, [3, 4, 5, 6, 7]),  # 3..7 kept: exactly enough
        (7, Position(1, "E"), False, []),  # 2 was dropped: it cannot be recovered
        (7, Position(0, "E"), False, []),
        (3, Position(4, "E"), False, []),  # from the future: another run of offsets
        (3, Position(1, "other"), False, []),  # epoch changed: history was lost
    ],
)
def test_recovery_decision(
    count: int, since: Position, recovered: bool, offsets: list[int]
) -> None:
    log = filled(count, start=100.0, step=0.0)
    result = log.recover(since)
    assert result.recovered is recovered
    assert [e.offset for e in result.entries] == offsets
    assert result.position == Position(count, "E")


def test_ttl_expiry_makes_an_old_position_unrecoverable() -> None:
    log = filled(3, start=0.0, step=1.0)  # times 0, 1, 2; ttl 10
    assert log.expire(10.5) == ENTRY_OVERHEAD + 2  # m1 (t=0) is over 10 s old
    assert log.expire(11.5) == ENTRY_OVERHEAD + 2  # then m2
    assert [e.offset for e in log.entries] == [3]
    assert not log.recover(Position(0, "E")).recovered
    assert [e.offset for e in log.recover(Position(2, "E")).entries] == [3]


def test_ttl_expiry_keeps_offsets_and_epoch() -> None:
    log = filled(3, start=0.0, step=1.0)
    log.expire(100.0)
    assert not log.entries and log.bytes == 0
    assert log.recover(Position(3, "E")).recovered
    assert not log.recover(Position(2, "E")).recovered
    assert log.append(b"x", 101.0).offset == 4


@pytest.mark.parametrize(
    ("after", "limit", "offsets"),
    [(0, None, [3, 4, 5, 6, 7]), (0, 2, [6, 7]), (5, None, [6, 7]), (5, 1, [7]), (7, 3, []),
     (9, None, [])],
)  # fmt: skip
def test_after_serves_the_newest_up_to_limit(
    after: int, limit: int | None, offsets: list[int]
) -> None:
    assert [e.offset for e in filled(7, step=0.0).after(after, limit)] == offsets


def make(**kw: int) -> MemoryHistory:
    counter = itertools.count(1)
    return MemoryHistory(
        [HistoryRule("chat.>", 3, 60.0), HistoryRule("events", 1, 60.0)],
        new_epoch=lambda: f"e{next(counter)}",
        **kw,
    )


def test_only_topics_with_a_rule_keep_history() -> None:
    history = make()
    assert history.append("other", b"x", 0.0) is None
    assert history.recover("other", None, 0.0) is None
    appended = history.append("chat.a", b"x", 0.0)
    assert appended is not None
    entry, epoch = appended
    assert (entry.offset, epoch) == (1, "e1")
    assert history.latest("chat.a", 0.0) == (entry, "e1")
    assert history.append("events", b"1", 0.0) is not None
    assert history.append("events", b"2", 0.0) is not None
    latest = history.latest("events", 0.0)
    assert latest is not None and latest[0].payload == b"2"  # size 1: the latest value


def test_a_subscriber_learns_the_position_before_any_message() -> None:
    history = make()
    recovery = history.recover("chat.a", None, 0.0)
    assert recovery is not None
    assert (recovery.recovered, recovery.position) == (False, Position(0, "e1"))
    assert history.append("chat.a", b"x", 0.0) == (history.latest("chat.a", 0.0))


def test_topics_over_the_limit_are_evicted_least_recent_first_with_a_new_epoch() -> None:
    history = make(max_topics=2)
    history.append("chat.a", b"1", 0.0)
    history.append("chat.b", b"1", 0.0)
    history.append("chat.a", b"2", 0.0)  # a is now the most recent
    history.append("chat.c", b"1", 0.0)  # b goes
    assert sorted(history.topics()) == ["chat.a", "chat.c"]
    recovery = history.recover("chat.b", Position(1, "e2"), 0.0)
    assert recovery is not None and not recovery.recovered
    assert recovery.position.epoch != "e2"
    assert history.stats().evicted_topics == 2  # b, then c when b came back


def test_bytes_are_bounded_and_counted() -> None:
    cost = 10 + ENTRY_OVERHEAD
    history = make(max_bytes=3 * cost)
    for topic in ("chat.a", "chat.b", "chat.c"):
        history.append(topic, b"x" * 10, 0.0)
    assert history.stats().bytes == 3 * cost
    history.append("chat.d", b"x" * 10, 0.0)
    stats = history.stats()
    assert stats.bytes == 3 * cost and stats.topics == 3 and stats.evicted_topics == 1
    big = make(max_bytes=2 * cost)
    for _ in range(3):
        big.append("chat.a", b"x" * 10, 0.0)  # one topic alone: it keeps what fits
    assert big.stats().bytes == 2 * cost and big.stats().messages == 2


def test_memory_returns_to_zero_when_everything_expires() -> None:
    history = make()
    for i in range(10):
        history.append(f"chat.{i}", b"x" * 100, 0.0)
    assert history.stats().bytes > 0
    for i in range(10):
        history.latest(f"chat.{i}", 1000.0)
    assert history.stats().bytes == 0 and history.stats().messages == 0
