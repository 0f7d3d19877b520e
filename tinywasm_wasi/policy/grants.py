"""Topic grants: which topics a module or a connection may publish, subscribe or broadcast to.

Pure. A grant is a list of topic patterns with the bus's wildcards (``chat``,
``chat.*``, ``users.>``). A concrete topic is allowed when a pattern matches it;
a subscription pattern is allowed when one grant pattern covers every topic the
subscription could match (`covers`), so ``chat.>`` admits a subscription to
``chat.*`` but ``chat.*`` does not admit ``chat.>``.

Topics whose first token is ``$sys`` are reserved for the server: no module and
no browser may publish or broadcast to them, whatever its grants say. The
server's own publishes (its status feed, for example) go to the bus directly and
are not checked here. Reading them (subscribing) follows the grants.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bus.exceptions import TopicError
from bus.topics import validate_pattern

__all__ = [
    "ALL",
    "SYSTEM_TOKEN",
    "GrantAction",
    "TopicGrants",
    "covers",
    "is_system",
    "parse_patterns",
]

SYSTEM_TOKEN = "$sys"
ALL: tuple[str, ...] = (">",)


class GrantAction(StrEnum):
    """What a grant list is for."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    BROADCAST = "broadcast"


def is_system(topic: str) -> bool:
    """True if `topic` (or pattern) is in the reserved ``$sys`` space."""
    return topic == SYSTEM_TOKEN or topic.startswith(SYSTEM_TOKEN + ".")


def covers(grant: str, pattern: str) -> bool:
    """True if every topic `pattern` matches is matched by `grant` (both valid patterns).

    For a concrete topic this is the bus's `matches`.
    """
    g = grant.split(".")
    p = pattern.split(".")
    for i, token in enumerate(g):
        if token == ">":
            return i < len(p)  # '>' takes one or more tokens, and so does a '>' in `pattern`
        if i >= len(p):
            return False
        if token == "*":
            if p[i] == ">":
                return False  # one token does not cover one or more
        elif token != p[i]:
            return False
    return len(g) == len(p)


def parse_patterns(values: object, where: str) -> tuple[str, ...]:
    """A grant list from configuration: a list of valid patterns (may be empty).

    Raises:
        ValueError: not a list of strings, or a pattern is invalid; the message starts with `where`.
    """
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise ValueError(f'{where}: expected a list of topic patterns, e.g. ["chat", "events.>"]')
    patterns: list[str] = []
    for value in values:
        try:
            patterns.append(validate_pattern(value))
        except TopicError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tuple(dict.fromkeys(patterns))


@dataclass(frozen=True, slots=True)
class TopicGrants:
    """Patterns a holder may publish to, subscribe to and broadcast to. Default: everything."""

    publish: tuple[str, ...] = ALL
    subscribe: tuple[str, ...] = ALL
    broadcast: tuple[str, ...] = ALL

    def patterns(self, action: GrantAction) -> tuple[str, ...]:
        if action is GrantAction.PUBLISH:
            return self.publish
        if action is GrantAction.SUBSCRIBE:
            return self.subscribe
        return self.broadcast

    def refusal(self, action: GrantAction, topic: str) -> str | None:
        """None if `action` on `topic` (a topic, or a pattern to subscribe) is allowed, else why."""
        if action is not GrantAction.SUBSCRIBE and is_system(topic):
            return f"{topic!r} is in {SYSTEM_TOKEN}.>, which only the server may write to"
        allowed = self.patterns(action)
        for grant in allowed:
            if covers(grant, topic):
                return None
        if not allowed:
            return f"{topic!r}: the {action.value} grant is empty"
        return f"{topic!r} is outside the {action.value} grant ({', '.join(allowed)})"

    @property
    def everything(self) -> bool:
        return self.publish == ALL and self.subscribe == ALL and self.broadcast == ALL

    def to_json(self) -> dict[str, list[str]]:
        return {
            "publish": list(self.publish),
            "subscribe": list(self.subscribe),
            "broadcast": list(self.broadcast),
        }
