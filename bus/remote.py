"""The seam between the in-process bus and a remote one: subjects, interest, the protocol.

Pure: no I/O. Topics map one to one onto NATS subjects under a prefix, wildcards
included (``chat.*`` is ``tw.t.chat.*``): our topic rules are NATS's subject rules
with a length cap. Bus topics live under `TOPIC_PREFIX`, WebSocket broadcasts
under `BROADCAST_PREFIX`, so a module's ``ws_broadcast`` on ``chat`` and a bus
publish on ``chat`` never meet.

`Interest` counts the local subscribers of each pattern, so a process subscribes
to a subject once, when its first local subscriber of that pattern arrives, and
drops it when the last one leaves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

__all__ = [
    "BROADCAST_PREFIX",
    "TOPIC_PREFIX",
    "Interest",
    "Remote",
    "from_subject",
    "to_subject",
]

TOPIC_PREFIX = "tw.t."  # bus topics
BROADCAST_PREFIX = "tw.b."  # ws_broadcast topics, for every process's WebSocket hub


def to_subject(prefix: str, topic: str) -> str:
    """The NATS subject for a topic or pattern (already valid) under `prefix`."""
    return prefix + topic


def from_subject(prefix: str, subject: str) -> str:
    """The topic of a subject under `prefix`.

    Raises:
        ValueError: `subject` is not under `prefix`, or is the prefix alone.
    """
    if not subject.startswith(prefix) or len(subject) == len(prefix):
        raise ValueError(f"subject {subject!r} is not a topic under {prefix!r}")
    return subject[len(prefix) :]


class Remote(Protocol):
    """What a bus (or hub) tells the remote side. Called under the caller's lock: never blocks."""

    def forward(self, topic: str, payload: bytes, sender: str = "") -> None:
        """Send a message published here (by `sender`, "" if the server) to the others."""

    def want(self, pattern: str) -> None:
        """The first local subscriber of `pattern` arrived: receive it from the others."""

    def unwant(self, pattern: str) -> None:
        """The last local subscriber of `pattern` left."""


class Interest:
    """Reference counts of subscription patterns. Not thread-safe: the owner serialises."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, pattern: str) -> bool:
        """Count one more subscriber of `pattern`; True if it is the first."""
        count = self._counts.get(pattern, 0)
        self._counts[pattern] = count + 1
        return count == 0

    def remove(self, pattern: str) -> bool:
        """Count one subscriber fewer; True if it was the last. Unknown patterns: False."""
        count = self._counts.get(pattern, 0)
        if count <= 1:
            return self._counts.pop(pattern, None) is not None
        self._counts[pattern] = count - 1
        return False

    def __contains__(self, pattern: object) -> bool:
        return pattern in self._counts

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)
