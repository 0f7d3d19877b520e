"""The WebSocket hub: fans bus messages out to browsers and lets browsers publish.

``GET /ws?topic=T`` subscribes a connection to one or more topic patterns (the
query rules are in `tinywasm_wasi.web.hub_policy`). Each client has one bounded
send queue and one writer task; `Hub.broadcast` never awaits a socket: it
writes to a transport without blocking or does ``put_nowait``. Frames are
encoded once per broadcast and shared. A client whose socket keeps up (nothing
queued, nothing waiting in the transport, not closing) gets the encoded frame
written straight to its transport by `_write_through`, with no writer task
wake-up; otherwise the frame is queued for its writer, which sends it with
aiohttp's ``send_bytes``, so order is kept.

Before the upgrade: 503 after `close`, 403 for an Origin the ``--ws-origins``
policy refuses, 400 for a bad query or a request that is not a valid handshake.
With token auth on (a `TokenVerifier`), 401 for a missing or refused token and
403 for a subscription its grants do not cover; its ``pub`` grant then replaces
``--ws-inbound`` for that connection.

Each connection's inbound frames are rate limited (``--ws-rate-limit``, a token
bucket): over the limit the hub stops reading from that socket until a token
is due, so TCP pushes back on that client alone and no frame is lost.

Close codes sent:

- 1001 going away: the hub is closing (server shutdown).
- 1002 protocol error: a malformed or unexpected frame (aiohttp's check).
- 1007 invalid data: a text frame that is not UTF-8 (aiohttp's check), or an
  envelope-mode frame that is not a valid CBOR Message.
- 1008 policy violation: the client published to a topic the ``--ws-inbound``
  allow-list does not admit, or to a wildcard topic.
- 1009 message too big: a frame over ``--ws-max-frame`` (aiohttp's check, made
  before the frame is buffered).
- 3000 token expired: the connection's token reached its ``exp``.
- 1013 try again later: slow consumer. The client's queue held too many frames
  (``--ws-queue-size``) or bytes (``--ws-queue-bytes``), so it is disconnected
  (never silently dropped from); its queued frames are released.

With a `remote` (a NATS channel under ``tw.b.``), `broadcast` also forwards each
frame to the other processes' hubs, and `deliver_remote` takes theirs. The hub
wants a pattern from the others only while one of its own clients subscribes to
it (`bus.remote.Interest`), and a frame that arrives for a pattern reaches the
clients for whom that pattern is the first of theirs to match the topic: a
client on ``chat.*`` and ``chat.a`` gets one frame, as it would locally.

Register `Hub.close` in the app's ``on_shutdown``: aiohttp waits for open
handlers before it runs ``cleanup_ctx``, so WebSockets must be closed earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, hdrs, web

from bus import (
    BusClosedError,
    Message,
    TopicError,
    TopicIndex,
    encode_message,
    matches,
    validate_pattern,
    validate_topic,
)
from bus.remote import Interest, Remote
from bus.topics import is_wildcard
from tinywasm_wasi.config import MiB
from tinywasm_wasi.policy.grants import GrantAction, is_system
from tinywasm_wasi.policy.presence import Member, PresenceIndex, PresenceStats
from tinywasm_wasi.policy.ratelimit import LogLimiter, TokenBucket
from tinywasm_wasi.policy.tokens import (
    PROTOCOL,
    Claims,
    TokenError,
    TokenVerifier,
    token_from_protocols,
)
from tinywasm_wasi.policy.topic_history import HistoryStats, HistoryStore, Position
from tinywasm_wasi.policy.ws_frames import UNMASKED_REASON, FrameScanner
from tinywasm_wasi.web.hub_policy import (
    TOKEN_PUB_GRANT,
    AppCloseCode,
    FrameType,
    Publish,
    Refuse,
    RequestError,
    WsRequest,
    check_origin,
    decide_inbound,
    encode_envelope,
    handshake_refusal,
    non_ascii_handshake,
    parse_origins,
    parse_request,
    protocol_error_reason,
    refuse_topic_error,
)

__all__ = ["Hub", "HubStats"]

log = logging.getLogger("tinywasm.hub")

HEARTBEAT = 30.0  # seconds between pings; a client that misses the pong is dropped
CLOSE_TIMEOUT = 5.0  # seconds a close handshake may take before the socket is aborted
# Seconds a closed connection keeps reading (and discarding) what the client still sends,
# so that bytes in flight do not meet a closed socket, which answers them with a reset.
# Below the server's handler grace (server.HANDLER_GRACE), so shutdown waits for it.
LINGER = 0.5
FLUSH_POLL = 0.02  # seconds between checks that a closing socket has sent what it holds


@dataclass(frozen=True, slots=True)
class HubStats:
    """Counters since the hub was created; `clients` is the current count.

    `frames_queued` and `bytes_queued` count the frames (and their payload bytes)
    handed to clients, written straight through or queued for their writers.
    `slow_disconnects` is `slow_frames` (over --ws-queue-size) plus `slow_bytes`
    (over --ws-queue-bytes).

    `inbound_refused` counts connections closed for what they sent: refused
    topics (1008), malformed envelopes or text (1007), frames too big (1009)
    and protocol errors (1002). `inbound_throttled` counts frames that waited
    for the rate limit; `origins_refused` counts handshakes refused with 403.
    `tokens_refused` counts handshakes refused with 401, `grants_refused` those
    refused with 403 for a subscription outside the token's grants, and
    `tokens_expired` connections closed with 3000.
    """

    clients: int
    frames_queued: int
    bytes_queued: int
    slow_disconnects: int
    slow_frames: int
    slow_bytes: int
    inbound_published: int
    inbound_refused: int
    inbound_throttled: int
    origins_refused: int
    tokens_refused: int = 0
    grants_refused: int = 0
    tokens_expired: int = 0


class _State(Enum):
    OPEN = "open"
    CLOSED = "closed"


class _Socket(web.WebSocketResponse):
    """aiohttp's WebSocketResponse, with a close reason on the closes aiohttp makes itself.

    aiohttp refuses a frame over ``max_msg_size`` (1009), text that is not UTF-8
    (1007) or a malformed frame (1002) by closing with an empty reason; the
    client is told what was wrong and which setting applies instead. It also notes
    when a close begins (`close_begun`), for `_write_through`.

    Two things aiohttp does not do are added: an unmasked client frame closes the
    connection with 1002 (`_MaskChecked`), and closing the transport sends a FIN
    instead of closing the socket outright, so the handler can linger (`Hub._linger`)
    while the client's last bytes arrive instead of resetting the connection.
    """

    def __init__(self, *, max_frame: int, protocols: tuple[str, ...] = ()) -> None:
        # compress=False: no permessage-deflate, so a small frame cannot inflate
        # into a large message. aiohttp refuses a message of max_msg_size bytes.
        super().__init__(
            heartbeat=HEARTBEAT, compress=False, max_msg_size=max_frame + 1, protocols=protocols
        )
        self.max_frame = max_frame
        # True from the first close(), before aiohttp writes its close frame: where
        # aiohttp's `closed` turns true too. `_write_through` reads it for every client
        # and frame, and the property cost about a fifth more server CPU per frame in
        # bench.fanout than this plain attribute.
        self.close_begun = False
        self.refusal = ""  # the close reason of a refusal made here, not by aiohttp

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        # Every byte after the handshake goes through the mask check first, including
        # bytes that arrived with the handshake (aiohttp's "message tail").
        handler: Any = request.protocol
        tail, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        checked = _MaskChecked(handler._payload_parser, self)
        handler._payload_parser = checked
        if tail:
            checked.feed_data(tail)

    def refuse_unmasked(self) -> None:
        """Close with 1002: the client sent an unmasked frame."""
        self.refusal = UNMASKED_REASON
        reader: Any = self._reader
        reader.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, UNMASKED_REASON))

    def _close_transport(self) -> None:
        # aiohttp closes the socket here, often while the client is still sending; the
        # kernel then answers its next bytes with a reset. Send a FIN instead: the
        # handler lingers, and aiohttp closes the socket when the handler returns.
        # Only after our close frame: without one (a missed pong, a broken socket) the
        # socket closes at once, as aiohttp does.
        transport = self._req.transport if self._req is not None else None
        if transport is None or transport.is_closing():
            return
        if self.close_begun and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the peer reset the socket meanwhile (ENOTCONN): just close it
                transport.close()
        else:
            transport.close()

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        self.close_begun = True
        if not message:
            reason = self.refusal or protocol_error_reason(code, self.max_frame)
            message = reason.encode("utf-8")
        return await super().close(code=code, message=message, drain=drain)


class _MaskChecked:
    """Stands in front of aiohttp's frame reader and stops at the first unmasked frame."""

    __slots__ = ("_reader", "_scanner", "_socket")

    def __init__(self, reader: Any, socket: _Socket) -> None:
        self._reader = reader
        self._socket = socket
        self._scanner = FrameScanner()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._scanner.failed:
            return True, b""
        bad = self._scanner.feed(data)
        if bad is None:
            result: tuple[bool, bytes] = self._reader.feed_data(data)
            return result
        if bad:
            self._reader.feed_data(data[:bad])  # the frames before it are fine
        self._socket.refuse_unmasked()
        return True, b""

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class _Discard:
    """What a closed connection's bytes are fed to while it lingers; notes the client's EOF."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        return False, b""

    def feed_eof(self) -> None:
        self.ended.set()


class _Client:
    """One connection: its socket, what it subscribed to, its send queue and its tasks."""

    __slots__ = (
        "claims",
        "closer",
        "conn",
        "ended",
        "expiry",
        "member",
        "peer",
        "queue",
        "queued_bytes",
        "sender",
        "sending",
        "stopping",
        "throttled",
        "transport",
        "wanted",
        "writer",
        "ws",
    )

    def __init__(
        self,
        ws: _Socket,
        req: web.Request,
        wanted: WsRequest,
        queue_size: int,
        claims: Claims | None = None,
        conn: str = "",
    ) -> None:
        self.ws = ws
        self.conn = conn  # the connection's id, unique in this hub
        self.member = Member(claims.sub if claims else None, conn, time.time())
        self.claims = claims  # the verified token, with token auth on
        # Who this connection's publishes come from, set by the server, never by the
        # client: the token's user, or without auth the connection's id.
        self.sender = f"user:{claims.sub}" if claims is not None else f"conn:{conn}"
        self.expiry: asyncio.TimerHandle | None = None  # closes the client at the token's exp
        self.wanted = wanted
        self.peer = req.remote or "?"
        self.transport = req.transport
        # None once the client is unsubscribed: nothing is queued to it any more.
        self.queue: asyncio.Queue[bytes] | None = asyncio.Queue(queue_size)
        # Bytes of the frames in `queue` plus the one the writer is sending.
        self.queued_bytes = 0
        self.writer: asyncio.Task[None] | None = None
        self.closer: asyncio.Task[None] | None = None
        self.sending = False  # the writer is inside send_bytes, maybe waiting for the socket
        self.stopping = asyncio.Event()  # set when the close begins: ends a throttle wait
        self.throttled = False  # the rate limit has slowed this client down (logged once)
        self.ended = ""  # how aiohttp ended the connection, when it did (for the log)


def _write_through(
    clients: Iterable[_Client], topic: str, raw: bytes, kept: tuple[int, str] | None = None
) -> tuple[list[tuple[_Client, bytes]], int]:
    """Write one broadcast to each client whose socket keeps up; return the others to queue.

    The one place that bypasses aiohttp's writer. ``send_bytes`` must be awaited,
    so each frame would cost a writer task wake-up per client: over a third more
    server CPU per frame in fan-out, and a burst larger than the queue disconnects
    every client (BENCHMARKS.md, "write-through"). Only a socket that keeps up
    qualifies: no frame queued or being sent (order), nothing waiting in the
    transport (flow control), no close begun on the WebSocket (no data frame may
    follow a close frame) and the transport not closing (aiohttp closes it at
    once when a pong is missed). Frames are encoded once and shared: the CBOR
    envelope and the wire frames, raw and envelope. Each client that is behind
    comes back with its frame; the second value is the payload bytes written. `kept`
    is the broadcast's (offset, epoch) on a topic that keeps history: envelope frames
    carry them.
    """
    written = 0
    envelope: bytes | None = None
    wires: list[bytes | None] = [None, None]  # encoded frames: raw, envelope
    behind: list[tuple[_Client, bytes]] = []
    for client in clients:
        kind = client.wanted.envelope
        if kind:
            if envelope is None:
                if kept is None:
                    envelope = encode_message(Message(topic=topic, payload=raw))
                else:
                    envelope = encode_envelope(topic, raw, offset=kept[0], epoch=kept[1])
            frame = envelope
        else:
            frame = raw
        transport = client.transport
        if (
            client.sending
            or client.queue is None
            or not client.queue.empty()
            or client.ws.close_begun
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            behind.append((client, frame))
            continue
        wire = wires[kind]
        if wire is None:
            wire = wires[kind] = encode_binary_frame(frame)
        transport.write(wire)
        written += len(frame)
    return behind, written


SYSTEM_PREFIX = "$sys"  # the first token of the server's own topics (the dashboard's feed)
GUARDED_TOPIC = "$sys.status"  # what `system_guard` protects (module status); $sys.build is not


def encode_binary_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented binary WebSocket frame (RFC 6455 5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        header = bytes((0x82, size))
    elif size < 1 << 16:
        header = bytes((0x82, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x82, 127)) + size.to_bytes(8, "big")
    return header + payload


class Hub:
    """WebSocket fan-out for bus topics, with browser publishing behind an allow-list."""

    def __init__(
        self,
        *,
        publish: Callable[[str, bytes, str], object],
        inbound: Sequence[str],
        queue_size: int = 1000,
        queue_bytes: int = 8 * MiB,
        max_frame: int = 1 * MiB,
        rate_limit: float = 100.0,
        origins: Sequence[str] = (),
        remote: Remote | None = None,
        remote_ready: Callable[[], Awaitable[None]] | None = None,
        auth: TokenVerifier | None = None,
        history: HistoryStore | None = None,
        system_guard: Callable[[web.Request], None] | None = None,
    ) -> None:
        """Create a hub.

        Args:
            publish: called with (topic, payload, sender) for each frame a browser may
                publish; the sender is ``user:<sub>`` (the token's) or ``conn:c<N>`` (the
                connection's id, without auth), whatever the frame itself says.
            inbound: topic patterns browsers may publish to; empty means none.
            queue_size: frames a client may have queued before it is disconnected as slow.
            queue_bytes: bytes a client may have queued before it is disconnected as
                slow; a single frame is always accepted into an empty queue.
            max_frame: largest frame (message) a client may send, in bytes.
            rate_limit: frames per second one connection may send, in bursts of up
                to ``max(1, rate_limit)``; 0 turns the limit off.
            origins: Origin values allowed to open a connection (``scheme://host[:port]``,
                or ``*`` for any); empty means the server's own origin only. Clients
                that send no Origin header are always allowed.
            remote: forwards broadcasts to the other processes' hubs and asks
                them for the patterns this hub's clients want; None: this process only.
            remote_ready: awaited before a handshake is answered, once the client's
                patterns are wanted: when it returns, the other processes' broadcasts
                on them reach this hub (so an open WebSocket misses none).
            auth: verifies connection tokens; None lets anyone connect (trusted networks),
                with `inbound` for publishing.
            history: keeps broadcasts of the topics it has rules for, so reconnecting
                clients recover what they missed (``since=``) or get the latest (``recent=1``).
            system_guard: called with the request of a connection whose patterns match
                ``$sys.status`` (the module status) before it is accepted; it raises an
                aiohttp HTTP exception (401/403) to refuse. None admits everyone.

        Raises:
            TopicError: an `inbound` pattern is not valid.
            ValueError: a size or count is less than 1, `rate_limit` is negative,
                or an `origins` entry is not an origin.
        """
        for name, value in (
            ("queue_size", queue_size),
            ("queue_bytes", queue_bytes),
            ("max_frame", max_frame),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if not rate_limit >= 0:
            raise ValueError(
                f"rate_limit must be zero (off) or more frames a second, not {rate_limit}"
            )
        self._publish = publish
        self._inbound = tuple(validate_pattern(p) for p in inbound)
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._max_frame = max_frame
        self._rate_limit = rate_limit
        self._origins = parse_origins(origins)
        self._auth = auth
        self._history = history
        self._presence: PresenceIndex[_Client] = PresenceIndex()
        self._conn_ids = itertools.count(1)
        self._state = _State.OPEN
        self._closed = asyncio.Event()
        self._remote = remote
        self._remote_ready = remote_ready
        self._interest: Interest[str] = Interest()
        self._index: TopicIndex[_Client] = TopicIndex()
        # Patterns under `$sys` live apart: only `broadcast_system` reaches them, and no
        # module or browser broadcast does (a `>` subscriber never sees the system feed).
        self._system: TopicIndex[_Client] = TopicIndex()
        self._system_guard = system_guard
        self._clients: set[_Client] = set()
        self._frames_queued = 0
        self._bytes_queued = 0
        self._slow_disconnects = 0
        self._slow_frames = 0
        self._slow_bytes = 0
        self._inbound_published = 0
        self._inbound_refused = 0
        self._inbound_throttled = 0
        self._origins_refused = 0
        self._tokens_refused = 0
        self._grants_refused = 0
        self._tokens_expired = 0
        # What clients do must not flood the log: one line a second per kind.
        self._warn_slow = LogLimiter(log)
        self._warn_refused = LogLimiter(log)
        self._note_throttled = LogLimiter(log, level=logging.INFO)

    @property
    def closed(self) -> bool:
        """True once `close` has been called."""
        return self._state is _State.CLOSED

    @property
    def clients(self) -> int:
        """Connections currently open (including ones being closed)."""
        return len(self._clients)

    def stats(self) -> HubStats:
        """A snapshot of the counters."""
        return HubStats(
            clients=len(self._clients),
            frames_queued=self._frames_queued,
            bytes_queued=self._bytes_queued,
            slow_disconnects=self._slow_disconnects,
            slow_frames=self._slow_frames,
            slow_bytes=self._slow_bytes,
            inbound_published=self._inbound_published,
            inbound_refused=self._inbound_refused,
            inbound_throttled=self._inbound_throttled,
            origins_refused=self._origins_refused,
            tokens_refused=self._tokens_refused,
            grants_refused=self._grants_refused,
            tokens_expired=self._tokens_expired,
        )

    def presence_stats(self) -> PresenceStats:
        """How many connections are on how many topics (concrete subscriptions only)."""
        return self._presence.stats()

    def presence(self, topic: str, limit: int) -> tuple[int, list[Member]]:
        """How many connections subscribe to `topic` by name, and the first `limit` of them."""
        return self._presence.members(topic, limit)

    def history_stats(self) -> HistoryStats | None:
        """What the topic history holds, or None without history."""
        return None if self._history is None else self._history.stats()

    def read_history(
        self, topic: str, since: Position | None, limit: int
    ) -> tuple[bool, Position, list[tuple[int, bytes]]] | None:
        """(recovered, position now, [(offset, payload)]) for HTTP readers; None: no history.

        Without `since`: the newest `limit` messages (recovered is True). With it: what a
        reader at `since` missed (at most `limit`, else not recovered), like ``since=`` on /ws.
        """
        history = self._history
        if history is None:
            return None
        now = time.monotonic()
        if since is None:
            read = history.read(topic, 0, limit, now)
            if read is None:
                return None
            position, entries = read
            return True, position, [(e.offset, e.payload) for e in entries]
        recovery = history.recover(topic, since, now)
        if recovery is None:
            return None
        if not recovery.recovered or len(recovery.entries) > limit:
            return False, recovery.position, []
        return True, recovery.position, [(e.offset, e.payload) for e in recovery.entries]

    def check_reader(self, authorization: str | None, topic: str) -> tuple[int, str] | None:
        """With token auth on, an HTTP reader of `topic` needs ``Authorization: Bearer <JWT>``
        whose sub grant covers it: (status, reason) if not; None when allowed."""
        if self._auth is None:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            return 401, "missing token: send the header Authorization: Bearer <JWT>"
        try:
            claims = self._auth.verify(token)
        except TokenError as exc:
            return 401, str(exc)
        reason = claims.grants.refusal(GrantAction.SUBSCRIBE, topic)
        if reason is not None:
            return 403, f"reading refused for {claims.sub!r}: {reason} of its token"
        return None

    @property
    def inbound(self) -> tuple[str, ...]:
        """Topic patterns browsers may publish to when token auth is off."""
        return self._inbound

    def set_inbound(self, patterns: Sequence[str]) -> None:
        """Replace the inbound allow-list; it applies to the next frame of every connection.

        Raises:
            TopicError: a pattern is not valid (the list is then unchanged).
        """
        self._inbound = tuple(dict.fromkeys(validate_pattern(p) for p in patterns))
        log.info("ws inbound topics now: %s", ", ".join(self._inbound) or "(none)")

    def set_auth(self, auth: TokenVerifier) -> None:
        """Check new connections' tokens with `auth` (a rotated key); open ones stay.

        Raises:
            RuntimeError: token auth is off; turning it on needs a restart.
        """
        if self._auth is None:
            raise RuntimeError("token auth is off: it cannot be turned on without a restart")
        self._auth = auth

    def has_system_subscribers(self) -> bool:
        """True while some client subscribes to a system topic (``$sys...``)."""
        return bool(self._system)

    def broadcast_system(self, topic: str, payload: bytes) -> int:
        """`broadcast` for the server's own ``$sys.`` topics, to their subscribers only."""
        if not topic.startswith(SYSTEM_PREFIX + "."):
            raise TopicError(f"system topic {topic!r} must start with {SYSTEM_PREFIX}.")
        return self._fanout(self._system, topic, payload)

    def broadcast(self, topic: str, payload: bytes) -> int:
        """Queue one frame for every client subscribed to `topic`; return how many.

        With a remote, the frame also goes to the other processes' hubs. Call on
        the event loop. A no-op after `close`.

        Raises:
            TopicError: `topic` is not a valid concrete topic.
        """
        return self._fanout(self._index, topic, payload)

    def _fanout(self, index: TopicIndex[_Client], topic: str, payload: bytes) -> int:
        if self._state is _State.CLOSED:
            return 0
        validate_topic(topic)
        raw = bytes(payload)  # the same object when `payload` is bytes: never copied per client
        kept: tuple[int, str] | None = None
        if index is self._index:  # the $sys feed keeps no history and stays local
            if self._history is not None:
                appended = self._history.append(topic, raw, time.monotonic())
                if appended is not None:
                    kept = (appended[0].offset, appended[1])
            if self._remote is not None:
                self._remote.forward(topic, raw)
        targets = index.match(topic)
        if not targets:
            return 0
        if len(targets) > 1:
            targets = list(dict.fromkeys(targets))  # two matching patterns, one frame
        return self._fan_out(targets, topic, raw, kept)

    def deliver_remote(self, pattern: str, topic: str, payload: bytes) -> int:
        """Fan out a frame another process's hub broadcast; it arrived for `pattern`.

        Call on the event loop. Never forwarded. A no-op after `close`.
        """
        if self._state is _State.CLOSED:
            return 0
        targets = [
            client
            for client in self._index.under(pattern)
            if next(p for p in client.wanted.patterns if matches(p, topic)) == pattern
        ]
        return self._fan_out(targets, topic, payload) if targets else 0

    def _fan_out(
        self,
        targets: list[_Client],
        topic: str,
        payload: bytes,
        kept: tuple[int, str] | None = None,
    ) -> int:
        raw = bytes(payload)  # the same object when `payload` is bytes: never copied per client
        behind, sent_bytes = _write_through(targets, topic, raw, kept)
        queued = len(targets) - len(behind)
        for client, frame in behind:
            if self._enqueue(client, frame):
                queued += 1
                sent_bytes += len(frame)
        self._frames_queued += queued
        self._bytes_queued += sent_bytes
        return queued

    def _enqueue(self, client: _Client, frame: bytes) -> bool:
        """Queue `frame` for `client`'s writer, or close it as a slow consumer (False)."""
        if client.queued_bytes and client.queued_bytes + len(frame) > self._queue_bytes:
            self._slow_bytes += 1
            self._slow(
                client,
                f"slow consumer: over {self._queue_bytes} bytes queued",
                "%d bytes queued and a %d-byte frame to add, over --ws-queue-bytes %d",
                client.queued_bytes,
                len(frame),
                self._queue_bytes,
            )
            return False
        queue = client.queue
        if queue is None:
            return False  # being closed
        try:
            queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._slow_frames += 1
            self._slow(
                client,
                f"slow consumer: {self._queue_size} frames queued",
                "%d frames queued, the --ws-queue-size limit",
                self._queue_size,
            )
            return False
        client.queued_bytes += len(frame)
        return True

    def _tell(self, watchers: list[_Client], topic: str, kind: FrameType, member: Member) -> None:
        """Send a join or leave frame about `member` to the watchers of `topic`."""
        frame = encode_envelope(
            topic, b"", type=kind, member={"user": member.user, "conn": member.conn}
        )
        self._frames_queued += sum(self._enqueue(w, frame) for w in watchers)

    def _slow(self, client: _Client, reason: str, detail: str, *args: object) -> None:
        """Disconnect `client` as a slow consumer (1013), with a rate-limited warning."""
        self._slow_disconnects += 1
        self._warn_slow(
            "ws %s disconnected as a slow consumer: " + detail + " (raise the limit if "
            "its clients are just slow to read)",
            client.peer,
            *args,
        )
        self._begin_close(client, WSCloseCode.TRY_AGAIN_LATER, reason)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The ``GET /ws`` route: 503, 403 (origin), 400 (query, handshake) or a WebSocket."""
        if self._state is _State.CLOSED:
            return web.Response(status=503, text="server shutting down: try again later\n")
        headers = request.headers
        broken = non_ascii_handshake(headers)
        if broken is not None:
            return web.Response(status=400, text=f"{broken}\n")
        refusal = check_origin(self._origins, headers.get(hdrs.ORIGIN), headers.get(hdrs.HOST))
        if refusal is not None:
            self._origins_refused += 1
            self._warn_refused("ws %s refused: %s", request.remote, refusal)
            return web.Response(status=403, text=f"{refusal}\n")
        try:
            wanted = parse_request(request.query.items())
        except RequestError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        claims: Claims | None = None
        protocols: tuple[str, ...] = ()
        if self._auth is not None:
            offered = token_from_protocols(headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL))
            token = request.query.get("token") or offered
            try:
                claims = self._auth.verify(token)
            except TokenError as exc:
                self._tokens_refused += 1
                self._warn_refused("ws %s refused: %s", request.remote, exc)
                return web.Response(
                    status=401, text=f"{exc}\n", headers={hdrs.WWW_AUTHENTICATE: "Bearer"}
                )
            for pattern in wanted.patterns:
                if is_system(pattern) and self._system_guard is not None:
                    continue  # the server's own topics: the system guard below decides
                reason = claims.grants.refusal(GrantAction.SUBSCRIBE, pattern)
                if reason is not None:
                    self._grants_refused += 1
                    text = f"subscription refused for {claims.sub!r}: {reason} of its token"
                    self._warn_refused("ws %s refused: %s", request.remote, text)
                    return web.Response(status=403, text=f"{text}\n")
            if offered is not None:
                protocols = (PROTOCOL,)  # a browser fails the connection unless one is chosen
        if self._system_guard is not None and any(
            matches(p, GUARDED_TOPIC) for p in wanted.patterns if is_system(p)
        ):
            try:
                self._system_guard(request)
            except web.HTTPException as exc:
                return web.Response(status=exc.status, text=exc.text, headers=exc.headers)
        ws = _Socket(max_frame=self._max_frame, protocols=protocols)
        self._want(wanted.patterns)
        try:
            if self._remote_ready is not None:
                await self._remote_ready()
            await ws.prepare(request)
        except web.HTTPBadRequest as exc:  # aiohttp checks the handshake before sending
            self._unwant(wanted.patterns)
            return web.Response(status=400, text=f"{handshake_refusal(exc.text or '')}\n")
        except BaseException:
            self._unwant(wanted.patterns)
            raise
        conn = f"c{next(self._conn_ids)}"
        client = _Client(ws, request, wanted, self._queue_size, claims, conn)
        self._clients.add(client)
        if claims is not None and claims.exp is not None:
            delay = max(0.0, claims.exp - time.time())
            client.expiry = asyncio.get_running_loop().call_later(delay, self._expire, client)
        for pattern in wanted.patterns:
            if is_system(pattern):
                self._system.add(pattern, client)
                continue
            self._index.add(pattern, client)
        if self._history is not None:
            # In the same step as joining the index: every later broadcast queues behind
            # these frames, and every earlier one is in the history. No gap, no duplicate.
            self._catch_up(client, self._history)
        # Presence is who is on a topic by name: wildcards and the server's $sys are not.
        concrete = [p for p in wanted.patterns if not is_wildcard(p) and not is_system(p)]
        for topic, watchers in self._presence.join(
            client, client.member, concrete, wanted.presence
        ):
            self._tell(watchers, topic, FrameType.JOIN, client.member)
        client.writer = asyncio.create_task(self._write(client), name=f"ws writer {client.peer}")
        log.debug("ws %s connected: topics %s", client.peer, ", ".join(wanted.patterns))
        if self.closed:  # the hub closed while the handshake was being sent
            self._begin_close(client, WSCloseCode.GOING_AWAY, "server shutting down")
        try:
            await self._read(client)
        finally:
            # The closer releases the client, so even a cancelled handler leaks nothing.
            closer = self._begin_close(client, WSCloseCode.GOING_AWAY, "server closing connection")
            await asyncio.shield(closer)
        await self._linger(request)
        return ws

    @staticmethod
    async def _linger(request: web.Request) -> None:
        """Read and drop what the client still sends, until its EOF or `LINGER` seconds.

        The close frame and a FIN are out; aiohttp closes the socket when the handler
        returns. Closing it while the client's frames are still arriving would answer
        them with a reset, which the client sees instead of the close.
        """
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        handler: Any = request.protocol
        sink = _Discard()
        handler._payload_parser = sink
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER):
                await sink.ended.wait()

    async def close(self) -> None:
        """Close every client with 1001 and wait for them. Safe to call twice."""
        if self._state is _State.CLOSED:
            await self._closed.wait()
            return
        self._state = _State.CLOSED
        try:
            closers = [
                self._begin_close(client, WSCloseCode.GOING_AWAY, "server shutting down")
                for client in list(self._clients)
            ]
            if closers:
                await asyncio.wait(closers)
        finally:
            self._closed.set()

    def _catch_up(self, client: _Client, history: HistoryStore) -> None:
        """Queue a new client's first frames: per topic with history, its position (envelope
        mode), then what it missed since its ``since=`` position, or the latest (recent=1)."""
        wanted = client.wanted
        queue = client.queue
        assert queue is not None
        now = time.monotonic()
        since = dict(wanted.since)
        room = self._queue_size - 1  # leave one slot for the first live frame
        frames: list[bytes] = []
        for topic in wanted.patterns:
            if is_wildcard(topic):
                continue
            position = since.get(topic)
            recovery = history.recover(topic, position, now)
            if recovery is None:
                continue  # no history for this topic
            entries = recovery.entries
            recovered: bool | None = None
            if position is not None:
                recovered = recovery.recovered and len(frames) + len(entries) + 1 <= room
                if not recovered:
                    entries = ()
            elif wanted.recent:
                latest = history.latest(topic, now)
                entries = () if latest is None else (latest[0],)
            epoch = recovery.position.epoch
            if wanted.envelope:
                frames.append(
                    encode_envelope(
                        topic,
                        b"",
                        type=FrameType.SUBSCRIBED,
                        offset=recovery.position.offset,
                        epoch=epoch,
                        recovered=recovered,
                    )
                )
                frames.extend(
                    encode_envelope(topic, e.payload, offset=e.offset, epoch=epoch) for e in entries
                )
            else:
                frames.extend(e.payload for e in entries)
        for frame in frames[:room]:
            queue.put_nowait(frame)
            client.queued_bytes += len(frame)
        self._frames_queued += min(len(frames), room)

    def _expire(self, client: _Client) -> None:
        """The client's token has expired: close it with 3000."""
        if client.closer is None:
            self._tokens_expired += 1
            log.info("ws %s: token of %r expired", client.peer, client.claims and client.claims.sub)
            self._begin_close(client, AppCloseCode.TOKEN_EXPIRED, "token expired")

    async def _read(self, client: _Client) -> None:
        """Handle frames from the client until it closes or is refused."""
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(self._rate_limit, now=loop.time()) if self._rate_limit else None
        while True:
            msg = await client.ws.receive()
            if msg.type is WSMsgType.TEXT:
                data = msg.data.encode("utf-8")
            elif msg.type is WSMsgType.BINARY:
                data = msg.data
            else:  # CLOSE, CLOSING, CLOSED or ERROR (aiohttp has then closed the socket)
                if msg.type is WSMsgType.ERROR:
                    self._read_failed(client, msg.data)
                return
            if bucket is not None:
                delay = bucket.take(loop.time())
                if delay > 0:
                    # Not reading is the throttle: frames wait in aiohttp's buffer and
                    # the socket, TCP flow control slows the sender, nothing is lost.
                    await self._throttle(client, delay)
            if client.closer is not None:
                return  # closing: frames that arrive meanwhile are not published
            claims = client.claims
            if claims is None:
                decision = decide_inbound(client.wanted, self._inbound, data)
            else:
                allowed = claims.grants.publish
                decision = decide_inbound(client.wanted, allowed, data, TOKEN_PUB_GRANT)
            if isinstance(decision, Publish):
                try:
                    self._publish(decision.topic, decision.payload, client.sender)
                except TopicError as exc:
                    decision = refuse_topic_error(exc)
                except BusClosedError:
                    self._begin_close(client, WSCloseCode.GOING_AWAY, "server shutting down")
                    return
            if isinstance(decision, Refuse):
                self._inbound_refused += 1
                self._warn_refused("ws %s refused: %s", client.peer, decision.reason)
                self._begin_close(client, decision.code, decision.reason)
                return
            self._inbound_published += 1

    async def _throttle(self, client: _Client, delay: float) -> None:
        """Wait `delay` seconds before reading on, or until the client's close begins."""
        self._inbound_throttled += 1
        if not client.throttled:
            client.throttled = True
            self._note_throttled(
                "ws %s sends faster than --ws-rate-limit %g frames/s: reading from it is slowed",
                client.peer,
                self._rate_limit,
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await client.stopping.wait()

    def _read_failed(self, client: _Client, error: object) -> None:
        """Log why aiohttp ended the connection: a refused frame is the client's fault."""
        if isinstance(error, WebSocketError):
            self._inbound_refused += 1
            reason = (
                client.ws.refusal
                or protocol_error_reason(error.code, self._max_frame)
                or str(error)
            )
            detail = "" if error.code == WSCloseCode.MESSAGE_TOO_BIG else f" ({error})"
            client.ended = f"closed with {error.code} {reason}"
            self._warn_refused(
                "ws %s closed with %d: %s%s", client.peer, error.code, reason, detail
            )
        else:
            client.ended = f"reading failed: {error!r}"

    async def _write(self, client: _Client) -> None:
        """Send queued frames until the client is unsubscribed or the connection breaks."""
        queue = client.queue
        assert queue is not None
        try:
            while client.queue is queue:
                frame = await queue.get()
                client.sending = True
                await client.ws.send_bytes(frame)
                client.sending = False
                if client.queue is queue:
                    client.queued_bytes -= len(frame)
        except ConnectionError:
            self._unsubscribe(client)  # the reader sees the broken connection too

    def _unsubscribe(self, client: _Client) -> None:
        """Stop queuing to `client`: remove it from the index, release its queued frames."""
        queue, client.queue = client.queue, None
        client.queued_bytes = 0
        if queue is not None:
            for pattern in client.wanted.patterns:
                if is_system(pattern):
                    self._system.remove(pattern, client)
                    continue
                self._index.remove(pattern, client)
            self._unwant(client.wanted.patterns)
            while not queue.empty():
                queue.get_nowait()
            for topic, member, watchers in self._presence.leave(client, client.wanted.patterns):
                self._tell(watchers, topic, FrameType.LEAVE, member)

    def _want(self, patterns: Iterable[str]) -> None:
        """Count a client's patterns; ask the other processes for those first wanted."""
        for pattern in patterns:
            if self._interest.add(pattern) and self._remote is not None:
                self._remote.want(pattern)

    def _unwant(self, patterns: Iterable[str]) -> None:
        for pattern in patterns:
            if self._interest.remove(pattern) and self._remote is not None:
                self._remote.unwant(pattern)

    def _begin_close(self, client: _Client, code: int, reason: str) -> asyncio.Task[None]:
        """Stop queuing to `client` now and schedule its close (once); does not block."""
        self._unsubscribe(client)
        if client.expiry is not None:
            client.expiry.cancel()
        client.stopping.set()
        if client.closer is None:
            # A writer inside send_bytes is left to finish: cancelling aiohttp's drain
            # would break the close below. It stops once the frame is out.
            if client.writer is not None and not client.sending:
                client.writer.cancel()
            client.closer = asyncio.get_running_loop().create_task(
                self._close_client(client, code, reason), name=f"ws closer {client.peer}"
            )
        return client.closer

    @staticmethod
    async def _flushed(client: _Client) -> None:
        """Wait until the socket has taken every byte written to it (frames written straight
        through bypass aiohttp's flow control, so its close does not wait for them)."""
        transport = client.transport
        while transport is not None and transport.get_write_buffer_size() > 0:
            if transport.is_closing() and transport.get_write_buffer_size() == 0:
                return
            await asyncio.sleep(FLUSH_POLL)

    async def _close_client(self, client: _Client, code: int, reason: str) -> None:
        """Close the socket unless the client already did, then release the client."""
        writer, ws = client.writer, client.ws
        sent = not ws.closed
        try:
            if sent:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await ws.close(code=code, message=reason.encode("utf-8"))
                    await self._flushed(client)
        except TimeoutError:
            log.warning("ws %s did not close within %ss: aborted", client.peer, CLOSE_TIMEOUT)
            if client.transport is not None:
                client.transport.abort()
        finally:
            self._clients.discard(client)
            if writer is not None:
                writer.cancel()  # still running only if a send is stuck on the socket
                await asyncio.wait([writer])
                if not writer.cancelled() and writer.exception():
                    log.error("ws %s: writer failed", client.peer, exc_info=writer.exception())
            if sent or client.ended:
                ended = client.ended or f"closed with {code} {reason}"
                log.debug("ws %s disconnected: %s", client.peer, ended)
            else:
                log.debug("ws %s disconnected: client closed with %s", client.peer, ws.close_code)
