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


class TopicIndex(Generic[T]):
    """Map subscription patterns to values and find the values for a topic.

    Exact patterns are a dict lookup; wildcard patterns are scanned. Values are
    returned in the order they were added. Adding the same (pattern, value)
    twice keeps one entry. Not thread-safe: the owner serialises access.
    """

    def __init__(self) -> None:
        self._exact: dict[str, list[T]] = {}
        self._wild: list[tuple[str, list[str], T]] = []
        self._seq: dict[tuple[str, int], int] = {}
        self._next = 0

    def add(self, pattern: str, value: T) -> bool:
        """Add `value` under `pattern`; return False if it was already there."""
        key = (pattern, id(value))
        if key in self._seq:
            return False
        self._seq[key] = self._next
        self._next += 1
        if is_wildcard(pattern):
            self._wild.append((pattern, pattern.split("."), value))
        else:
            self._exact.setdefault(pattern, []).append(value)
        return True

    def remove(self, pattern: str, value: T) -> bool:
        """Remove `value` from `pattern`; return False if it was not there."""
        if self._seq.pop((pattern, id(value)), None) is None:
            return False
        if is_wildcard(pattern):
            self._wild = [w for w in self._wild if not (w[0] == pattern and w[2] is value)]
        else:
            values = self._exact[pattern]
            values[:] = [v for v in values if v is not value]
            if not values:
                del self._exact[pattern]
        return True

    def match(self, topic: str) -> list[T]:
        """Values whose pattern matches the concrete `topic`, oldest first."""
        exact = self._exact.get(topic)
        if not self._wild:
            return list(exact) if exact else []
        tokens = topic.split(".")
        found = [(p, v) for p, toks, v in self._wild if _match_tokens(toks, tokens)]
        if exact:
            found.extend((topic, v) for v in exact)
        if len(found) > 1:
            found.sort(key=lambda pv: self._seq[(pv[0], id(pv[1]))])
        return [v for _, v in found]

    def under(self, pattern: str) -> list[T]:
        """Values added under exactly `pattern` (not under patterns matching it), oldest first."""
        if not is_wildcard(pattern):
            return list(self._exact.get(pattern, ()))
        return [v for p, _, v in self._wild if p == pattern]

    def patterns(self) -> Iterator[str]:
        """Every pattern that has at least one value."""
        yield from self._exact
        seen: set[str] = set()
        for pattern, _, _ in self._wild:
            if pattern not in seen:
                seen.add(pattern)
                yield pattern

    def __len__(self) -> int:
        return len(self._seq)
