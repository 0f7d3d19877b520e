"""The WebSocket hub: fans bus messages out to browsers and lets browsers publish.

``GET /ws?topic=T`` subscribes a connection to one or more topic patterns (the
query rules are in `tinywasm_wasi.ws_protocol`). Each client has one bounded
send queue and one writer task; `Hub.broadcast` only does ``put_nowait`` and
never awaits a socket. Frames are encoded once per broadcast and shared.

Close codes sent:

- 1001 going away: the hub is closing (server shutdown).
- 1007 invalid data: an envelope-mode frame is not a valid CBOR Message.
- 1008 policy violation: the client published to a topic the ``--ws-inbound``
  allow-list does not admit, or to a wildcard topic.
- 1013 try again later: slow consumer. The client's queue was full, so it is
  disconnected (never silently dropped from); its queued frames are released.

Register `Hub.close` in the app's ``on_shutdown``: aiohttp waits for open
handlers before it runs ``cleanup_ctx``, so WebSockets must be closed earlier.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from aiohttp import WSMsgType, web

from bus import (
    BusClosedError,
    Message,
    TopicError,
    TopicIndex,
    encode_message,
    validate_pattern,
    validate_topic,
)
from tinywasm_wasi.ws_protocol import (
    CloseCode,
    Publish,
    Refuse,
    RequestError,
    WsRequest,
    decide_inbound,
    parse_request,
    refuse_topic_error,
)

__all__ = ["Hub", "HubStats"]

log = logging.getLogger("tinywasm.hub")

HEARTBEAT = 30.0  # seconds between pings; a client that misses the pong is dropped
CLOSE_TIMEOUT = 5.0  # seconds a close handshake may take before the socket is aborted


@dataclass(frozen=True, slots=True)
class HubStats:
    """Counters since the hub was created; `clients` is the current count.

    `inbound_refused` counts every frame not published: refused topics (1008)
    and malformed envelopes (1007).
    """

    clients: int
    frames_queued: int
    slow_disconnects: int
    inbound_published: int
    inbound_refused: int


class _State(Enum):
    OPEN = "open"
    CLOSED = "closed"


class _Client:
    """One connection: its socket, what it subscribed to, its send queue and its tasks."""

    __slots__ = ("closer", "peer", "queue", "sending", "transport", "wanted", "writer", "ws")

    def __init__(
        self, ws: web.WebSocketResponse, req: web.Request, wanted: WsRequest, queue_size: int
    ) -> None:
        self.ws = ws
        self.wanted = wanted
        self.peer = req.remote or "?"
        self.transport = req.transport
        # None once the client is unsubscribed: nothing is queued to it any more.
        self.queue: asyncio.Queue[bytes] | None = asyncio.Queue(queue_size)
        self.writer: asyncio.Task[None] | None = None
        self.closer: asyncio.Task[None] | None = None
        self.sending = False  # the writer is inside send_bytes, maybe waiting for the socket


class Hub:
    """WebSocket fan-out for bus topics, with browser publishing behind an allow-list."""

    def __init__(
        self,
        *,
        publish: Callable[[str, bytes], object],
        inbound: Sequence[str],
        queue_size: int = 1000,
    ) -> None:
        """Create a hub.

        Args:
            publish: called with (topic, payload) for each frame a browser may publish.
            inbound: topic patterns browsers may publish to; empty means none.
            queue_size: frames a client may have queued before it is disconnected as slow.

        Raises:
            TopicError: an `inbound` pattern is not valid.
            ValueError: `queue_size` is less than 1.
        """
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        self._publish = publish
        self._inbound = tuple(validate_pattern(p) for p in inbound)
        self._queue_size = queue_size
        self._state = _State.OPEN
        self._closed = asyncio.Event()
        self._index: TopicIndex[_Client] = TopicIndex()
        self._clients: set[_Client] = set()
        self._frames_queued = 0
        self._slow_disconnects = 0
        self._inbound_published = 0
        self._inbound_refused = 0

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
            slow_disconnects=self._slow_disconnects,
            inbound_published=self._inbound_published,
            inbound_refused=self._inbound_refused,
        )

    def broadcast(self, topic: str, payload: bytes) -> int:
        """Queue one frame for every client subscribed to `topic`; return how many.

        Call on the event loop. A no-op after `close`.

        Raises:
            TopicError: `topic` is not a valid concrete topic.
        """
        if self._state is _State.CLOSED:
            return 0
        validate_topic(topic)
        targets = self._index.match(topic)
        if not targets:
            return 0
        if len(targets) > 1:
            targets = list(dict.fromkeys(targets))  # two matching patterns, one frame
        raw = bytes(payload)
        envelope: bytes | None = None
        queued = 0
        for client in targets:
            if client.wanted.envelope:
                if envelope is None:
                    envelope = encode_message(Message(topic=topic, payload=raw))
                frame = envelope
            else:
                frame = raw
            assert client.queue is not None  # subscribed clients always have one
            try:
                client.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self._slow_disconnects += 1
                log.warning(
                    "ws %s disconnected as a slow consumer: %d frames queued",
                    client.peer,
                    self._queue_size,
                )
                self._begin_close(
                    client,
                    CloseCode.TRY_AGAIN_LATER,
                    f"slow consumer: {self._queue_size} frames queued",
                )
            else:
                queued += 1
        self._frames_queued += queued
        return queued

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The ``GET /ws`` route: 400 on a bad query, 503 after `close`, else a WebSocket."""
        if self._state is _State.CLOSED:
            return web.Response(status=503, text="server shutting down: try again later\n")
        try:
            wanted = parse_request(request.query.items())
        except RequestError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, compress=False)
        if not ws.can_prepare(request):
            return web.Response(
                status=400,
                text="/ws is a WebSocket endpoint: connect with new WebSocket(...), "
                "e.g. ws://host:port/ws?topic=chat\n",
            )
        await ws.prepare(request)
        client = _Client(ws, request, wanted, self._queue_size)
        self._clients.add(client)
        for pattern in wanted.patterns:
            self._index.add(pattern, client)
        client.writer = asyncio.create_task(self._write(client), name=f"ws writer {client.peer}")
        log.debug("ws %s connected: topics %s", client.peer, ", ".join(wanted.patterns))
        if self.closed:  # the hub closed while the handshake was being sent
            self._begin_close(client, CloseCode.GOING_AWAY, "server shutting down")
        try:
            await self._read(client)
        finally:
            # The closer releases the client, so even a cancelled handler leaks nothing.
            closer = self._begin_close(client, CloseCode.GOING_AWAY, "server closing connection")
            await asyncio.shield(closer)
        return ws

    async def close(self) -> None:
        """Close every client with 1001 and wait for them. Safe to call twice."""
        if self._state is _State.CLOSED:
            await self._closed.wait()
            return
        self._state = _State.CLOSED
        try:
            closers = [
                self._begin_close(client, CloseCode.GOING_AWAY, "server shutting down")
                for client in list(self._clients)
            ]
            if closers:
                await asyncio.wait(closers)
        finally:
            self._closed.set()

    async def _read(self, client: _Client) -> None:
        """Handle frames from the client until it closes or is refused."""
        async for msg in client.ws:
            if msg.type is WSMsgType.TEXT:
                data = msg.data.encode("utf-8")
            elif msg.type is WSMsgType.BINARY:
                data = msg.data
            else:  # ERROR: aiohttp has already closed the socket
                return
            if client.closer is not None:
                return  # closing: frames that arrive meanwhile are not published
            decision = decide_inbound(client.wanted, self._inbound, data)
            if isinstance(decision, Publish):
                try:
                    self._publish(decision.topic, decision.payload)
                except TopicError as exc:
                    decision = refuse_topic_error(exc)
                except BusClosedError:
                    self._begin_close(client, CloseCode.GOING_AWAY, "server shutting down")
                    return
            if isinstance(decision, Refuse):
                self._inbound_refused += 1
                log.warning("ws %s refused: %s", client.peer, decision.reason)
                self._begin_close(client, decision.code, decision.reason)
                return
            self._inbound_published += 1

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
        except ConnectionError:
            self._unsubscribe(client)  # the reader sees the broken connection too

    def _unsubscribe(self, client: _Client) -> None:
        """Stop queuing to `client`: remove it from the index, release its queued frames."""
        queue, client.queue = client.queue, None
        if queue is not None:
            for pattern in client.wanted.patterns:
                self._index.remove(pattern, client)
            while not queue.empty():
                queue.get_nowait()

    def _begin_close(self, client: _Client, code: CloseCode, reason: str) -> asyncio.Task[None]:
        """Stop queuing to `client` now and schedule its close (once); does not block."""
        self._unsubscribe(client)
        if client.closer is None:
            # A writer inside send_bytes is left to finish: cancelling aiohttp's drain
            # would break the close below. It stops once the frame is out.
            if client.writer is not None and not client.sending:
                client.writer.cancel()
            client.closer = asyncio.get_running_loop().create_task(
                self._close_client(client, code, reason), name=f"ws closer {client.peer}"
            )
        return client.closer

    async def _close_client(self, client: _Client, code: CloseCode, reason: str) -> None:
        """Close the socket unless the client already did, then release the client."""
        writer, ws = client.writer, client.ws
        sent = not ws.closed
        try:
            if sent:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await ws.close(code=code, message=reason.encode("utf-8"))
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
            if sent:
                log.debug("ws %s disconnected: closed with %d %s", client.peer, code, reason)
            else:
                log.debug("ws %s disconnected: client closed with %s", client.peer, ws.close_code)
