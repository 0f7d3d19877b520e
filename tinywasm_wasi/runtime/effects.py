"""What a guest does to the world: its subscriptions, publishes, broadcasts and log lines.

`ModuleEffects` implements the `GuestEffects` host side for one module version.
While the version is starting, what the guest does is recorded, not performed:
subscriptions are pending and publishes and broadcasts are held. `go_live()`
makes the subscriptions live on the bus (taking them over from another version
in the same bus step); `release()` then performs the held effects in order.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from bus import Bus, Subscription, TopicError, validate_pattern, validate_topic
from tinywasm_wasi.policy.grants import GrantAction, TopicGrants, is_system
from tinywasm_wasi.policy.ratelimit import LogLimiter
from tinywasm_wasi.runtime.guest_log import GuestLog

__all__ = ["Broadcast", "ModuleCounters", "ModuleEffects"]

log = logging.getLogger("tinywasm.module")

Broadcast = Callable[[str, bytes], None]
OnMessage = Callable[[str, bytes, str], bool]  # topic, payload, sender

KNOWN_TOPICS = 1024  # validated topics remembered per module (beyond it, checked each time)


@dataclass(slots=True)
class ModuleCounters:
    """What one module version did, counted in its mailbox items; read for /api/modules."""

    delivered: int = 0
    failed: int = 0
    published: int = 0
    broadcast: int = 0
    invalid_topics: int = 0
    refused: int = 0
    requests: int = 0
    traps: int = 0
    interrupted: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ModuleEffects:
    """One version's subscriptions and held effects; the host side of `GuestEffects`."""

    def __init__(
        self,
        name: str,
        bus: Bus,
        broadcast: Broadcast,
        counters: ModuleCounters,
        on_message: OnMessage,
        *,
        group: str | None = None,
        grants: TopicGrants | None = None,
    ) -> None:
        self.name = name
        self.grants = grants = grants or TopicGrants()
        self._everything = grants.everything  # then only $sys is refused: no pattern to match
        # (action, topic) -> refusal or None, for concrete topics; bounded like _known_topics
        self._decisions: dict[tuple[GrantAction, str], str | None] = {}
        # replicas = "all": its subscriptions are one member of the group named after the
        # module, so each message reaches one replica across the workers (bus/remote.py).
        self._group = group
        self._bus = bus
        self._broadcast = broadcast
        self._counters = counters
        self._on_message = on_message
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription | None] = {}
        self._held: list[tuple[str, str, bytes]] = []
        self._subs_live = False
        self._effects_live = False
        self._known_topics: dict[bytes, str] = {}  # concrete topics already validated
        self._warn_topic = LogLimiter(log)
        self._warn_refused = LogLimiter(log)
        self.guest_log = GuestLog(name)
        self.sender = f"module:{name}"  # what its publishes carry as their sender

    # -- going live and back (event loop) ----------------------------------------------------

    def go_live(
        self,
        other: ModuleEffects | None,
        check: Callable[[], None],
        also_cancel: Sequence[Subscription] = (),
    ) -> None:
        """`other`'s subscriptions (and `also_cancel`) go, these go live, in one bus step;
        `check()` runs first, under both locks, and may raise to refuse."""
        with contextlib.ExitStack() as locks:
            if other is not None:
                locks.enter_context(other._lock)
            locks.enter_context(self._lock)
            check()
            cancel = [] if other is None else [s for s in other._subs.values() if s is not None]
            cancel.extend(also_cancel)
            patterns = list(self._subs)
            subs = self._bus.swap(
                cancel,
                [(p, self._on_message) for p in patterns],
                group=self._group,
                sender=True,
            )
            self._subs = dict(zip(patterns, subs, strict=True))
            self._subs_live = True
            if other is not None:
                other._subs = dict.fromkeys(other._subs)
                other._subs_live = False

    def release(self) -> None:
        """Perform the publishes and broadcasts held since start, in order."""
        with self._lock:
            held, self._held = self._held, []
            self._effects_live = True
        for kind, topic, payload in held:
            self._perform(kind, topic, payload)

    def discard_held(self) -> None:
        """Forget the effects held since start (a version that is being rolled back)."""
        with self._lock:
            self._held.clear()

    def forget(self) -> None:
        """Throw away what a version that never went live recorded."""
        with self._lock:
            self._held.clear()
            self._subs.clear()

    def detach(self) -> None:
        """Drop every reference back to the module (a version that is closed).

        The module holds these effects and they hold its message handler, directly and
        through each (cancelled) `Subscription`: a cycle that only the cyclic collector
        could free, and the server keeps that collector off its start-up objects. Cut,
        the closed version and its compiled code (and wasmtime's memory-image memfd)
        are freed as soon as the last reference goes.
        """
        with self._lock:
            self._subs = dict.fromkeys(self._subs)
            self._subs_live = False
            self._held.clear()
            self._on_message = _closed

    def cancel_subscriptions(self, after: Callable[[], object] | None = None) -> None:
        """Take the subscriptions off the bus; `after` runs in the same bus step."""
        with self._lock:
            subs = [s for s in self._subs.values() if s is not None]
            self._subs_live = False
        if subs or after is not None:
            self._bus.swap(subs, (), after=after)

    @property
    def subscriptions(self) -> list[str]:
        with self._lock:
            return list(self._subs)

    # -- GuestEffects: called by host functions in mailbox items ----------------------------

    def publish(self, topic: bytes, payload: bytes) -> None:
        name = self._known_topics.get(topic) or self._topic("publish", topic, validate_topic)
        if name is not None and self._granted(GrantAction.PUBLISH, name):
            self._effect("publish", name, payload)

    def broadcast(self, topic: bytes, payload: bytes) -> None:
        name = self._known_topics.get(topic) or self._topic("ws_broadcast", topic, validate_topic)
        if name is not None and self._granted(GrantAction.BROADCAST, name):
            self._effect("broadcast", name, payload)

    def subscribe(self, pattern: bytes) -> None:
        name = self._topic("subscribe", pattern, validate_pattern)
        if name is None or not self._granted(GrantAction.SUBSCRIBE, name):
            return
        with self._lock:
            if name in self._subs:
                return
            if self._subs_live:
                self._subs[name] = self._bus.subscribe(
                    name, self._on_message, group=self._group, sender=True
                )
            else:
                self._subs[name] = None

    def unsubscribe(self, pattern: bytes) -> None:
        name = self._topic("unsubscribe", pattern, validate_pattern)
        if name is None:
            return
        with self._lock:
            sub = self._subs.pop(name, None)
        if sub is not None:
            sub.cancel()

    def log(self, line: str, *, stream: str) -> None:
        self.guest_log.write(line, stream=stream)

    def refuse(self, call: str, reason: str) -> None:
        self._counters.refused += 1
        self._warn_refused("module %r: %s refused: %s", self.name, call, reason)

    def _granted(self, action: GrantAction, topic: str) -> bool:
        """True if the grants allow it; otherwise refused: logged and counted like a size."""
        if self._everything and (action is GrantAction.SUBSCRIBE or not is_system(topic)):
            return True
        key = (action, topic)
        try:
            reason = self._decisions[key]
        except KeyError:
            reason = self.grants.refusal(action, topic)
            if len(self._decisions) < KNOWN_TOPICS:
                self._decisions[key] = reason
        if reason is None:
            return True
        call = "ws_broadcast" if action is GrantAction.BROADCAST else action.value
        if not is_system(topic):
            reason += f" (the module's {action.value} key in limits.toml)"
        self.refuse(call, reason)
        return False

    def _topic(self, call: str, raw: bytes, check: Callable[[str], str]) -> str | None:
        try:
            name = check(raw.decode("utf-8"))
        except (UnicodeDecodeError, TopicError) as exc:
            self._counters.invalid_topics += 1
            reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            self._warn_topic(
                "module %r: %s with an invalid topic ignored: %s", self.name, call, reason
            )
            return None
        if check is validate_topic and len(self._known_topics) < KNOWN_TOPICS:
            self._known_topics[raw] = name  # a concrete topic: checked once, then looked up
        return name

    def _effect(self, kind: str, topic: str, payload: bytes) -> None:
        if not self._effects_live:  # once live, always live: the lock is for the held list
            with self._lock:
                if not self._effects_live:
                    self._held.append((kind, topic, payload))
                    return
        self._perform(kind, topic, payload)

    def _perform(self, kind: str, topic: str, payload: bytes) -> None:
        if kind == "publish":
            self._counters.published += 1
            self._bus.publish_checked(topic, payload, self.sender)  # checked in `publish`
        else:
            self._counters.broadcast += 1
            self._broadcast(topic, payload)


def _closed(_topic: str, _payload: bytes, _sender: str = "") -> bool:
    """The message handler of a closed version: refuses (it is no longer subscribed)."""
    return False
