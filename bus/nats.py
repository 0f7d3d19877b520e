"""The bus over a real NATS server (nats-py): one connection per process, shared.

`NatsLink` owns the connection; each `channel(prefix, deliver)` is a `Remote`
(bus/remote.py) for one kind of traffic: bus topics under ``tw.t.``, WebSocket
broadcasts under ``tw.b.``. A channel is called from any thread, under its
owner's lock, and never blocks: messages go into an outbox and one task on the
event loop sends them, in order.

- **No echo.** The connection is made with ``no_echo``: the server does not send
  a process its own messages back, so local-first delivery never doubles up.
- **Interest.** A channel subscribes to a subject when its first local
  subscriber of that pattern arrives and drops it with the last; the task
  reconciles what is wanted with what is subscribed. nats-py resubscribes after
  a reconnect. A group's members (``replicas = "all"``) are subscribed apart, as
  the NATS queue group ``tw.<group>``; what NATS gives them is left when its
  stamp says the publisher served the group itself (bus/remote.py, "Groups").
- **Outage.** While NATS is unreachable, outgoing messages are held, up to
  `buffer` of them; past it they are dropped and counted. Local delivery never
  waits for NATS. When the connection comes back, the held messages go first,
  in order, then the new ones. `connected` is False meanwhile (/healthz says
  ``degraded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bus.exceptions import BusError
from bus.remote import (
    STAMP_PREFIX,
    Stamp,
    from_subject,
    queue_for,
    read_sender,
    read_stamp,
    sender_token,
    served_mark,
    stamp_reply,
    to_subject,
    was_served,
)

__all__ = [
    "STAMP_PREFIX",
    "LinkError",
    "LinkStats",
    "NatsChannel",
    "NatsLink",
    "NoResponders",
    "Stamp",
    "incoming",
]

log = logging.getLogger("tinywasm.nats")


class Deliver(Protocol):
    """Called on the event loop with (pattern, topic, payload) for a message from another
    process, and its sender (bus.remote, "Senders") on a stamped channel."""

    def __call__(self, pattern: str, topic: str, payload: bytes, sender: str = "", /) -> object: ...


DeliverGroup = Callable[[str, str, str, bytes, str], object]
"""Called with (pattern, group, topic, payload, sender) for a message NATS gave this
process's member."""
Wanted = tuple[str, str]  # (subject, NATS queue group; "" for none)
Outgoing = tuple[str, bytes, int, str]  # subject, payload, sequence number, served mark

RECONNECT_WAIT = 0.25  # seconds between reconnect attempts: an outage ends soon after NATS is back
CONNECT_TIMEOUT = 2.0  # seconds for one connection attempt
CLOSE_TIMEOUT = 2.0  # seconds close() waits for the last messages to be flushed
# Every bus message a link sends names its publisher and sequence number in its reply
# subject, "tw.seq.<publisher id>.<n>", then the groups it served (bus/remote.py).
# Nothing answers bus messages; the reply field costs nothing to send and read (a
# header costs 2-4x the hops/s: bench.nats_hop).
_incoming = threading.local()


def incoming() -> Stamp | None:
    """While a message from another process is being delivered (on the event loop): its
    stamp. None during a local publish."""
    stamp: Stamp | None = getattr(_incoming, "stamp", None)
    return stamp


class LinkError(BusError, ConnectionError):
    """The NATS connection could not be made."""


class NoResponders(LinkError):
    """Nobody serves the subject of a request now (its process stopped, or never started)."""


@dataclass(frozen=True, slots=True)
class LinkStats:
    """Counters since the link was created; `held` is the current count."""

    connected: bool
    forwarded: int  # messages handed to NATS
    received: int  # messages from other processes
    held: int  # waiting for NATS to come back
    dropped: int  # refused while NATS was away and `buffer` was full
    disconnects: int
    subjects: int  # subjects subscribed to now
    skipped: int  # given to a group's member here, already served where it was published


class NatsChannel:
    """A `Remote` for the topics under one subject prefix."""

    __slots__ = ("_deliver", "_deliver_group", "_link", "last_seq", "prefix", "stamped", "watch")

    def __init__(
        self,
        link: NatsLink,
        prefix: str,
        deliver: Deliver,
        stamped: bool,
        deliver_group: DeliverGroup | None = None,
    ) -> None:
        self._link = link
        self.prefix = prefix
        self._deliver = deliver
        self._deliver_group = deliver_group
        # Stamped: each message sent carries this process's id and a sequence number
        # (STAMP_PREFIX), which a module's move between processes uses to hand every
        # message over exactly once (policy/handover.py). Called under the bus lock,
        # so `last_seq` follows the bus's order.
        self.stamped = stamped
        self.last_seq = 0
        # Called with the topic of each message sent, while set (supervisor/fleet.py
        # counts what is published for modules that run nowhere: bus.remote.Unowned).
        self.watch: Callable[[str], None] | None = None

    def forward(
        self, topic: str, payload: bytes, sender: str = "", served: Iterable[str] = ()
    ) -> None:
        seq = 0
        mark = served_mark(served) if served else ""
        if self.stamped:
            seq = self.last_seq = self.last_seq + 1
            if sender:
                mark += sender_token(sender)
        watch = self.watch
        if watch is not None:
            watch(topic)
        self._link._send(to_subject(self.prefix, topic), payload, seq, mark)

    def want(self, pattern: str, group: str | None = None) -> None:
        self._link._want(self._key(pattern, group), self, pattern, group)

    def unwant(self, pattern: str, group: str | None = None) -> None:
        self._link._unwant(self._key(pattern, group))

    def _key(self, pattern: str, group: str | None) -> Wanted:
        return to_subject(self.prefix, pattern), "" if group is None else queue_for(group)

    async def ready(self, timeout: float = 2.0) -> None:
        """Wait (up to `timeout` seconds) until the patterns wanted so far are subscribed at
        the NATS server. Returns early, without an error, while NATS is away."""
        await self._link.subscribed(timeout)

    def _receive(self, pattern: str, group: str | None, msg: Msg) -> None:
        if group is not None:
            # One member of the group, picked by NATS: it leaves a message whose
            # publisher served the group itself. No mark: the group gets a subset.
            if was_served(msg.reply, group):
                self._link._skipped += 1
            elif self._deliver_group is not None:
                topic = from_subject(self.prefix, msg.subject)
                self._deliver_group(pattern, group, topic, msg.data, read_sender(msg.reply))
            return
        if not self.stamped:
            self._deliver(pattern, from_subject(self.prefix, msg.subject), msg.data)
            return
        stamp = read_stamp(msg.reply)
        if stamp[0]:
            self._link._marks[(stamp[0], pattern)] = stamp[1]
        _incoming.stamp = stamp
        topic = from_subject(self.prefix, msg.subject)
        try:
            self._deliver(pattern, topic, msg.data, read_sender(msg.reply))
        finally:
            _incoming.stamp = None


class NatsLink:
    """One NATS connection for this process's bus and hub. See the module docstring."""

    def __init__(self, servers: Sequence[str], *, buffer: int = 10_000, name: str = "") -> None:
        """Create a link; `connect()` on the event loop makes the connection.

        Args:
            servers: NATS URLs (``nats://host:port``); several for a cluster.
            buffer: messages held while NATS is away before further ones are dropped.
            name: the connection's name, as NATS monitoring shows it.
        """
        if not servers:
            raise ValueError("give at least one NATS server URL, e.g. nats://127.0.0.1:4222")
        if buffer < 0:
            raise ValueError(f"buffer must be zero or more messages, not {buffer}")
        self.servers = tuple(servers)
        self._buffer = buffer
        self._name = name
        self._nc: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._outbox: deque[Outgoing] = deque()
        self._held: deque[Outgoing] = deque()
        # This process's publisher id in its stamps, and per (publisher, pattern) the last
        # sequence number received through that pattern's subscription.
        self.origin = secrets.token_hex(6)
        self._marks: dict[tuple[str, str], int] = {}
        self._processed: dict[Wanted, int] = {}  # per subscription: messages handed on
        self._wanted: dict[Wanted, tuple[NatsChannel, str, str | None]] = {}
        self._subs: dict[Wanted, Subscription] = {}
        self._services: dict[str, Subscription] = {}
        self._answering: set[asyncio.Task[None]] = set()  # requests `serve` is answering
        self._serving: set[str] = set()  # the subjects `serve` answers on
        self._woken = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._closed = False
        self._forwarded = self._received = self._dropped = self._disconnects = 0
        self._skipped = 0

    def channel(
        self,
        prefix: str,
        deliver: Deliver,
        *,
        stamped: bool = False,
        deliver_group: DeliverGroup | None = None,
    ) -> NatsChannel:
        """A `Remote` for the topics under `prefix`; `deliver` gets what other processes send,
        `deliver_group` what NATS gives this process's member of a group.

        With `stamped`, what it sends carries a stamp (STAMP_PREFIX) and what it receives is marked
        (`marks`, `incoming`).
        """
        return NatsChannel(self, prefix, deliver, stamped, deliver_group)

    def marks(self, patterns: Sequence[str]) -> dict[tuple[str, str], int]:
        """On the event loop: (publisher, pattern) -> the last sequence number received
        through each of `patterns`' subscriptions."""
        wanted = set(patterns)
        return {key: seq for key, seq in self._marks.items() if key[1] in wanted}

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until every message the NATS server sent this process before now has been
        delivered to the local subscribers (a round trip, then the subscriptions' queues).

        Raises:
            TimeoutError: not within `timeout` seconds.
            LinkError: NATS is away.
        """
        nc = self._nc
        if nc is None or not self._connected:
            raise LinkError("NATS is away")
        async with asyncio.timeout(timeout):
            await nc.flush()
            targets = {s: getattr(sub, "_received", 0) for s, sub in self._subs.items()}
            while any(self._processed.get(s, 0) < n for s, n in targets.items()):
                await asyncio.sleep(0.001)

    @property
    def max_payload(self) -> int:
        """The largest message the NATS server takes (its max_payload), in bytes."""
        nc = self._nc
        return nc.max_payload if nc is not None else 1024 * 1024

    @property
    def connected(self) -> bool:
        """True while the connection is up (False before connect, during an outage, after close)."""
        return self._connected

    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        with self._lock:
            held = len(self._held) + len(self._outbox)
        return LinkStats(
            connected=self._connected,
            forwarded=self._forwarded,
            received=self._received,
            held=held,
            dropped=self._dropped,
            disconnects=self._disconnects,
            subjects=len(self._subs),
            skipped=self._skipped,
        )

    def subjects(self) -> list[str]:
        """The subjects subscribed to now, sorted; a group's as ``subject (queue group)``."""
        return sorted(f"{s} ({q})" if q else s for s, q in self._subs)

    async def connect(self) -> None:
        """Connect and start sending; reconnects by itself afterwards.

        Raises:
            LinkError: no server in `servers` could be reached.
        """
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            self._nc = await nats.connect(
                list(self.servers),
                name=self._name or None,
                no_echo=True,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT,  # nats-py says int; floats work
                connect_timeout=CONNECT_TIMEOUT,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                error_cb=self._on_error,
            )
        except (TimeoutError, NatsError, OSError) as exc:
            raise LinkError(
                f"cannot connect to NATS at {', '.join(self.servers)}: {exc or type(exc).__name__}"
                "; start a nats-server there or fix --nats / TINYWASM_NATS"
            ) from None
        self._connected = True
        log.info(
            "connected to NATS at %s",
            self._nc.connected_url.netloc if self._nc.connected_url else "?",
        )
        self._task = asyncio.create_task(self._run(), name="nats link")
        self._poke()

    async def sync(self, timeout: float = 5.0) -> None:
        """Wait until what was sent and subscribed so far has reached the NATS server.

        Raises:
            TimeoutError: not within `timeout` seconds (NATS away, or too slow).
        """
        async with asyncio.timeout(timeout):
            while True:
                with self._lock:
                    pending = bool(self._outbox or self._held or self._woken)
                    settled = set(self._wanted) == set(self._subs)
                if not pending and settled and self._connected and self._nc is not None:
                    break
                await asyncio.sleep(0.005)
            await self._nc.flush()

    async def subscribed(self, timeout: float) -> None:
        """Wait until every wanted subject is subscribed and the server has seen it
        (a round trip), at most `timeout` seconds; nothing is raised."""
        with contextlib.suppress(TimeoutError, NatsError):
            async with asyncio.timeout(timeout):
                while self._connected and self._nc is not None:
                    with self._lock:
                        settled = set(self._wanted) == set(self._subs)
                    if settled:
                        await self._nc.flush()
                        return
                    await asyncio.sleep(0.002)

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """Send a request to whoever serves `subject` and wait for the answer.

        Raises:
            LinkError: NATS is away, or nobody serves `subject` now.
            TimeoutError: no answer within `timeout` seconds.
        """
        nc = self._nc
        if nc is None or not self._connected:
            raise LinkError("NATS is away: the request cannot be sent")
        try:
            msg = await nc.request(subject, payload, timeout=timeout)
        except NoRespondersError:
            raise NoResponders(f"nobody serves {subject} now") from None
        except NatsTimeoutError:
            raise TimeoutError(f"no answer on {subject} within {timeout:g} s") from None
        return msg.data

    async def serve(self, subject: str, handler: Callable[[bytes], Awaitable[bytes]]) -> None:
        """Answer the requests sent to `subject` with `handler`, each in its own task."""
        nc = self._nc
        if nc is None:
            raise LinkError("connect() first")
        tasks = self._answering

        async def answer(msg: Msg) -> None:
            try:
                reply = await handler(msg.data)
            except Exception:
                log.exception("NATS link: answering a request on %s failed", msg.subject)
                return
            with contextlib.suppress(NatsError):
                await msg.respond(reply)

        async def on_request(msg: Msg) -> None:
            task = asyncio.create_task(answer(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        self._services[subject] = await nc.subscribe(subject, cb=on_request)
        self._serving.add(subject)

    async def listen(self, subject: str, handler: Callable[[str, bytes], None]) -> None:
        """Call `handler(subject, payload)` on the loop for every message on `subject`
        (wildcards allowed), from other processes. Kept across reconnects by nats-py."""
        nc = self._nc
        if nc is None:
            raise LinkError("connect() first")

        async def on_message(msg: Msg) -> None:
            try:
                handler(msg.subject, msg.data)
            except Exception:
                log.exception("NATS link: handling a message on %s failed", msg.subject)

        self._services[subject] = await nc.subscribe(subject, cb=on_message)

    async def publish_now(self, subject: str, payload: bytes) -> bool:
        """Send `payload` on `subject` now, or not at all: never held for later (a
        heartbeat that arrives late is worse than none). False while NATS is away."""
        nc = self._nc
        if nc is None or not self._connected:
            return False
        try:
            await nc.publish(subject, payload)
        except NatsError:
            return False
        return True

    async def close(self) -> None:
        """Send what is queued (within a bound), then close. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._stop_serving()
        task, self._task = self._task, None
        if task is not None:
            self._poke()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    while self._outbox or (self._held and self._connected):
                        await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        nc, self._nc = self._nc, None
        self._connected = False
        if nc is not None:
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await nc.close()

    async def _stop_serving(self) -> None:
        """Stop answering requests, but answer every one the NATS server routed here before
        (within CLOSE_TIMEOUT): a worker that stops may be answering a request another one
        forwarded to it, and may need the link for it (it relays a request for a module it
        has just handed over). Lost, its sender would time out; after this, a sender is
        told at once that nobody serves the subject (`NoResponders`)."""
        nc = self._nc
        with contextlib.suppress(NatsError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if nc is not None and self._connected:
                    for subject in sorted(self._serving):
                        sub = self._services.pop(subject, None)
                        if sub is not None:
                            await sub.drain()  # type: ignore[no-untyped-call]  # taken, unsubscribed
                if self._answering:
                    await asyncio.wait(set(self._answering))
        self._serving.clear()

    # -- called from any thread -------------------------------------------------------------

    def _send(self, subject: str, payload: bytes, seq: int = 0, mark: str = "") -> None:
        with self._lock:
            self._outbox.append((subject, payload, seq, mark))
            self._poke_locked()

    def _want(self, key: Wanted, channel: NatsChannel, pattern: str, group: str | None) -> None:
        with self._lock:
            self._wanted[key] = (channel, pattern, group)
            self._poke_locked()

    def _unwant(self, key: Wanted) -> None:
        with self._lock:
            self._wanted.pop(key, None)
            self._poke_locked()

    def _poke(self) -> None:
        with self._lock:
            self._poke_locked()

    def _poke_locked(self) -> None:
        if self._woken or self._loop is None or (self._closed and self._task is None):
            return
        self._woken = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nothing is sent any more
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- the event loop's side --------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                self._woken = False
                batch, self._outbox = self._outbox, deque()
                wanted = dict(self._wanted)
            try:
                await self._reconcile(wanted)
                await self._emit(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("NATS link: sending failed; will retry when woken")

    async def _reconcile(self, wanted: dict[Wanted, tuple[NatsChannel, str, str | None]]) -> None:
        nc = self._nc
        if nc is None or not self._connected:
            return
        for key in [k for k in self._subs if k not in wanted]:
            sub = self._subs.pop(key)
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        for key, (channel, pattern, group) in wanted.items():
            if key not in self._subs:
                self._processed[key] = 0
                subject, queue = key
                self._subs[key] = await nc.subscribe(
                    subject, queue=queue, cb=self._callback(channel, pattern, group, key)
                )

    def _callback(
        self, channel: NatsChannel, pattern: str, group: str | None, key: Wanted
    ) -> Callable[[Msg], Awaitable[None]]:
        processed = self._processed

        async def on_message(msg: Msg) -> None:
            self._received += 1
            try:
                channel._receive(pattern, group, msg)
            except Exception:
                log.exception("NATS link: delivering a message on %r failed", msg.subject)
            processed[key] = processed.get(key, 0) + 1

        return on_message

    async def _publish(self, nc: Client, subject: str, payload: bytes, seq: int, mark: str) -> None:
        if seq or mark:
            await nc.publish(subject, payload, reply=stamp_reply(self.origin, seq, mark))
        else:
            await nc.publish(subject, payload)

    async def _emit(self, batch: deque[Outgoing]) -> None:
        held = self._held
        nc = self._nc
        up = nc is not None and self._connected
        if up and not held:
            assert nc is not None
            for subject, payload, seq, mark in batch:
                await self._publish(nc, subject, payload, seq, mark)
            self._forwarded += len(batch)
            return
        for item in batch:
            if len(held) < self._buffer:
                held.append(item)
            else:
                self._dropped += 1
                if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                    log.warning(
                        "NATS is away: %d message(s) for other processes dropped so far "
                        "(%d held, the most held)",
                        self._dropped,
                        self._buffer,
                    )
        if up:
            assert nc is not None
            while held:
                subject, payload, seq, mark = held.popleft()
                await self._publish(nc, subject, payload, seq, mark)
                self._forwarded += 1

    async def _on_disconnected(self) -> None:
        if self._connected and not self._closed:
            self._disconnects += 1
            log.warning(
                "NATS connection lost: local delivery goes on; messages for other processes "
                "are held (up to %d) until it is back",
                self._buffer,
            )
        self._connected = False

    async def _on_reconnected(self) -> None:
        self._connected = True
        log.info("NATS connection back: sending %d held message(s)", len(self._held))
        self._poke()

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS: %s", exc)
