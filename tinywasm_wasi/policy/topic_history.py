"""Per-topic message history for browsers: offsets, epochs, bounded logs and recovery.

Pure: time comes in as an argument (`now`, monotonic seconds), epochs from an
injected factory. The hub feeds it every broadcast and asks it what a
reconnecting client missed.

Each topic with history keeps its last `size` messages for `ttl` seconds. Every
message gets the next offset (1, 2, ...). The topic's epoch names one unbroken
run of offsets: it changes when the history is lost (a restart, or the topic
evicted to keep memory bounded), so a client holding an offset from another
epoch knows its position means nothing here.

A client that has seen everything up to offset N of epoch E asks `recover`:
if E is the current epoch and every message after N is still kept, it gets them
(`recovered` true), otherwise none (`recovered` false) and it goes on live.

`HistoryStore` is the seam: the hub needs only it. `MemoryHistory` keeps
everything in this process; a store backed by NATS JetStream streams (one
stream per rule, the stream sequence as offset, the stream's creation time as
epoch) would implement the same calls so that any worker could recover any
client.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from bus.exceptions import TopicError
from bus.topics import matches, validate_pattern, validate_topic

__all__ = [
    "ENTRY_OVERHEAD",
    "Entry",
    "HistoryRule",
    "HistoryStats",
    "HistoryStore",
    "MemoryHistory",
    "Position",
    "Recovery",
    "TopicLog",
    "parse_history_rule",
    "parse_position",
    "parse_since",
]

ENTRY_OVERHEAD = 96  # bytes counted per kept message beside its payload (object, deque slot)
_TTL_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_SIZE = 100_000  # messages one topic may keep


@dataclass(frozen=True, slots=True)
class HistoryRule:
    """Topics matching `pattern` keep their last `size` messages for `ttl` seconds."""

    pattern: str
    size: int
    ttl: float

    def to_json(self) -> dict[str, object]:
        return {"pattern": self.pattern, "size": self.size, "ttl": self.ttl}


def parse_history_rule(text: str) -> HistoryRule:
    """``pattern:size:ttl``, e.g. ``chat.>:100:300s`` (ttl in s, m or h; a bare number is s).

    Raises:
        ValueError: the text says what is wrong and gives an example.
    """
    example = "e.g. 'chat.>:100:300s' (pattern, messages kept, how long)"
    parts = text.strip().rsplit(":", 2)
    if len(parts) != 3:
        raise ValueError(f"history rule {text!r} is not pattern:size:ttl, {example}")
    pattern, size_text, ttl_text = parts
    try:
        validate_pattern(pattern)
    except TopicError as exc:
        raise ValueError(f"history rule {text!r}: {exc}") from None
    try:
        size = int(size_text)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"history rule {text!r}: size must be 1 to {MAX_SIZE} messages, {example}")
    unit = ttl_text[-1:].lower() if ttl_text[-1:].isalpha() else ""
    try:
        ttl = float(ttl_text[: len(ttl_text) - len(unit)]) * _TTL_UNITS[unit]
    except (KeyError, ValueError):
        ttl = -1.0
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(
            f"history rule {text!r}: ttl must be a time more than zero like 300s, 5m or 1h, "
            f"{example}"
        )
    return HistoryRule(pattern=pattern, size=size, ttl=ttl)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a reader is: the last offset it has seen, in the topic's epoch."""

    offset: int
    epoch: str

    def __str__(self) -> str:
        return f"{self.offset}:{self.epoch}"


def parse_position(text: str) -> Position:
    """``offset:epoch``, e.g. ``41:9f3a2c1b``.

    Raises:
        ValueError: not two parts, or the offset is not a whole number of zero or more.
    """
    offset_text, sep, epoch = text.partition(":")
    if not sep or not epoch or not offset_text.isdigit() or len(offset_text) > 18:
        raise ValueError(
            f"position {text!r} is not offset:epoch, e.g. 41:9f3a2c1b (from the offset and "
            "epoch of the last message received)"
        )
    return Position(int(offset_text), epoch)


def parse_since(text: str) -> tuple[str | None, Position]:
    """A ``since=`` value: ``offset:epoch`` (the connection's one topic) or ``topic:offset:epoch``.

    Raises:
        ValueError: the position or the topic is not valid.
    """
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        topic = parts[0]
        try:
            validate_topic(topic)
        except TopicError as exc:
            raise ValueError(f"since={text!r}: {exc}") from None
        return topic, parse_position(f"{parts[1]}:{parts[2]}")
    return None, parse_position(text)


class Entry(NamedTuple):
    """One kept message (a named tuple: made once per broadcast on a topic with history,
    and a frozen dataclass cost half of `MemoryHistory.append` just to build)."""

    offset: int
    time: float  # monotonic seconds when it was kept
    payload: bytes
    publisher: str | None = None

    @property
    def cost(self) -> int:
        return len(self.payload) + ENTRY_OVERHEAD


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a reader missed: `recovered` false means its position could not be served."""

    recovered: bool
    entries: tuple[Entry, ...]
    position: Position  # the topic's position now (the last entry's offset)


class TopicLog:
    """One topic's kept messages: at most `rule.size`, none older than `rule.ttl`."""

    __slots__ = ("bytes", "entries", "epoch", "rule", "top")

    def __init__(self, rule: HistoryRule, epoch: str) -> None:
        self.rule = rule
        self.epoch = epoch
        self.top = 0  # offset of the last message ever appended (0: none yet)
        self.entries: deque[Entry] = deque()
        self.bytes = 0

    @property
    def position(self) -> Position:
        return Position(self.top, self.epoch)

    def append(self, payload: bytes, now: float, publisher: str | None = None) -> Entry:
        self.top += 1
        entry = Entry(self.top, now, payload, publisher)
        self.entries.append(entry)
        self.bytes += len(payload) + ENTRY_OVERHEAD  # entry.cost, without the call
        if len(self.entries) > self.rule.size:
            self.bytes -= self.entries.popleft().cost
        self.expire(now)
        return entry

    def expire(self, now: float) -> int:
        """Drop the messages older than the ttl; return the bytes freed."""
        freed = 0
        cutoff = now - self.rule.ttl
        entries = self.entries
        while entries and entries[0].time <= cutoff:
            freed += entries.popleft().cost
        self.bytes -= freed
        return freed

    def after(self, offset: int, limit: int | None = None) -> tuple[Entry, ...]:
        """Kept entries with an offset above `offset`, oldest first; the last `limit` of them."""
        if not self.entries or offset >= self.top:
            return ()
        first = self.entries[0].offset
        skip = max(0, offset - first + 1)
        count = len(self.entries) - skip
        if limit is not None and count > limit:
            skip += count - limit
        return tuple(self.entries[i] for i in range(skip, len(self.entries)))

    def recover(self, since: Position) -> Recovery:
        """The entries after `since`, if this log still holds all of them (`expire` first)."""
        position = self.position
        if since.epoch != self.epoch or since.offset > self.top:
            return Recovery(False, (), position)
        if since.offset == self.top:
            return Recovery(True, (), position)
        first = self.entries[0].offset if self.entries else self.top + 1
        if since.offset < first - 1:
            return Recovery(False, (), position)  # some of what it missed is gone
        return Recovery(True, self.after(since.offset), position)


@dataclass(frozen=True, slots=True)
class HistoryStats:
    """What the history holds now, and its bounds."""

    topics: int
    messages: int
    bytes: int
    max_topics: int
    max_bytes: int
    evicted_topics: int
    rules: list[dict[str, object]] = field(default_factory=list)


class HistoryStore(Protocol):
    """What the hub needs of a history: the seam for another backend (JetStream)."""

    def append(
        self, topic: str, payload: bytes, now: float, publisher: str | None = None
    ) -> tuple[Entry, str] | None:
        """Keep a broadcast; return it and its epoch, or None if `topic` keeps no history."""
        ...

    def recover(self, topic: str, since: Position | None, now: float) -> Recovery | None:
        """What a reader at `since` missed (None `since`: nothing, just the position now);
        None if `topic` keeps no history."""
        ...

    def latest(self, topic: str, now: float) -> tuple[Entry, str] | None:
        """The last kept message and its epoch, if any."""
        ...

    def read(
        self, topic: str, after: int, limit: int, now: float
    ) -> tuple[Position, tuple[Entry, ...]] | None:
        """Up to `limit` kept messages after offset `after` (the newest ones); None: no history."""
        ...

    def stats(self) -> HistoryStats: ...


class MemoryHistory:
    """Every topic's log in this process, bounded by topic count and bytes (least recent go)."""

    def __init__(
        self,
        rules: Sequence[HistoryRule],
        *,
        new_epoch: Callable[[], str],
        max_topics: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if max_topics < 1 or max_bytes < 1:
            raise ValueError("max_topics and max_bytes must be at least 1")
        self.rules = tuple(rules)
        self._new_epoch = new_epoch
        self.max_topics = max_topics
        self.max_bytes = max_bytes
        self._logs: OrderedDict[str, TopicLog] = OrderedDict()  # least recently appended first
        self._rule_of: dict[str, HistoryRule | None] = {}  # topic -> its rule (bounded cache)
        self._bytes = 0
        self._evicted = 0

    def rule_for(self, topic: str) -> HistoryRule | None:
        """The first rule whose pattern matches `topic`."""
        try:
            return self._rule_of[topic]
        except KeyError:
            pass
        rule = next((r for r in self.rules if matches(r.pattern, topic)), None)
        if len(self._rule_of) >= 4 * self.max_topics:
            self._rule_of.clear()
        self._rule_of[topic] = rule
        return rule

    def _log(self, topic: str, create: bool) -> TopicLog | None:
        log = self._logs.get(topic)
        if log is None and create:
            rule = self.rule_for(topic)
            if rule is None:
                return None
            log = self._logs[topic] = TopicLog(rule, self._new_epoch())
            if len(self._logs) > self.max_topics:
                self._evict()
        return log

    def _evict(self) -> None:
        _, log = self._logs.popitem(last=False)
        self._bytes -= log.bytes
        self._evicted += 1

    def append(
        self, topic: str, payload: bytes, now: float, publisher: str | None = None
    ) -> tuple[Entry, str] | None:
        if not self.rules:
            return None
        log = self._log(topic, create=True)
        if log is None:
            return None
        self._logs.move_to_end(topic)
        before = log.bytes
        entry = log.append(payload, now, publisher)
        self._bytes += log.bytes - before
        while self._bytes > self.max_bytes and len(self._logs) > 1:
            self._evict()  # the least recent topic goes whole: its epoch ends with it
        if self._bytes > self.max_bytes:  # one topic alone is over: it keeps what fits
            while log.entries and log.bytes > self.max_bytes:
                freed = log.entries.popleft().cost
                log.bytes -= freed
                self._bytes -= freed
        return entry, log.epoch

    def _expired(self, topic: str, now: float) -> TopicLog | None:
        log = self._log(topic, create=True)
        if log is not None:
            self._bytes -= log.expire(now)
        return log

    def recover(self, topic: str, since: Position | None, now: float) -> Recovery | None:
        log = self._expired(topic, now)
        if log is None:
            return None
        if since is None:
            return Recovery(False, (), log.position)
        return log.recover(since)

    def latest(self, topic: str, now: float) -> tuple[Entry, str] | None:
        log = self._expired(topic, now)
        if log is None or not log.entries:
            return None
        return log.entries[-1], log.epoch

    def read(
        self, topic: str, after: int, limit: int, now: float
    ) -> tuple[Position, tuple[Entry, ...]] | None:
        log = self._expired(topic, now)
        if log is None:
            return None
        return log.position, log.after(after, limit)

    def stats(self) -> HistoryStats:
        return HistoryStats(
            topics=len(self._logs),
            messages=sum(len(log.entries) for log in self._logs.values()),
            bytes=self._bytes,
            max_topics=self.max_topics,
            max_bytes=self.max_bytes,
            evicted_topics=self._evicted,
            rules=[rule.to_json() for rule in self.rules],
        )

    def topics(self) -> Iterable[str]:
        return self._logs.keys()
