"""Presence: who is subscribed to which topic, and who wants to hear about joins and leaves.

Pure bookkeeping, generic over the connection type. The hub records each
connection's concrete topics (wildcard subscriptions are not presence) when it
joins and removes them when it leaves; each call returns the connections that
asked for join/leave events on that topic, so the hub can tell them. Everything
is a dict or set lookup, so a join or a leave costs the same with 10 or 10,000
connections, apart from the events sent to the watchers; an empty topic is
removed, so memory follows the connections.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Generic, TypeVar

__all__ = ["Member", "PresenceIndex", "PresenceStats"]

C = TypeVar("C", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Member:
    """One connection on a topic: its user (a token's sub, or None), its id, since when."""

    user: str | None
    conn: str
    since: float  # seconds since the epoch

    def to_json(self) -> dict[str, object]:
        return {"user": self.user, "conn": self.conn, "since": self.since}


@dataclass(frozen=True, slots=True)
class PresenceStats:
    topics: int  # topics with at least one member
    members: int  # (topic, connection) pairs
    watchers: int  # (topic, connection) pairs that get join/leave events


class PresenceIndex(Generic[C]):
    """Members and watchers per topic."""

    def __init__(self) -> None:
        self._members: dict[str, dict[C, Member]] = {}
        self._watchers: dict[str, set[C]] = {}
        self._count = 0
        self._watching = 0

    def join(
        self, conn: C, member: Member, topics: Iterable[str], watch: bool
    ) -> list[tuple[str, list[C]]]:
        """Add `conn` to `topics`; return (topic, the other watchers to tell) per topic."""
        notify: list[tuple[str, list[C]]] = []
        for topic in topics:
            members = self._members.setdefault(topic, {})
            if conn in members:
                continue
            members[conn] = member
            self._count += 1
            watchers = self._watchers.get(topic)
            if watchers:
                notify.append((topic, list(watchers)))
            if watch:
                self._watchers.setdefault(topic, set()).add(conn)
                self._watching += 1
        return notify

    def leave(self, conn: C, topics: Iterable[str]) -> list[tuple[str, Member, list[C]]]:
        """Remove `conn` from `topics`; return (topic, its member entry, watchers to tell)."""
        events: list[tuple[str, Member, list[C]]] = []
        for topic in topics:
            members = self._members.get(topic)
            if members is None or conn not in members:
                continue
            member = members.pop(conn)
            self._count -= 1
            if not members:
                del self._members[topic]
            watchers = self._watchers.get(topic)
            if watchers is not None:
                if conn in watchers:
                    watchers.discard(conn)
                    self._watching -= 1
                if not watchers:
                    del self._watchers[topic]
                    watchers = None
            events.append((topic, member, list(watchers) if watchers else []))
        return events

    def members(self, topic: str, limit: int) -> tuple[int, list[Member]]:
        """How many are on `topic`, and the first `limit` of them to join (oldest first).

        Costs `limit`, not the topic's size: a dict keeps the order of joining.
        """
        members = self._members.get(topic)
        if not members:
            return 0, []
        return len(members), list(islice(members.values(), limit))

    def stats(self) -> PresenceStats:
        return PresenceStats(
            topics=len(self._members), members=self._count, watchers=self._watching
        )
