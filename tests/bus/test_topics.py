"""Topic rules, wildcard matching and the TopicIndex: pure code, no event loop."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import MAX_TOPIC_BYTES, TopicError, TopicIndex, matches, validate_pattern, validate_topic

# "é" and "€" are 2 and 3 bytes in UTF-8: limits count bytes, not characters.
TOPIC_255_BYTES = "é" * 127 + "a"
TOPIC_256_BYTES = "é" * 128

VALID_TOPICS = [
    "chat",
    "users.created",
    "a.b.c.d",
    "a-b_c:d/e",
    "Chat.UPPER.0",
    "日本.語",
    "x" * MAX_TOPIC_BYTES,
    TOPIC_255_BYTES,
]

INVALID_TOPICS = [
    ("", "topic is empty: give 1 to 255 bytes"),
    ("x" * 256, "topic is 256 bytes long: the limit is 255"),
    (TOPIC_256_BYTES, "topic is 256 bytes long: the limit is 255"),
    ("€" * 86, "topic is 258 bytes long"),
    ("a..b", "has an empty token: dots separate non-empty tokens"),
    (".a", "has an empty token"),
    ("a.", "has an empty token"),
    (".", "has an empty token"),
    ("a b", "contains white space or a control character"),
    (" a", "contains white space or a control character"),
    ("a\tb", "contains white space or a control character"),
    ("a\nb", "contains white space or a control character"),
    ("a\x00b", "contains white space or a control character"),
    ("a\x1fb", "contains white space or a control character"),
    ("a\x7fb", "contains white space or a control character"),
    ("a\x9fb", "contains white space or a control character"),
    ("a\u00a0b", "contains white space or a control character"),
    ("a\u3000b", "contains white space or a control character"),
    ("a\ud800b", "is not valid Unicode: it contains a lone surrogate"),
    ("*", "contains a wildcard: '*' and '>' are only allowed in subscription patterns"),
    (">", "contains a wildcard"),
    ("chat.*", "contains a wildcard"),
    ("users.>", "contains a wildcard"),
    ("ch*", "contains a wildcard"),
    ("a>b", "contains a wildcard"),
]

NOT_TEXT = [
    (None, "must be text, not NoneType"),
    (5, "must be text, not int"),
    (b"chat", "must be text, not bytes"),
    (["chat"], "must be text, not list"),
]

VALID_PATTERNS = [
    *VALID_TOPICS,
    "*",
    ">",
    "chat.*",
    "users.>",
    "*.*",
    "a.*.c",
    "*.>",
    "*.b.>",
]

INVALID_PATTERNS = [
    ("", "pattern is empty: give 1 to 255 bytes"),
    ("x" * 256, "pattern is 256 bytes long: the limit is 255"),
    ("é" * 127 + ".*", "pattern is 256 bytes long"),
    ("a..*", "has an empty token"),
    (".>", "has an empty token"),
    ("*.", "has an empty token"),
    ("a *", "contains white space or a control character"),
    ("a.\x7f", "contains white space or a control character"),
    (">.a", "'>' may only be the last token"),
    ("a.>.b", "'>' may only be the last token"),
    (">.>", "'>' may only be the last token"),
    ("ch*", "a wildcard must be a whole token, e.g. 'chat.*'"),
    ("a.*b", "a wildcard must be a whole token"),
    ("a.>x", "a wildcard must be a whole token"),
    ("a.**", "a wildcard must be a whole token"),
    ("a.>>", "a wildcard must be a whole token"),
]


@pytest.mark.parametrize("topic", VALID_TOPICS)
def test_validate_topic_accepts(topic: str) -> None:
    assert validate_topic(topic) is topic


@pytest.mark.parametrize(("topic", "fragment"), INVALID_TOPICS + NOT_TEXT)
def test_validate_topic_rejects(topic: object, fragment: str) -> None:
    with pytest.raises(TopicError, match=r"^topic") as info:
        validate_topic(topic)
    assert fragment in str(info.value)


@pytest.mark.parametrize("pattern", VALID_PATTERNS)
def test_validate_pattern_accepts(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern


@pytest.mark.parametrize(("pattern", "fragment"), INVALID_PATTERNS + NOT_TEXT)
def test_validate_pattern_rejects(pattern: object, fragment: str) -> None:
    with pytest.raises(TopicError, match=r"^pattern") as info:
        validate_pattern(pattern)
    assert fragment in str(info.value)


def test_byte_limit_counts_utf8_bytes_not_characters() -> None:
    assert len(TOPIC_255_BYTES.encode()) == 255 and len(TOPIC_255_BYTES) == 128
    assert len(TOPIC_256_BYTES.encode()) == 256 and len(TOPIC_256_BYTES) == 128


def test_topic_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        validate_topic("")


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a", "a", True),
        ("a", "b", False),
        ("a.b", "a", False),
        ("a", "a.b", False),
        ("Chat", "chat", False),
        # '*' is exactly one token.
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.*", "a", False),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("*.*", "a.b", True),
        ("*.*", "a", False),
        # '>' is one or more tokens.
        (">", "a", True),
        (">", "a.b.c", True),
        ("a.>", "a", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c", True),
        ("a.>", "b.c", False),
        ("*.>", "a", False),
        ("*.>", "a.b", True),
        # Mixed.
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
        ("a.*.c", "a.c", False),
        ("a.*.c", "a.b.x.c", False),
        ("*.b.>", "x.b.y", True),
        ("*.b.>", "x.b", False),
        ("*.b.>", "x.c.y", False),
    ],
)
def test_matches(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


class Value:
    """A distinct object to store in the index (the index compares values by identity)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def test_index_add_remove_and_len() -> None:
    index: TopicIndex[Value] = TopicIndex()
    one, two = Value("one"), Value("two")
    assert len(index) == 0
    assert index.add("chat", one) is True
    assert index.add("chat", one) is False
    assert index.add("chat.*", one) is True
    assert index.add("chat", two) is True
    assert len(index) == 3
    assert index.match("chat") == [one, two]
    assert index.match("chat.x") == [one]

    assert index.remove("chat", one) is True
    assert index.remove("chat", one) is False
    assert index.remove("other", two) is False
    assert index.remove("chat.*", two) is False
    assert len(index) == 2
    assert index.match("chat") == [two]

    assert index.remove("chat.*", one) is True
    assert index.remove("chat", two) is True
    assert len(index) == 0
    assert index.match("chat") == []
    assert index.match("chat.x") == []


def test_index_match_is_insertion_order_across_exact_and_wildcard() -> None:
    index: TopicIndex[Value] = TopicIndex()
    values = [Value(str(i)) for i in range(6)]
    patterns = ["a.>", "a.b", "*.b", "a.b", ">", "a.*"]
    for pattern, value in zip(patterns, values, strict=True):
        index.add(pattern, value)
    assert index.match("a.b") == values
    assert index.match("x.b") == [values[2], values[4]]
    assert index.match("a.b.c") == [values[0], values[4]]

    # Removing keeps the others' order; adding again puts a value last.
    index.remove("a.b", values[1])
    index.remove(">", values[4])
    assert index.match("a.b") == [values[0], values[2], values[3], values[5]]
    index.add("a.b", values[1])
    assert index.match("a.b") == [values[0], values[2], values[3], values[5], values[1]]


def test_index_exact_only_returns_a_copy() -> None:
    index: TopicIndex[Value] = TopicIndex()
    value = Value("v")
    index.add("chat", value)
    found = index.match("chat")
    found.clear()
    assert index.match("chat") == [value]


def test_index_patterns() -> None:
    index: TopicIndex[Value] = TopicIndex()
    one, two = Value("one"), Value("two")
    assert list(index.patterns()) == []
    for pattern in ("chat", "users.>", "chat.*"):
        index.add(pattern, one)
        index.add(pattern, two)
    listed = list(index.patterns())
    assert len(listed) == len(set(listed))
    assert sorted(listed) == ["chat", "chat.*", "users.>"]

    index.remove("users.>", one)
    assert sorted(index.patterns()) == ["chat", "chat.*", "users.>"]
    index.remove("users.>", two)
    index.remove("chat", one)
    index.remove("chat", two)
    assert sorted(index.patterns()) == ["chat.*"]


TOKENS = ["a", "b", "c"]
patterns_st = st.builds(
    lambda body, tail: ".".join(body + tail),
    st.lists(st.sampled_from([*TOKENS, "*"]), min_size=0, max_size=3),
    st.sampled_from([[], [">"], ["a"], ["*"]]),
).filter(bool)
topics_st = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4).map(".".join)


@settings(database=None, max_examples=300)
@given(
    patterns=st.lists(patterns_st, max_size=12),
    removed=st.sets(st.integers(0, 11)),
    readded=st.lists(st.integers(0, 11), unique=True),
    topics=st.lists(topics_st, min_size=1, max_size=5),
)
def test_index_match_equals_brute_force(
    patterns: list[str], removed: set[int], readded: list[int], topics: list[str]
) -> None:
    index: TopicIndex[Value] = TopicIndex()
    entries = [(validate_pattern(p), Value(f"v{i}")) for i, p in enumerate(patterns)]
    for pattern, value in entries:
        assert index.add(pattern, value)
    removed = {i for i in removed if i < len(entries)}
    for i in removed:
        assert index.remove(*entries[i])
    readded = [i for i in readded if i in removed]
    for i in readded:
        assert index.add(*entries[i])

    live = [e for i, e in enumerate(entries) if i not in removed]
    live += [entries[i] for i in readded]
    assert len(index) == len(live)
    assert sorted(index.patterns()) == sorted({p for p, _ in live})
    for topic in topics:
        validate_topic(topic)
        assert index.match(topic) == [v for p, v in live if matches(p, topic)]
