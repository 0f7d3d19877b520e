"""The in-process bus: publish to a topic, subscribe with a pattern.

Delivery is a synchronous call of each matching subscriber's handler, in the
publisher's thread, under one lock. Handlers must not block: they hand the
message to a queue (a module's mailbox, a client's send queue) and return.
Holding the lock across a publish gives every subscriber one total order of
messages, so each sees a topic's messages in publish order even when several
threads publish at once. A handler returns False when its queue refused the
message; the bus counts that as dropped (the handler itself logs why).

With a `Remote` (bus/remote.py; bus/nats.py is the NATS one), delivery is local
first: the local subscribers are called, then the message is forwarded, still
under the lock, so the remote side sees this process's publishes in the order
they were made here. Messages from other processes come in through
`deliver_remote`, which calls only the local subscribers of the pattern the
message arrived for, and never forwards: no message goes round twice.

A subscription in a `group` (the replicas of a module that runs in every
process) gets what is published here, and from other processes only what NATS
gives this process's member of the group (`deliver_group`), which is only what
no member got where it was published (bus/remote.py, "Groups").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bus.exceptions import BusClosedError
from bus.remote import Interest, Remote
from bus.topics import TopicIndex, validate_pattern, validate_topic

__all__ = ["Bus", "BusStats", "Handler", "Subscription"]

log = logging.getLogger("tinywasm.bus")

Handler = Callable[..., "bool | None"]
"""Called with (topic, payload), or (topic, payload, sender) for a subscription made with
``sender=True``; return False if the message could not be queued."""


@dataclass(frozen=True, slots=True)
class BusStats:
    """Counters since the bus was created."""

    published: int
    delivered: int
    dropped: int
    subscriptions: int


class Subscription:
    """One live (pattern, handler) pair. `cancel()` is safe to call twice."""

    __slots__ = ("_bus", "delivered", "dropped", "group", "handler", "pattern", "sender")

    def __init__(
        self,
        bus: Bus,
        pattern: str,
        handler: Handler,
        group: str | None = None,
        sender: bool = False,
    ) -> None:
        self._bus: Bus | None = bus
        self.pattern = pattern
        self.handler = handler
        # The handler takes a third argument: who published the message ("" if unknown).
        self.sender = sender
        # One of a group of replicas (a module that runs in every worker): across
        # processes, each message reaches one member of the group (bus/remote.py).
        self.group = group
        self.delivered = 0
        self.dropped = 0

    @property
    def active(self) -> bool:
        return self._bus is not None

    def cancel(self) -> None:
        """Stop delivery to this subscription; no call of its handler starts afterwards."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus._remove(self)

    def __repr__(self) -> str:
        state = "active" if self.active else "cancelled"
        return f"<Subscription {self.pattern!r} {state}>"


class Bus:
    """An in-process publish/subscribe bus with NATS-style wildcards.

    All methods are thread-safe. It is the seam where a distributed backend
    plugs in: `publish`, `subscribe`, `swap`, `stats` and `close` are the
    whole surface the server uses.
    """

    def __init__(self, remote: Remote | None = None) -> None:
        """Create a bus; with `remote`, publishes also reach (and come from) other processes."""
        self._lock = threading.Lock()
        self._remote = remote
        self._interest: Interest[tuple[str, str | None]] = Interest()
        self._grouped = 0  # subscriptions in a group now: a publish names the groups it served
        self._index: TopicIndex[Subscription] = TopicIndex()
        self._published = 0
        self._delivered = 0
        self._dropped = 0
        self._closed = False

    def publish(self, topic: str, payload: bytes, sender: str = "") -> int:
        """Deliver `payload` to every subscription matching `topic`.

        `sender` says who published it (``user:<sub>``, ``conn:<id>``, ``module:<name>``;
        "" for the server itself); the caller vouches for it, never the publisher.
        Returns how many handlers accepted it. Raises TopicError for an
        invalid topic and BusClosedError after close().
        """
        validate_topic(topic)
        return self.publish_checked(topic, payload, sender)

    def publish_checked(self, topic: str, payload: bytes, sender: str = "") -> int:
        """`publish` for a topic the caller has already passed through `validate_topic`."""
        with self._lock:
            if self._closed:
                raise BusClosedError("cannot publish: the bus is closed")
            self._published += 1
            subs = self._index.match(topic)
            accepted = self._deliver(subs, topic, payload, sender)
            if self._remote is not None:
                if self._grouped:
                    served = {s.group for s in subs if s.group is not None}
                    self._remote.forward(topic, payload, sender, served)
                else:
                    self._remote.forward(topic, payload, sender)
            return accepted

    def deliver_remote(self, pattern: str, topic: str, payload: bytes, sender: str = "") -> int:
        """Deliver a message from another process to the local subscribers of `pattern`.

        The remote side subscribed once per pattern, so a message matching two local
        patterns arrives once for each: each arrival serves its own pattern's
        subscribers. Never forwarded. After close() it is ignored (returns 0).
        """
        with self._lock:
            if self._closed:
                return 0
            subs = [sub for sub in self._index.under(pattern) if sub.group is None]
            return self._deliver(subs, topic, payload, sender)

    def deliver_group(
        self, pattern: str, group: str, topic: str, payload: bytes, sender: str = ""
    ) -> int:
        """Deliver a message NATS gave this process's member of `group` (subscribed with
        `pattern`) to the local subscribers of that pattern in that group. Never forwarded."""
        with self._lock:
            if self._closed:
                return 0
            subs = [sub for sub in self._index.under(pattern) if sub.group == group]
            return self._deliver(subs, topic, payload, sender)

    def _deliver(
        self, subs: list[Subscription], topic: str, payload: bytes, sender: str = ""
    ) -> int:
        """Call each handler (under the lock); count what was accepted and what dropped."""
        accepted = 0
        for sub in subs:
            try:
                if sub.sender:
                    ok = sub.handler(topic, payload, sender) is not False
                else:
                    ok = sub.handler(topic, payload) is not False
            except Exception:
                log.exception("subscriber %r raised; message on %r dropped", sub.pattern, topic)
                ok = False
            if ok:
                sub.delivered += 1
                accepted += 1
            else:
                sub.dropped += 1
                self._dropped += 1
        self._delivered += accepted
        return accepted

    def subscribe(
        self, pattern: str, handler: Handler, *, group: str | None = None, sender: bool = False
    ) -> Subscription:
        """Call `handler(topic, payload)` for every message matching `pattern`.

        With `group`, as one member of that group (see `Subscription.group`).
        With `sender`, the handler is called as `handler(topic, payload, sender)`.
        """
        return self.swap((), [(pattern, handler)], group=group, sender=sender)[0]

    def swap(
        self,
        cancel: Iterable[Subscription],
        add: Iterable[tuple[str, Handler]],
        *,
        group: str | None = None,
        after: Callable[[], object] | None = None,
        sender: bool = False,
    ) -> list[Subscription]:
        """Cancel some subscriptions and create others in one step.

        No publish sees a state in between: a message goes either to the old
        set or to the new one, never to both and never to neither. This is
        the cut-over of a module swap. `after` runs in the same step (under the
        lock): what it reads is exactly the state at the cut.
        """
        new_specs = [(validate_pattern(p), h) for p, h in add]
        with self._lock:
            if self._closed:
                raise BusClosedError("cannot subscribe: the bus is closed")
            for sub in cancel:
                if sub._bus is self:
                    sub._bus = None
                    self._unindex(sub)
            created = []
            for pattern, handler in new_specs:
                sub = Subscription(self, pattern, handler, group, sender)
                self._index.add(pattern, sub)
                if group is not None:
                    self._grouped += 1
                if self._interest.add((pattern, group)) and self._remote is not None:
                    self._remote.want(pattern, group)
                created.append(sub)
            if after is not None:
                after()
            return created

    def _unindex(self, sub: Subscription) -> None:
        if not self._index.remove(sub.pattern, sub):
            return
        if sub.group is not None:
            self._grouped -= 1
        if self._interest.remove((sub.pattern, sub.group)) and self._remote is not None:
            self._remote.unwant(sub.pattern, sub.group)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._unindex(sub)

    def stats(self) -> BusStats:
        """A snapshot of the counters."""
        with self._lock:
            return BusStats(self._published, self._delivered, self._dropped, len(self._index))

    def close(self) -> None:
        """Refuse further publishes and subscriptions. Safe to call twice."""
        with self._lock:
            self._closed = True
