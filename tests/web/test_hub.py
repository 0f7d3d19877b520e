"""The WebSocket hub on a real loopback server with real WebSocket clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from pytest_aiohttp import AiohttpClient
from yarl import URL

from bus import Message, TopicError, decode_message, encode_message
from tests.support import eventually
from tinywasm_wasi.web import hub as hub_module
from tinywasm_wasi.web.hub import Hub, encode_binary_frame

TIMEOUT = 5.0

WebSocket = aiohttp.ClientWebSocketResponse


class Client(Protocol):
    """What the tests use of a client: aiohttp's TestClient or `SessionClient`."""

    def ws_connect(self, path: str, **kwargs: Any) -> Awaitable[WebSocket]: ...
    def get(self, path: str) -> Awaitable[aiohttp.ClientResponse]: ...
    def make_url(self, path: str) -> URL: ...


class SessionClient:
    """A ClientSession bound to a server's base URL."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session = session
        self._base = base

    def ws_connect(self, path: str, **kwargs: Any) -> Awaitable[WebSocket]:
        return self._session.ws_connect(self._base + path, **kwargs)

    def get(self, path: str) -> Awaitable[aiohttp.ClientResponse]:
        return self._session.get(self._base + path)

    def make_url(self, path: str) -> URL:
        return URL(self._base + path)


class Published(list[tuple[str, bytes]]):
    """The hub's `publish` callable: records every call."""

    def __call__(self, topic: str, payload: bytes, sender: str = "") -> None:
        self.append((topic, payload))


Start = Callable[..., Awaitable[tuple[Hub, Published, Client]]]


@pytest.fixture(params=["test-server", "app-runner"])
async def start(
    request: pytest.FixtureRequest, aiohttp_client: AiohttpClient
) -> AsyncIterator[Start]:
    """Serve a Hub at /ws on loopback; `start()` returns (hub, published, client).

    Two servers: pytest-aiohttp's (it cancels a handler whose connection is lost)
    and a plain AppRunner, as the server runs it (it does not).
    """
    cleanups: list[Callable[[], Awaitable[object]]] = []

    async def make(
        *,
        inbound: Sequence[str] = (),
        queue_size: int = 1000,
        publish: Callable[[str, bytes], object] | None = None,
        **settings: object,
    ) -> tuple[Hub, Published, Client]:
        published = Published()
        hub = Hub(
            publish=publish or published,
            inbound=inbound,
            queue_size=queue_size,
            **settings,  # type: ignore[arg-type]
        )

        async def close_hub(app: web.Application) -> None:
            await hub.close()

        app = web.Application()
        app.router.add_get("/ws", hub.handle)
        app.on_shutdown.append(close_hub)
        if request.param == "test-server":
            return hub, published, await aiohttp_client(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        cleanups.append(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        session = aiohttp.ClientSession()
        cleanups.append(session.close)
        port = runner.addresses[0][1]
        return hub, published, SessionClient(session, f"http://127.0.0.1:{port}")

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()


async def connect(hub: Hub, client: Client, path: str) -> WebSocket:
    """Open a WebSocket and wait until the hub has registered it."""
    before = hub.clients
    ws = await client.ws_connect(path)
    await eventually(lambda: hub.clients > before)
    return ws


async def raw_websocket(
    hub: Hub, client: Client, path: str, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client on a plain socket, to see exactly the bytes the server sends."""
    url = client.make_url(path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=receive_buffer or 2**16)
    before = hub.clients
    writer.write(
        f"GET {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    await eventually(lambda: hub.clients > before)
    return reader, writer


async def stuck_client(
    hub: Hub, client: Client, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that never reads after the handshake (a tiny receive buffer),
    so what the server sends backs up in the sockets."""
    return await raw_websocket(hub, client, path, receive_buffer=4096)


async def read_frame(reader: asyncio.StreamReader) -> tuple[WSMsgType, bytes]:
    """One unfragmented frame from the server (RFC 6455 5.2: servers do not mask)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    assert first & 0x80 and not second & 0x80, (first, second)  # FIN, no mask
    size = second & 0x7F
    if size >= 126:
        size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8), "big")
    return WSMsgType(first & 0x0F), await reader.readexactly(size)


def client_frame(opcode: WSMsgType, payload: bytes) -> bytes:
    """One frame as a client sends it: masked, here with the all-zero key (payload unchanged)."""
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + bytes(4) + payload


async def recv(ws: WebSocket) -> bytes:
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.type is WSMsgType.BINARY, msg
    return bytes(msg.data)


async def recv_until_close(ws: WebSocket, limit: int = 1000) -> tuple[list[bytes], int, str]:
    """Frames received before the close, then the close code and reason."""
    frames: list[bytes] = []
    for _ in range(limit):
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type is WSMsgType.CLOSE:
            return frames, msg.data, msg.extra or ""
        assert msg.type is WSMsgType.BINARY, msg
        frames.append(msg.data)
    pytest.fail(f"no close frame after {limit} frames")


async def test_one_client_gets_raw_bytes_exactly(start: Start) -> None:
    hub, _, client = await start()
    ws = await connect(hub, client, "/ws?topic=chat")
    # Every length encoding: 7-bit (to 125), 16-bit (126 to 65535), 64-bit (65536 on).
    sizes = [125, 126, 65535, 65536]
    payloads = [b"hello", b"\xff\xfe\x00\x80 not utf-8", b"", bytes(range(256)) * 300]
    payloads += [bytes(range(256)) * (n // 256) + bytes(n % 256) for n in sizes]
    for payload in payloads:
        assert hub.broadcast("chat", payload) == 1
    assert [await recv(ws) for _ in payloads] == payloads
    assert hub.broadcast("other", b"x") == 0
    assert hub.stats().frames_queued == len(payloads)


async def test_many_clients_each_get_every_broadcast_in_order(start: Start) -> None:
    hub, _, client = await start()
    sockets = [await connect(hub, client, "/ws?topic=news") for _ in range(50)]
    assert hub.clients == 50
    sent = [f"item {i}".encode() for i in range(20)]
    for payload in sent:
        assert hub.broadcast("news", payload) == 50
    for ws in sockets:
        assert [await recv(ws) for _ in sent] == sent
    assert hub.stats().frames_queued == 50 * 20


async def test_several_topics_on_one_connection(start: Start) -> None:
    hub, _, client = await start()
    ws = await connect(hub, client, "/ws?topic=a&topic=b")
    hub.broadcast("a", b"1")
    hub.broadcast("c", b"not for me")
    hub.broadcast("b", b"2")
    hub.broadcast("a", b"3")
    assert [await recv(ws) for _ in range(3)] == [b"1", b"2", b"3"]


async def test_wildcard_subscriptions(start: Start) -> None:
    hub, _, client = await start()
    star = await connect(hub, client, "/ws?topic=chat.*")
    tail = await connect(hub, client, "/ws?topic=users.>")
    assert hub.broadcast("chat", b"no") == 0
    assert hub.broadcast("chat.room1", b"c1") == 1
    assert hub.broadcast("chat.room1.deep", b"no") == 0
    assert hub.broadcast("users", b"no") == 0
    assert hub.broadcast("users.created", b"u1") == 1
    assert hub.broadcast("users.a.b", b"u2") == 1
    assert await recv(star) == b"c1"
    assert [await recv(tail), await recv(tail)] == [b"u1", b"u2"]


async def test_overlapping_patterns_get_one_frame(start: Start) -> None:
    hub, _, client = await start()
    ws = await connect(hub, client, "/ws?topic=chat&topic=*&topic=>&topic=chat")
    assert hub.broadcast("chat", b"once") == 1
    assert hub.broadcast("x.y", b"next") == 1
    assert [await recv(ws), await recv(ws)] == [b"once", b"next"]


async def test_envelope_mode_sends_cbor_messages(start: Start) -> None:
    hub, _, client = await start()
    env = await connect(hub, client, "/ws?topic=chat.*&envelope=cbor")
    raw = await connect(hub, client, "/ws?topic=chat.room")
    payload = b"\x00\xffhi"
    assert hub.broadcast("chat.room", payload) == 2
    assert decode_message(await recv(env)) == Message(topic="chat.room", payload=payload)
    assert await recv(raw) == payload


async def test_inbound_text_and_binary_frames_are_published(start: Start) -> None:
    hub, published, client = await start(inbound=["chat"])
    ws = await connect(hub, client, "/ws?topic=chat&topic=events")
    await ws.send_str("héllo")
    await ws.send_bytes(b"\xff\x00")
    await eventually(lambda: len(published) == 2)
    assert published == [("chat", "héllo".encode()), ("chat", b"\xff\x00")]
    assert hub.stats().inbound_published == 2
    assert hub.broadcast("chat", b"still open") == 1
    assert await recv(ws) == b"still open"


async def test_inbound_envelope_is_published_to_its_topic(start: Start) -> None:
    hub, published, client = await start(inbound=["chat.*"])
    ws = await connect(hub, client, "/ws?topic=monitor&envelope=cbor")
    await ws.send_bytes(encode_message(Message(topic="chat.room", payload=b"\x80yo")))
    await eventually(lambda: len(published) == 1)
    assert published == [("chat.room", b"\x80yo")]


@pytest.mark.parametrize(
    ("inbound", "path", "frame", "reason"),
    [
        (
            [],
            "/ws?topic=chat",
            b"x",
            "publishing to 'chat' is not allowed: the server's --ws-inbound",
        ),
        (["events"], "/ws?topic=chat", b"x", "'chat' is not allowed: the server's --ws-inbound"),
        ([">"], "/ws?topic=chat.*", b"x", "cannot publish to 'chat.*'"),
        (
            ["chat"],
            "/ws?topic=chat&envelope=cbor",
            encode_message(Message(topic="users", payload=b"x")),
            "publishing to 'users' is not allowed",
        ),
    ],
)
async def test_inbound_refused_closes_with_1008(
    start: Start, inbound: list[str], path: str, frame: bytes, reason: str
) -> None:
    hub, published, client = await start(inbound=inbound)
    ws = await connect(hub, client, path)
    await ws.send_bytes(frame)
    frames, code, got = await recv_until_close(ws)
    assert (frames, code) == ([], 1008)
    assert reason in got
    assert published == []
    assert hub.stats().inbound_refused == 1
    await eventually(lambda: hub.clients == 0)


async def test_envelope_garbage_closes_with_1007(start: Start) -> None:
    hub, published, client = await start(inbound=[">"])
    ws = await connect(hub, client, "/ws?topic=chat&envelope=cbor")
    await ws.send_bytes(b"\xff\xff garbage")
    _, code, reason = await recv_until_close(ws)
    assert code == 1007
    assert reason.startswith("not valid CBOR")
    assert len(reason.encode()) <= 123
    assert published == []
    assert hub.stats().inbound_refused == 1


async def test_publish_raising_topic_error_is_a_refusal(start: Start) -> None:
    def publish(topic: str, payload: bytes, sender: str = "") -> None:
        raise TopicError(f"topic {topic!r} is reserved")

    hub, _, client = await start(inbound=[">"], publish=publish)
    ws = await connect(hub, client, "/ws?topic=sys")
    await ws.send_str("x")
    _, code, reason = await recv_until_close(ws)
    assert (code, reason) == (1008, "topic refused: topic 'sys' is reserved")
    assert hub.stats().inbound_refused == 1


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/ws", "missing ?topic=...: connect to /ws?topic=chat"),
        ("/ws?envelope=cbor", "missing ?topic="),
        ("/ws?topic=a..b", "invalid topic 'a..b': pattern 'a..b' has an empty token"),
        ("/ws?topic=ok&topic=a.>.b", "invalid topic 'a.>.b'"),
        ("/ws?topic=chat&envelope=json", "unknown envelope 'json': use envelope=cbor"),
        ("/ws?topic=chat", "/ws is a WebSocket endpoint"),  # plain GET, no upgrade
    ],
)
async def test_bad_requests_get_400_with_a_reason(start: Start, path: str, text: str) -> None:
    _, _, client = await start()
    response = await client.get(path)
    assert response.status == 400
    assert text in await response.text()


GOOD_KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
UPGRADE = "Upgrade: websocket\r\nConnection: Upgrade\r\n"


async def raw_get(client: Client, path: str, headers: str) -> tuple[bytes, str]:
    """Send one GET with exactly `headers` (CRLF-terminated lines); the status line and body."""
    url = client.make_url(path)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            f"GET {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host}\r\n{headers}\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    finally:
        writer.close()
    return head.split(b"\r\n", 1)[0], body.decode()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ("", "No WebSocket UPGRADE hdr: None"),
        ("Upgrade: h2c\r\nConnection: Upgrade\r\n", "No WebSocket UPGRADE hdr: h2c"),
        (
            "Upgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Version: 13\r\n"
            + GOOD_KEY,
            "No CONNECTION upgrade hdr: keep-alive",
        ),
        (UPGRADE + "Sec-WebSocket-Version: 12\r\n" + GOOD_KEY, "Unsupported version: 12"),
        (UPGRADE + GOOD_KEY, "Unsupported version:)"),  # no version header
        (UPGRADE + "Sec-WebSocket-Version: 13\r\n", "Handshake error: None"),
        (
            UPGRADE + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n",
            "Handshake error: 'c2hvcnQ='",
        ),
    ],
)
async def test_bad_handshakes_get_400_with_aiohttps_reason(
    start: Start, headers: str, reason: str
) -> None:
    hub, _, client = await start()
    status, body = await raw_get(client, "/ws?topic=chat", headers)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert body.startswith(
        "/ws is a WebSocket endpoint: connect with new WebSocket(...), "
        "e.g. ws://host:port/ws?topic=chat (handshake refused: "
    )
    assert reason in body
    assert hub.clients == 0


async def test_websocket_handshake_without_topic_is_refused(start: Start) -> None:
    hub, _, client = await start()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 400
    assert hub.clients == 0


async def test_slow_consumer_is_disconnected_and_others_get_everything(start: Start) -> None:
    hub, _, client = await start(queue_size=8)
    slow = await connect(hub, client, "/ws?topic=big")
    fast = await connect(hub, client, "/ws?topic=big")
    block = bytes(range(256)) * 1024  # 256 KiB: fills the socket buffers quickly
    sent: list[bytes] = []
    for i in range(400):
        sent.append(i.to_bytes(4, "big") + block)
        hub.broadcast("big", sent[-1])
        assert await recv(fast) == sent[-1]
        if hub.stats().slow_disconnects:
            break
        await asyncio.sleep(0)
    else:
        pytest.fail("400 broadcasts and the slow client is still connected")
    for i in range(3):  # no longer queued to the slow client
        sent.append(b"after %d" % i)
        assert hub.broadcast("big", sent[-1]) == 1
        assert await recv(fast) == sent[-1]

    frames, code, reason = await recv_until_close(slow)
    assert (code, reason) == (1013, "slow consumer: 8 frames queued")
    assert frames == sent[: len(frames)]  # what arrived is in order, with no gap
    assert len(frames) < len(sent) - 3
    assert hub.stats().slow_disconnects == 1
    await eventually(lambda: hub.clients == 1)
    assert hub.broadcast("big", b"last") == 1
    assert await recv(fast) == b"last"


async def test_slow_consumer_warnings_are_rate_limited(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    hub, _, client = await start(queue_size=1, queue_bytes=64 * 1024 * 1024)
    stuck = [await stuck_client(hub, client, "/ws?topic=t") for _ in range(5)]
    big = bytes(16 * 1024 * 1024)  # more than a socket's send buffer (at most 4 MiB) takes
    hub.broadcast("t", big)  # written straight to each socket; the rest waits in its buffer
    hub.broadcast("t", b"2")  # the socket is backed up: queued (the queue holds 1 frame)
    hub.broadcast("t", b"3")  # no await in between: every queue is full
    assert hub.stats().slow_disconnects == 5
    lines = [r.getMessage() for r in caplog.records if "slow consumer" in r.getMessage()]
    assert len(lines) == 1
    assert "1 frames queued, the --ws-queue-size limit" in lines[0]
    for _, writer in stuck:
        writer.close()
    await eventually(lambda: hub.clients == 0)


async def test_a_client_that_keeps_up_gets_frames_written_straight_through(start: Start) -> None:
    hub, _, client = await start(queue_size=1)
    ws = await connect(hub, client, "/ws?topic=t")
    for i in range(50):  # no await in between: a queue of 1 would overflow at once
        assert hub.broadcast("t", b"%d" % i) == 1
    assert hub.stats().slow_disconnects == 0
    assert [await recv(ws) for _ in range(50)] == [b"%d" % i for i in range(50)]


@pytest.mark.parametrize(
    ("ending", "close_code"),
    [
        ("the client closes", 1000),
        ("aiohttp refuses a frame too big", 1009),
        ("aiohttp gets no pong", None),  # it drops the connection: no close frame
        # aiohttp 3.14 starts no close of its own that waits for the client's answer
        # with the hub still subscribed; a close from another task does.
        ("aiohttp closes it from another task", 1000),
    ],
)
async def test_broadcasting_to_a_closing_connection_writes_nothing_after_the_close(
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    ending: str,
    close_code: int | None,
) -> None:
    monkeypatch.setattr(hub_module, "HEARTBEAT", 0.2)  # a ping every 0.2 s, its pong due in 0.1
    hub, _, client = await start(max_frame=8)
    reader, writer = await raw_websocket(hub, client, "/ws?topic=t")
    stop = asyncio.Event()

    async def broadcast_every_turn() -> None:  # so one lands in whatever window there is
        while not stop.is_set():
            hub.broadcast("t", b"tick")
            await asyncio.sleep(0)

    broadcaster = asyncio.create_task(broadcast_every_turn())
    try:
        assert await read_frame(reader) == (WSMsgType.BINARY, b"tick")
        if ending == "the client closes":
            writer.write(client_frame(WSMsgType.CLOSE, struct.pack("!H", 1000)))
        elif ending == "aiohttp refuses a frame too big":
            writer.write(client_frame(WSMsgType.BINARY, b"x" * 16))  # over max_frame
        elif ending == "aiohttp closes it from another task":
            (server_side,) = [c.ws for c in hub._clients]  # aiohttp's WebSocketResponse
            closing = asyncio.create_task(server_side.close())
        seen: set[WSMsgType] = set()
        closed_with: int | None = None
        while True:
            try:
                opcode, payload = await read_frame(reader)
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == b""  # the stream ends between frames
                break
            if opcode is WSMsgType.CLOSE:
                closed_with = int.from_bytes(payload[:2], "big")
                if ending == "aiohttp closes it from another task":
                    writer.write(client_frame(WSMsgType.CLOSE, payload[:2]))  # the answer
                    await asyncio.wait_for(closing, TIMEOUT)
                assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # nothing after it
                break
            seen.add(opcode)
        assert closed_with == close_code
        assert seen <= {WSMsgType.BINARY, WSMsgType.PING}
        if close_code is None:
            assert WSMsgType.PING in seen  # the pings aiohttp sent before it gave up
        await eventually(lambda: hub.clients == 0)
    finally:
        stop.set()
        writer.close()
        await broadcaster  # raises what broadcast raised, if anything
    assert hub.broadcast("t", b"after") == 0
    assert [r for r in caplog.records if r.name == "asyncio"] == []  # no write to a closed socket
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


async def test_a_broadcast_is_encoded_once_and_shared_by_all_clients(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, _, client = await start()
    raw = [await connect(hub, client, "/ws?topic=t") for _ in range(5)]
    cbor = [await connect(hub, client, "/ws?topic=t&envelope=cbor") for _ in range(5)]
    encoded: list[bytes] = []

    def encode_and_keep(message: Message) -> bytes:
        encoded.append(encode_message(message))
        return encoded[-1]

    framed: list[bytes] = []

    def frame_and_keep(payload: bytes) -> bytes:
        framed.append(payload)
        return encode_binary_frame(payload)

    monkeypatch.setattr(hub_module, "encode_message", encode_and_keep)
    monkeypatch.setattr(hub_module, "encode_binary_frame", frame_and_keep)
    payload = bytes(range(256)) * 16  # 4 KiB: every socket takes it at once
    assert hub.broadcast("t", payload) == 10
    assert len(encoded) == 1  # one CBOR encoding for all the envelope clients
    assert len(framed) == 2  # one wire frame for the raw clients, one for the envelope ones
    for ws in raw:
        assert await recv(ws) == payload
    for ws in cbor:
        assert await recv(ws) == encoded[0]
    assert decode_message(encoded[0]) == Message(topic="t", payload=payload)


async def test_closed_clients_are_released(start: Start) -> None:
    hub, _, client = await start()
    sockets = [await connect(hub, client, "/ws?topic=t&topic=u.*") for _ in range(3)]
    await sockets[0].close()
    await sockets[1].close()
    await eventually(lambda: hub.clients == 1)
    assert hub.broadcast("t", b"x") == 1
    assert hub.broadcast("u.v", b"y") == 1
    await sockets[2].close()
    await eventually(lambda: hub.clients == 0)
    assert hub.broadcast("t", b"x") == 0
    assert hub.stats().clients == 0


async def test_connection_reset_is_released_quietly(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub, _, client = await start()
    url = client.make_url("/ws?topic=t")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        f"GET {url.path_qs} HTTP/1.1\r\nHost: {url.host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101")
    await eventually(lambda: hub.clients == 1)
    # Linger 0: closing sends a TCP reset, as a crashed browser or a dropped network would.
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    for _ in range(50):
        hub.broadcast("t", b"x" * 65536)
        await asyncio.sleep(0)
    await eventually(lambda: hub.clients == 0)
    assert hub.broadcast("t", b"x") == 0
    assert hub.stats().slow_disconnects == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


async def test_normal_disconnects_log_no_errors(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub, _, client = await start()
    ws = await connect(hub, client, "/ws?topic=t")
    hub.broadcast("t", b"x" * 100_000)
    await ws.close()

    def hub_messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "tinywasm.hub"]

    # The hub logs the disconnect once it has released the client: the last step.
    await eventually(lambda: any("disconnected" in m for m in hub_messages()), "the disconnect")
    assert hub.clients == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    assert any("connected: topics t" in m for m in hub_messages())


async def test_close_sends_1001_and_is_safe_twice(start: Start) -> None:
    hub, _, client = await start()
    sockets = [await connect(hub, client, "/ws?topic=t") for _ in range(2)]
    hub.broadcast("t", b"before")
    await asyncio.wait_for(hub.close(), TIMEOUT)
    await asyncio.wait_for(hub.close(), TIMEOUT)
    assert hub.closed
    for ws in sockets:
        frames, code, reason = await recv_until_close(ws)
        assert frames in ([], [b"before"])
        assert (code, reason) == (1001, "server shutting down")
    await eventually(lambda: hub.clients == 0)
    assert hub.broadcast("t", b"after") == 0
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws?topic=t")
    assert info.value.status == 503


async def test_close_aborts_a_client_that_does_not_answer(
    start: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hub_module, "CLOSE_TIMEOUT", 0.3)
    hub, _, client = await start(queue_bytes=64 * 1024 * 1024)  # never closed as slow
    _, stuck = await stuck_client(hub, client, "/ws?topic=big")
    block = bytes(256 * 1024)
    for _ in range(100):  # ~25 MiB: more than the socket buffers hold, so sends block
        hub.broadcast("big", block)
        await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(hub.close(), TIMEOUT)
    assert 0.3 <= asyncio.get_running_loop().time() - started < TIMEOUT
    assert hub.clients == 0
    assert any("did not close within 0.3s: aborted" in r.getMessage() for r in caplog.records)
    stuck.close()


async def test_concurrent_close_calls_both_wait(start: Start) -> None:
    hub, _, client = await start()
    await connect(hub, client, "/ws?topic=t")
    await asyncio.wait_for(asyncio.gather(hub.close(), hub.close()), TIMEOUT)
    assert hub.clients == 0


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="queue_size must be at least 1"):
        Hub(publish=print, inbound=[], queue_size=0)
    with pytest.raises(ValueError, match="queue_bytes must be at least 1"):
        Hub(publish=print, inbound=[], queue_bytes=0)
    with pytest.raises(ValueError, match="max_frame must be at least 1"):
        Hub(publish=print, inbound=[], max_frame=0)
    with pytest.raises(ValueError, match="rate_limit must be zero"):
        Hub(publish=print, inbound=[], rate_limit=-1)
    with pytest.raises(ValueError, match="rate_limit must be zero"):
        Hub(publish=print, inbound=[], rate_limit=float("nan"))
    with pytest.raises(ValueError, match="is not an origin"):
        Hub(publish=print, inbound=[], origins=["example.com"])
    with pytest.raises(TopicError, match="empty token"):
        Hub(publish=print, inbound=["a..b"])


async def test_broadcast_rejects_a_bad_topic(start: Start) -> None:
    hub, _, _ = await start()
    with pytest.raises(TopicError, match="wildcard"):
        hub.broadcast("chat.*", b"x")
