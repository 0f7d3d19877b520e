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


@settings(database=None, max_examples=300, deadline=None)
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


class LinearIndex:
    """The index as it was before the trie: a list of wildcards scanned on every match.

    Kept as the reference the trie is checked against (same answers, same order).
    """

    def __init__(self) -> None:
        self._entries: list[tuple[str, Value]] = []

    def add(self, pattern: str, value: Value) -> bool:
        if any(p == pattern and v is value for p, v in self._entries):
            return False
        self._entries.append((pattern, value))
        return True

    def remove(self, pattern: str, value: Value) -> bool:
        kept = [(p, v) for p, v in self._entries if not (p == pattern and v is value)]
        gone = len(kept) != len(self._entries)
        self._entries = kept
        return gone

    def match(self, topic: str) -> list[Value]:
        return [v for p, v in self._entries if matches(p, topic)]

    def __len__(self) -> int:
        return len(self._entries)


# (patterns added in order, topic, indices of the values expected, in order)
TRIE_CASES = [
    ([">"], "a", [0]),
    ([">"], "a.b.c.d", [0]),
    (["a.>"], "a", []),
    (["a.>"], "a.b", [0]),
    (["a.>", "a.b.>"], "a.b", [0]),
    (["a.>", "a.b.>"], "a.b.c", [0, 1]),
    (["*"], "a", [0]),
    (["*"], "a.b", []),
    (["*.*"], "a", []),
    (["*.*", "a.*", "*.b", "a.b"], "a.b", [0, 1, 2, 3]),
    (["a.b", "*.b", "a.*", "*.*"], "a.b", [0, 1, 2, 3]),
    (["*.b.>", "a.*.c", "a.>", "*.*.*"], "a.b.c", [0, 1, 2, 3]),
    (["*.b.>", "a.*.c", "a.>", "*.*.*"], "x.b.c", [0, 3]),
    (["*.b.>", "a.*.c", "a.>", "*.*.*"], "a.b.c.d", [0, 2]),
    (["a.*.c", "a.*.d"], "a.x.d", [1]),
    (["*.*.*.*.*.>"], "a.b.c.d.e", []),
    (["*.*.*.*.*.>"], "a.b.c.d.e.f", [0]),
]


@pytest.mark.parametrize(("patterns", "topic", "expected"), TRIE_CASES)
def test_index_trie_table(patterns: list[str], topic: str, expected: list[int]) -> None:
    index: TopicIndex[Value] = TopicIndex()
    values = [Value(f"v{i}") for i in range(len(patterns))]
    for pattern, value in zip(patterns, values, strict=True):
        index.add(pattern, value)
    assert index.match(topic) == [values[i] for i in expected]


def test_index_removing_everything_leaves_an_empty_trie() -> None:
    index: TopicIndex[Value] = TopicIndex()
    entries = [
        (p, Value(f"{p}/{i}"))
        for i in range(3)
        for p in ("a.*", "a.b.*", "a.b.>", ">", "*.*.c", "a.*.c.>", "x")
    ]
    for entry in entries:
        index.add(*entry)
    for entry in reversed(entries):
        assert index.remove(*entry)
    assert len(index) == 0
    assert list(index.patterns()) == []
    assert index._root.empty()  # every node on the way was pruned
    assert index.match("a.b.c") == []


def test_index_many_wildcards_on_one_pattern_remove_in_any_order() -> None:
    # The close stall of the hub: thousands of clients on one wildcard, closing.
    index: TopicIndex[Value] = TopicIndex()
    values = [Value(str(i)) for i in range(2000)]
    for value in values:
        index.add("room.*", value)
    for value in values[::2]:
        index.remove("room.*", value)
    assert index.match("room.x") == values[1::2]


OPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove", "match"]), patterns_st, st.integers(0, 3)),
    max_size=60,
)


@settings(database=None, max_examples=300, deadline=None)
@given(ops=OPS, topics=st.lists(topics_st, min_size=1, max_size=4))
def test_index_agrees_with_the_old_linear_index(
    ops: list[tuple[str, str, int]], topics: list[str]
) -> None:
    index: TopicIndex[Value] = TopicIndex()
    linear = LinearIndex()
    values = [Value(f"v{i}") for i in range(4)]
    for op, pattern, which in ops:
        value = values[which]
        if op == "add":
            assert index.add(pattern, value) == linear.add(pattern, value)
        elif op == "remove":
            assert index.remove(pattern, value) == linear.remove(pattern, value)
        for topic in topics:
            assert index.match(topic) == linear.match(topic), (op, pattern, topic)
        assert len(index) == len(linear)
