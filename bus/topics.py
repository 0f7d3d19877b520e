"""Topic rules and wildcard matching: pure functions and one index, no I/O.

A topic is UTF-8 text of 1 to 255 bytes made of dot-separated tokens
(``chat``, ``users.created``). A subscription pattern may also use NATS-style
wildcards as whole tokens: ``*`` matches exactly one token and ``>``, only as
the last token, matches one or more tokens (``chat.*``, ``users.>``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from bus.exceptions import TopicError

__all__ = ["MAX_TOPIC_BYTES", "TopicIndex", "matches", "validate_pattern", "validate_topic"]

MAX_TOPIC_BYTES = 255

T = TypeVar("T")


def _check_common(text: object, what: str) -> list[str]:
    if not isinstance(text, str):
        raise TopicError(f"{what} must be text, not {type(text).__name__}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise TopicError(
            f"{what} {text!r} is not valid Unicode: it contains a lone surrogate"
        ) from None
    if size == 0:
        raise TopicError(f"{what} is empty: give 1 to {MAX_TOPIC_BYTES} bytes, e.g. 'chat'")
    if size > MAX_TOPIC_BYTES:
        raise TopicError(f"{what} is {size} bytes long: the limit is {MAX_TOPIC_BYTES}")
    # C0 controls, DEL and the C1 controls; most of them are not isspace().
    if any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in text):
        raise TopicError(f"{what} {text!r} contains white space or a control character")
    tokens = text.split(".")
    if "" in tokens:
        raise TopicError(f"{what} {text!r} has an empty token: dots separate non-empty tokens")
    return tokens


def validate_topic(topic: object) -> str:
    """Return `topic` if it is a valid concrete topic (no wildcards), else raise TopicError."""
    tokens = _check_common(topic, "topic")
    for token in tokens:
        if "*" in token or ">" in token:
            raise TopicError(
                f"topic {topic!r} contains a wildcard: '*' and '>' are only allowed "
                "in subscription patterns"
            )
    assert isinstance(topic, str)
    return topic


def validate_pattern(pattern: object) -> str:
    """Return `pattern` if it is a valid subscription pattern, else raise TopicError."""
    tokens = _check_common(pattern, "pattern")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if token == ">" and i != last:
            raise TopicError(f"pattern {pattern!r}: '>' may only be the last token")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise TopicError(
                f"pattern {pattern!r}: a wildcard must be a whole token, e.g. 'chat.*'"
            )
    assert isinstance(pattern, str)
    return pattern


def is_wildcard(pattern: str) -> bool:
    """True if `pattern` (already valid) contains a wildcard token."""
    return any(token in ("*", ">") for token in pattern.split("."))


def _match_tokens(pattern: list[str], topic: list[str]) -> bool:
    for i, token in enumerate(pattern):
        if token == ">":
            return len(topic) > i
        if i >= len(topic):
            return False
        if token != "*" and token != topic[i]:
            return False
    return len(pattern) == len(topic)


def matches(pattern: str, topic: str) -> bool:
    """True if the concrete `topic` matches the subscription `pattern`."""
    return _match_tokens(pattern.split("."), topic.split("."))


class _Node(Generic[T]):
    """One token of the wildcard trie. Buckets map id(value) to (sequence number, value)."""

    __slots__ = ("children", "here", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}  # a token, or "*"
        self.here: dict[int, tuple[int, T]] = {}  # patterns that end at this node
        self.rest: dict[int, tuple[int, T]] = {}  # patterns "<this node's path>.>"

    def empty(self) -> bool:
        return not (self.children or self.here or self.rest)


class TopicIndex(Generic[T]):
    """Map subscription patterns to values and find the values for a topic.

    Exact patterns are a dict lookup. Wildcard patterns live in a token trie, as NATS
    keeps them: a topic walks it one token at a time, following the token's child and
    the ``*`` child and collecting the ``>`` buckets it passes, so matching costs the
    topic's depth times the wildcard branches taken, never a scan of every pattern.
    Adding and removing cost the pattern's depth. Values are returned in the order they
    were added. Adding the same (pattern, value) twice keeps one entry. Not thread-safe:
    the owner serialises access.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[int, T]] = {}
        self._root: _Node[T] = _Node()
        self._wild = 0  # wildcard entries in the trie
        self._seq: dict[tuple[str, int], int] = {}
        self._next = 0

    def add(self, pattern: str, value: T) -> bool:
        """Add `value` under `pattern`; return False if it was already there."""
        key = (pattern, id(value))
        if key in self._seq:
            return False
        seq = self._seq[key] = self._next
        self._next += 1
        if is_wildcard(pattern):
            tokens = pattern.split(".")
            node = self._root
            for token in tokens[:-1]:
                node = node.children.setdefault(token, _Node())
            if tokens[-1] == ">":
                node.rest[id(value)] = (seq, value)
            else:
                node = node.children.setdefault(tokens[-1], _Node())
                node.here[id(value)] = (seq, value)
            self._wild += 1
        else:
            self._exact.setdefault(pattern, {})[id(value)] = value
        return True

    def remove(self, pattern: str, value: T) -> bool:
        """Remove `value` from `pattern`; return False if it was not there."""
        if self._seq.pop((pattern, id(value)), None) is None:
            return False
        if is_wildcard(pattern):
            tokens = pattern.split(".")
            path = [self._root]
            for token in tokens[:-1]:
                path.append(path[-1].children[token])
            if tokens[-1] == ">":
                del path[-1].rest[id(value)]
            else:
                path.append(path[-1].children[tokens[-1]])
                del path[-1].here[id(value)]
            # Prune the nodes left empty, from the leaf up.
            for depth in range(len(path) - 1, 0, -1):
                if not path[depth].empty():
                    break
                del path[depth - 1].children[tokens[depth - 1]]
            self._wild -= 1
        else:
            values = self._exact[pattern]
            del values[id(value)]
            if not values:
                del self._exact[pattern]
        return True

    def match(self, topic: str) -> list[T]:
        """Values whose pattern matches the concrete `topic`, oldest first."""
        exact = self._exact.get(topic)
        if not self._wild:
            return list(exact.values()) if exact else []
        buckets = self._wild_buckets(topic.split("."))
        if not buckets:
            return list(exact.values()) if exact else []
        if not exact and len(buckets) == 1:
            # One bucket is already in the order its values were added.
            return [v for _, v in buckets[0].values()]
        found = [pair for bucket in buckets for pair in bucket.values()]
        if exact:
            seq = self._seq
            found.extend((seq[(topic, key)], v) for key, v in exact.items())
        found.sort(key=_first)
        return [v for _, v in found]

    def under(self, pattern: str) -> list[T]:
        """Values added under exactly `pattern` (not under patterns matching it), oldest first."""
        if not is_wildcard(pattern):
            return list(self._exact.get(pattern, {}).values())
        tokens = pattern.split(".")
        node: _Node[T] | None = self._root
        for token in tokens[:-1]:
            node = node.children.get(token) if node is not None else None
        if node is None:
            return []
        if tokens[-1] == ">":
            bucket = node.rest
        else:
            leaf = node.children.get(tokens[-1])
            if leaf is None:
                return []
            bucket = leaf.here
        return [v for _, v in bucket.values()]

    def _wild_buckets(self, tokens: list[str]) -> list[dict[int, tuple[int, T]]]:
        buckets: list[dict[int, tuple[int, T]]] = []
        level = [self._root]
        for token in tokens:
            deeper: list[_Node[T]] = []
            for node in level:
                if node.rest:  # ">" takes this token and all after it: at least one
                    buckets.append(node.rest)
                child = node.children.get(token)
                if child is not None:
                    deeper.append(child)
                child = node.children.get("*")
                if child is not None:
                    deeper.append(child)
            if not deeper:
                return buckets
            level = deeper
        buckets.extend(node.here for node in level if node.here)
        return buckets

    def patterns(self) -> Iterator[str]:
        """Every pattern that has at least one value."""
        yield from self._exact
        stack: list[tuple[str, _Node[T]]] = [("", self._root)]
        while stack:
            prefix, node = stack.pop()
            if node.here:
                yield prefix
            if node.rest:
                yield f"{prefix}.>" if prefix else ">"
            for token, child in node.children.items():
                stack.append((f"{prefix}.{token}" if prefix else token, child))

    def __len__(self) -> int:
        return len(self._seq)


def _first(pair: tuple[int, object]) -> int:
    return pair[0]
