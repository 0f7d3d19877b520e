"""The pure side of the remote bus: subjects and interest counts, as tables."""

from __future__ import annotations

import pytest

from bus.remote import BROADCAST_PREFIX, TOPIC_PREFIX, Interest, from_subject, to_subject
from bus.topics import TopicIndex


@pytest.mark.parametrize(
    ("prefix", "topic", "subject"),
    [
        (TOPIC_PREFIX, "chat", "tw.t.chat"),
        (TOPIC_PREFIX, "users.created", "tw.t.users.created"),
        (TOPIC_PREFIX, "chat.*", "tw.t.chat.*"),
        (TOPIC_PREFIX, ">", "tw.t.>"),
        (TOPIC_PREFIX, "rooms.*.typing", "tw.t.rooms.*.typing"),
        (BROADCAST_PREFIX, "chat", "tw.b.chat"),
        (BROADCAST_PREFIX, "café.straße", "tw.b.café.straße"),
    ],
)
def test_topics_map_one_to_one_onto_subjects(prefix: str, topic: str, subject: str) -> None:
    assert to_subject(prefix, topic) == subject
    assert from_subject(prefix, subject) == topic


@pytest.mark.parametrize(
    ("prefix", "subject"),
    [(TOPIC_PREFIX, "tw.b.chat"), (TOPIC_PREFIX, "tw.t."), (BROADCAST_PREFIX, "chat")],
)
def test_a_subject_outside_the_prefix_is_refused(prefix: str, subject: str) -> None:
    with pytest.raises(ValueError, match="is not a topic under"):
        from_subject(prefix, subject)


# (operation, pattern, what it returns, the patterns wanted afterwards)
STEPS = [
    ("add", "chat", True, {"chat"}),
    ("add", "chat", False, {"chat"}),
    ("add", "news.*", True, {"chat", "news.*"}),
    ("remove", "chat", False, {"chat", "news.*"}),
    ("remove", "chat", True, {"news.*"}),
    ("remove", "chat", False, {"news.*"}),
    ("remove", "unknown", False, {"news.*"}),
    ("remove", "news.*", True, set()),
    ("add", "news.*", True, {"news.*"}),
]


def test_interest_says_when_a_pattern_is_first_wanted_and_last_dropped() -> None:
    interest = Interest()
    for op, pattern, returned, wanted in STEPS:
        assert getattr(interest, op)(pattern) is returned, (op, pattern)
        assert set(interest) == wanted, (op, pattern)
        assert len(interest) == len(wanted)
        assert all(p in interest for p in wanted)


def test_index_under_gives_the_values_of_exactly_one_pattern() -> None:
    index: TopicIndex[str] = TopicIndex()
    for pattern, value in [("chat.a", "x"), ("chat.*", "y"), ("chat.*", "z"), (">", "w")]:
        index.add(pattern, value)
    assert index.under("chat.a") == ["x"]
    assert index.under("chat.*") == ["y", "z"]
    assert index.under(">") == ["w"]
    assert index.under("chat.b") == []
    assert index.match("chat.a") == ["x", "y", "z", "w"]
