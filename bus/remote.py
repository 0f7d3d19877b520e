"""The seam between the in-process bus and a remote one: subjects, interest, the protocol.

Pure: no I/O. Topics map one to one onto NATS subjects under a prefix, wildcards
included (``chat.*`` is ``tw.t.chat.*``): our topic rules are NATS's subject rules
with a length cap. Bus topics live under `TOPIC_PREFIX`, WebSocket broadcasts
under `BROADCAST_PREFIX`, so a module's ``ws_broadcast`` on ``chat`` and a bus
publish on ``chat`` never meet.

`Interest` counts the local subscribers of each pattern, so a process subscribes
to a subject once, when its first local subscriber of that pattern arrives, and
drops it when the last one leaves.

**Stamps.** A bus message sent by a process carries, in its NATS reply subject
(nothing answers bus messages), ``tw.seq.<publisher>.<n>``: who sent it and its
sequence number there (a module moving between processes is handed every message
exactly once by them, policy/handover.py), then the served mark. A reply subject
costs nothing noticeable to send and read; a NATS header costs 2-4x the hops/s.

**Groups.** The replicas of a module that runs in every process (``replicas =
"all"``) subscribe as a group named after it: across processes, NATS gives each
message to one member of the group (the NATS queue group ``tw.<module>``). A
process that published a message and served its own member of a group names the
group in the stamp's tail (`served_mark`), and the member NATS picks elsewhere
leaves it (`was_served`): each message reaches exactly one replica of each group,
wherever it was published, and the publisher's own first.

**Senders.** Who published a message (``user:<sub>``, ``conn:c<N>``, ``module:<name>``)
rides last in the stamp as one token, ``=`` then the sender's UTF-8 in unpadded
base64url (`sender_token`, `read_sender`): no group token starts with ``=``, and
base64url has no ``.``. A sender over `MAX_SENDER` bytes is not carried (the other
side sees none), never cut: a cut sender could be another user's prefix.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from bus.topics import TopicIndex

__all__ = [
    "BROADCAST_PREFIX",
    "MAX_SENDER",
    "NO_STAMP",
    "QUEUE_PREFIX",
    "STAMP_PREFIX",
    "TOPIC_PREFIX",
    "Interest",
    "Remote",
    "Stamp",
    "Unowned",
    "from_subject",
    "queue_for",
    "read_sender",
    "read_stamp",
    "sender_token",
    "served_mark",
    "stamp_reply",
    "to_subject",
    "was_served",
]

TOPIC_PREFIX = "tw.t."  # bus topics
BROADCAST_PREFIX = "tw.b."  # ws_broadcast topics, for every process's WebSocket hub
STAMP_PREFIX = "tw.seq."  # a bus message's reply subject: tw.seq.<publisher>.<n>[<served mark>]
QUEUE_PREFIX = "tw."  # a group's NATS queue group is tw.<group>
SENDER_MARK = "="  # the stamp's last token, when the message has a sender
MAX_SENDER = 512  # bytes of sender carried across processes; a longer one is not carried

Stamp = tuple[str, int]
"""(publisher id, sequence number) of a bus message; ("", 0) when it came without one."""

NO_STAMP: Stamp = ("", 0)


def queue_for(group: str) -> str:
    """The NATS queue group of a group of replicas."""
    return QUEUE_PREFIX + group


def served_mark(groups: Iterable[str]) -> str:
    """The stamp's tail naming the groups served where a message was published: one
    ``.<group>`` each, sorted, a ``.`` in a name written ``~`` (module names have no
    ``~``, so two names never give one token); "" for none."""
    return "".join(sorted("." + g.replace(".", "~") for g in groups))


def sender_token(sender: str) -> str:
    """The stamp's tail naming `sender` (``.=<base64url>``); "" for none or one over
    `MAX_SENDER` bytes."""
    raw = sender.encode()
    if not raw or len(raw) > MAX_SENDER:
        return ""
    return "." + SENDER_MARK + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def stamp_reply(publisher: str, seq: int, mark: str = "") -> str:
    """The reply subject of a bus message: its stamp, then its `served_mark` and
    `sender_token`."""
    return f"{STAMP_PREFIX}{publisher}.{seq}{mark}"


def read_sender(reply: str | None) -> str:
    """The sender named in a reply subject's last token; "" for none or a malformed one."""
    at = reply.rfind("." + SENDER_MARK) if reply else -1
    if at < 0 or not reply or not reply.startswith(STAMP_PREFIX):
        return ""
    encoded = reply[at + 2 :]
    if "." in encoded:  # not the last token
        return ""
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        return raw.decode() if 0 < len(raw) <= MAX_SENDER else ""
    except (binascii.Error, ValueError):
        return ""


def read_stamp(reply: str | None) -> Stamp:
    """The stamp in a reply subject; `NO_STAMP` for none, sequence 0 or anything else."""
    if not reply or not reply.startswith(STAMP_PREFIX):
        return NO_STAMP
    publisher, _, rest = reply[len(STAMP_PREFIX) :].partition(".")
    seq, _, _mark = rest.partition(".")
    try:
        n = int(seq)
    except ValueError:
        return NO_STAMP
    return (publisher, n) if publisher and n > 0 else NO_STAMP


def was_served(reply: str | None, group: str) -> bool:
    """True if the reply subject's served mark names `group`."""
    if not reply or not reply.startswith(STAMP_PREFIX):
        return False
    return group.replace(".", "~") in reply[len(STAMP_PREFIX) :].split(".")[2:]


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

    def forward(
        self, topic: str, payload: bytes, sender: str = "", served: Iterable[str] = ()
    ) -> None:
        """Send a message published here (by `sender`, "" if the server) to the others;
        `served` names the groups whose member here already got it."""

    def want(self, pattern: str, group: str | None = None) -> None:
        """The first local subscriber of `pattern` (in `group`) arrived: receive it from
        the others (for a group: as one member of the group's NATS queue group)."""

    def unwant(self, pattern: str, group: str | None = None) -> None:
        """The last local subscriber of `pattern` (in `group`) left."""


K = TypeVar("K", bound=Hashable)


class Interest(Generic[K]):
    """Reference counts of subscription patterns (or of (pattern, group) pairs). Not
    thread-safe: the owner serialises."""

    def __init__(self) -> None:
        self._counts: dict[K, int] = {}

    def add(self, pattern: K) -> bool:
        """Count one more subscriber of `pattern`; True if it is the first."""
        count = self._counts.get(pattern, 0)
        self._counts[pattern] = count + 1
        return count == 0

    def remove(self, pattern: K) -> bool:
        """Count one subscriber fewer; True if it was the last. Unknown patterns: False."""
        count = self._counts.get(pattern, 0)
        if count <= 1:
            return self._counts.pop(pattern, None) is not None
        self._counts[pattern] = count - 1
        return False

    def __contains__(self, pattern: object) -> bool:
        return pattern in self._counts

    def __iter__(self) -> Iterator[K]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)


class Unowned:
    """Counts what this process publishes for modules that run nowhere.

    With several workers, a module whose worker died runs nowhere until another
    worker has started it; a message published for it meanwhile reaches no
    subscriber and is lost (NATS keeps nothing). `set` names those modules with the
    patterns they had subscribed to; `count(topic)`, called for each message sent
    to the other processes (under the bus lock), adds one for each module the topic
    matches, however many of its patterns match. `set` replaces the table in one step.
    """

    def __init__(self) -> None:
        self._index: TopicIndex[str] | None = None
        self.lost: dict[str, int] = {}  # module -> messages published for it while unowned

    @property
    def active(self) -> bool:
        """True while some module is unowned."""
        return self._index is not None

    def set(self, patterns: Mapping[str, Iterable[str]]) -> None:
        """The modules nobody runs now, each with the patterns it subscribed to."""
        index: TopicIndex[str] = TopicIndex()
        for name, subscribed in patterns.items():
            for pattern in subscribed:
                index.add(pattern, name)
        self._index = index if len(index) else None

    def count(self, topic: str) -> None:
        index = self._index
        if index is not None:
            for name in set(index.match(topic)):
                self.lost[name] = self.lost.get(name, 0) + 1
