"""Untrusted clients: frame size, rate limit, origins, malformed input, slow consumers, admin.

The hub is served by a real AppRunner on 127.0.0.1 and driven by real clients:
aiohttp's, or a raw socket sending hand-made frames. The pure rules (token
bucket, log limiter, admin decision) are tested directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import ServerFactory
from tests.support import eventually
from tinywasm_wasi.config import MiB
from tinywasm_wasi.policy.ratelimit import LineGate, LogLimiter, TokenBucket
from tinywasm_wasi.web.admin import AdminGuard, AdminRefusal, decide_admin, is_loopback
from tinywasm_wasi.web.hub import Hub

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 5.0
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# -- a hub on a real loopback server ------------------------------------------------------


@dataclass
class Published:
    """The hub's `publish` callable: records (topic, payload, loop time)."""

    items: list[tuple[str, bytes, float]] = field(default_factory=list)

    def __call__(self, topic: str, payload: bytes, sender: str = "") -> None:
        self.items.append((topic, payload, asyncio.get_running_loop().time()))

    def payloads(self, prefix: bytes = b"") -> list[bytes]:
        return [p for _, p, _ in self.items if p.startswith(prefix)]


@dataclass
class Served:
    hub: Hub
    published: Published
    host: str
    port: int
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def connect(self, path: str = "/ws?topic=chat") -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket and wait until the hub has registered it."""
        before = self.hub.clients
        ws = await self.session.ws_connect(self.base + path)
        await eventually(lambda: self.hub.clients > before)
        return ws


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve a Hub at /ws on 127.0.0.1, as WasiServer does (AppRunner, on_shutdown close)."""
    cleanups: list[Callable[[], Awaitable[object]]] = []

    async def make(**settings: object) -> Served:
        settings.setdefault("inbound", ["chat"])
        published = Published()
        hub = Hub(publish=published, **settings)  # type: ignore[arg-type]

        async def close_hub(_app: web.Application) -> None:
            await hub.close()

        app = web.Application()
        app.router.add_get("/ws", hub.handle)
        app.on_shutdown.append(close_hub)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        cleanups.append(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        session = aiohttp.ClientSession()
        cleanups.append(session.close)
        return Served(hub, published, "127.0.0.1", runner.addresses[0][1], session)

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()


async def recv_until_close(
    ws: aiohttp.ClientWebSocketResponse, limit: int = 10_000
) -> tuple[list[bytes], int, str]:
    """Frames received before the close, then the close code and reason."""
    frames: list[bytes] = []
    for _ in range(limit):
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type is WSMsgType.CLOSE:
            return frames, msg.data, msg.extra or ""
        assert msg.type is WSMsgType.BINARY, msg
        frames.append(msg.data)
    pytest.fail(f"no close frame after {limit} frames")


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records with a traceback or at ERROR and above (there should be none)."""
    return [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.exc_info or r.levelno >= logging.ERROR
    ]


# -- a raw WebSocket client ---------------------------------------------------------------


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One client frame, masked; `length` overrides the declared payload length."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", n)
    mask = b"\x37\xfa\x21\x3d"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A socket that speaks HTTP and WebSocket by hand, to send what real clients would not."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, served: Served) -> RawClient:
        reader, writer = await asyncio.open_connection(served.host, served.port)
        return cls(reader, writer)

    async def request(self, head: str) -> tuple[int, str]:
        """Send an HTTP request head; return the status and, unless 101, the body."""
        self.writer.write(head.encode("latin-1"))
        response = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status = int(response.split(b" ", 2)[1])
        if status == 101:
            return status, ""
        length = 0
        for line in response.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)
        return status, body.decode()

    async def upgrade(self, served: Served, path: str = "/ws?topic=chat") -> None:
        status, body = await self.request(
            f"GET {path} HTTP/1.1\r\nHost: {served.host}:{served.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert status == 101, body

    async def read_frame(self) -> tuple[int, bytes]:
        """The server's next frame (unmasked): opcode and payload."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), TIMEOUT)

    async def read_close(self) -> tuple[int, str]:
        """Skip data frames until the close frame; return its code and reason."""
        for _ in range(1000):
            opcode, payload = await self.read_frame()
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode()
        pytest.fail("no close frame")

    async def at_eof(self) -> bool:
        """True once the server has closed the TCP connection."""
        rest = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        return rest == b"" and self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def raw_clients() -> AsyncIterator[Callable[[Served], Awaitable[RawClient]]]:
    clients: list[RawClient] = []

    async def make(served: Served) -> RawClient:
        client = await RawClient.open(served)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# -- 1. frame size ------------------------------------------------------------------------


async def test_a_frame_over_the_limit_closes_with_1009_and_a_reason(serve: Serve) -> None:
    served = await serve(max_frame=1000)
    ws = await served.connect()
    await ws.send_bytes(b"a" * 1000)  # exactly the limit: accepted
    await ws.send_str("b" * 1001)
    frames, code, reason = await recv_until_close(ws)
    assert (frames, code) == ([], 1009)
    assert reason == "frame too big: the limit is 1000 bytes (the server's --ws-max-frame setting)"
    assert served.published.payloads() == [b"a" * 1000]
    assert served.hub.stats().inbound_refused == 1
    await eventually(lambda: served.hub.clients == 0)


async def test_a_huge_declared_length_is_refused_before_its_payload_arrives(
    serve: Serve, raw_clients: Callable[[Served], Awaitable[RawClient]]
) -> None:
    served = await serve(max_frame=1000)
    client = await raw_clients(served)
    await client.upgrade(served)
    # Only the header, claiming 1 TiB: the refusal cannot wait for the payload.
    client.writer.write(frame(0x2, length=1 << 40)[:10])
    assert await client.read_close() == (
        1009,
        "frame too big: the limit is 1000 bytes (the server's --ws-max-frame setting)",
    )
    assert await client.at_eof()
    assert served.published.items == []


async def test_fragments_count_towards_the_limit_together(
    serve: Serve, raw_clients: Callable[[Served], Awaitable[RawClient]]
) -> None:
    served = await serve(max_frame=1000)
    client = await raw_clients(served)
    await client.upgrade(served)
    client.writer.write(frame(0x2, b"x" * 600, fin=False) + frame(0x0, b"y" * 600))
    code, _ = await client.read_close()
    assert code == 1009
    assert served.published.items == []


# -- 2. inbound rate limit ----------------------------------------------------------------


async def test_over_the_rate_a_client_is_slowed_and_loses_nothing(serve: Serve) -> None:
    rate, count = 20, 60  # burst = max(1, rate) = 20
    served = await serve(rate_limit=rate)
    loop = asyncio.get_running_loop()
    started = loop.time()
    flooder = await served.connect()
    other = await served.connect()
    for i in range(count):
        await flooder.send_bytes(b"a%d" % i)
    # Another client on the same server keeps its own budget: not held up.
    for i in range(10):
        await other.send_bytes(b"b%d" % i)
    await eventually(lambda: len(served.published.payloads(b"b")) == 10)
    flooded_before_other_finished = len(served.published.payloads(b"a"))
    assert flooded_before_other_finished <= count - 20  # the flooder was still held back

    await eventually(lambda: len(served.published.payloads(b"a")) == count, timeout=20)
    assert served.published.payloads(b"a") == [b"a%d" % i for i in range(count)]
    assert served.published.payloads(b"b") == [b"b%d" % i for i in range(10)]
    last = max(t for _, p, t in served.published.items if p.startswith(b"a"))
    # Lower bound only: the bucket starts full with `rate` tokens, then refills at `rate`/s.
    assert last - started >= (count - rate) / rate - 0.05
    assert served.hub.stats().inbound_throttled >= (count - rate) // 2  # some refill meanwhile
    assert served.hub.stats().inbound_published == count + 10
    assert not flooder.closed and not other.closed


async def test_rate_limit_zero_is_off(serve: Serve) -> None:
    served = await serve(rate_limit=0)
    ws = await served.connect()
    for i in range(300):
        await ws.send_bytes(b"%d" % i)
    await eventually(lambda: len(served.published.items) == 300)
    assert served.published.payloads() == [b"%d" % i for i in range(300)]
    assert served.hub.stats().inbound_throttled == 0


async def test_a_throttled_client_is_still_closed_promptly_on_shutdown(serve: Serve) -> None:
    served = await serve(rate_limit=0.05)  # a burst of 1, then one frame every 20 s
    ws = await served.connect()
    for i in range(5):
        await ws.send_bytes(b"%d" % i)
    await eventually(lambda: served.hub.stats().inbound_throttled == 1)
    received = asyncio.create_task(recv_until_close(ws))  # a client answers the close
    # Within TIMEOUT, far less than the 20 s the reader was told to wait.
    await asyncio.wait_for(served.hub.close(), TIMEOUT)
    _, code, _ = await received
    assert code == 1001
    await eventually(lambda: served.hub.clients == 0)
    assert served.published.payloads() == [b"0"]  # the waiting frame is not published


# -- 3. origins ---------------------------------------------------------------------------


async def test_default_origin_policy_admits_own_origin_and_no_origin(serve: Serve) -> None:
    served = await serve()
    own = f"http://{served.host}:{served.port}"
    for headers in ({}, {"Origin": own}, {"Origin": own.replace("http:", "https:")}):
        async with served.session.ws_connect(served.base + "/ws?topic=chat", headers=headers) as ws:
            await eventually(lambda: served.hub.clients == 1)
            await ws.send_str("hi")
            await eventually(lambda: len(served.published.items) == 1)
        await eventually(lambda: served.hub.clients == 0)
        served.published.items.clear()
    assert served.hub.stats().origins_refused == 0


@pytest.mark.parametrize(
    ("origins", "origin"),
    [
        ((), "http://evil.example"),
        ((), "http://localhost:1"),
        ((), "null"),
        (("https://app.example",), "https://evil.example"),
    ],
)
async def test_a_refused_origin_gets_403_before_the_upgrade(
    serve: Serve, origins: tuple[str, ...], origin: str
) -> None:
    served = await serve(origins=origins)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await served.session.ws_connect(served.base + "/ws?topic=chat", headers={"Origin": origin})
    assert info.value.status == 403
    async with served.session.get(
        served.base + "/ws?topic=chat", headers={"Origin": origin}
    ) as response:
        assert response.status == 403
        text = await response.text()
    assert f"origin {origin!r} may not open /ws" in text
    assert "--ws-origins / TINYWASM_WS_ORIGINS" in text
    assert served.hub.clients == 0
    assert served.hub.stats().origins_refused == 2


async def test_listed_origins_and_star(serve: Serve) -> None:
    listed = await serve(origins=("https://app.example",))
    url = listed.base + "/ws?topic=chat"
    async with listed.session.ws_connect(url, headers={"Origin": "https://app.example"}):
        pass
    own = {"Origin": listed.base}  # a list replaces the default: own origin not implied
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await listed.session.ws_connect(url, headers=own)
    anything = await serve(origins=("*",))
    async with anything.session.ws_connect(
        anything.base + "/ws?topic=chat", headers={"Origin": "http://evil.example"}
    ):
        pass


def test_a_bad_origin_setting_fails_at_start() -> None:
    with pytest.raises(ValueError, match=r"'app\.example/x' is not an origin"):
        Hub(publish=print, inbound=[], origins=["app.example/x"])


# -- 5. malformed input: a clear 4xx or close code, never a 500 or a traceback --------------


@pytest.mark.parametrize(
    ("head", "status", "text"),
    [
        ("GET /ws?topic=chat HTTP/1.1\r\nHost: h\r\n\r\n", 400, "/ws is a WebSocket endpoint"),
        ("GET /ws HTTP/1.1\r\nHost: h\r\n\r\n", 400, "missing ?topic="),
        ("GET /ws?topic=a..b HTTP/1.1\r\nHost: h\r\n\r\n", 400, "invalid topic 'a..b'"),
        (
            "GET /ws?topic=chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 12\r\n\r\n",
            400,
            "(handshake refused: Unsupported version: 12)",
        ),
        (
            "GET /ws?topic=chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
            400,
            "(handshake refused: Handshake error: 'c2hvcnQ=')",
        ),
        (
            "GET /ws?topic=chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            400,
            "(handshake refused: Handshake error: None)",
        ),
        (
            "GET /ws?topic=chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            400,
            "(handshake refused: No CONNECTION upgrade hdr: None)",
        ),
        ("POST /ws?topic=chat HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", 405, ""),
    ],
)
async def test_bad_http_requests_get_a_4xx(
    serve: Serve,
    raw_clients: Callable[[Served], Awaitable[RawClient]],
    caplog: pytest.LogCaptureFixture,
    head: str,
    status: int,
    text: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    served = await serve()
    client = await raw_clients(served)
    got, body = await client.request(head)
    assert got == status
    assert text in body
    assert served.hub.clients == 0
    assert no_tracebacks(caplog) == []


async def test_a_garbage_request_line_gets_400(
    serve: Serve,
    raw_clients: Callable[[Served], Awaitable[RawClient]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # aiohttp's own parser answers this one; it logs the parse error with a traceback at
    # DEBUG ("Error handling request"), so only INFO and above are checked here.
    caplog.set_level(logging.INFO)
    served = await serve()
    client = await raw_clients(served)
    assert (await client.request("GARBAGE\r\n\r\n"))[0] == 400
    assert no_tracebacks(caplog) == []


UTF8_REASON = "text frame is not valid UTF-8: send other bytes as a binary frame"
UNMASKED_REASON = "protocol error: client frames must be masked (RFC 6455 section 5.1)"
PROTOCOL_REASON = "protocol error: malformed or unexpected WebSocket frame (see RFC 6455)"


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (frame(0x1, b"ok \xff\xfe"), 1007, UTF8_REASON),
        (frame(0x1, "é".encode()[:1]), 1007, UTF8_REASON),
        (frame(0x1, b"\xc3", fin=False) + frame(0x0, b"\x28"), 1007, UTF8_REASON),
        (frame(0x3, b"reserved opcode"), 1002, PROTOCOL_REASON),
        (frame(0xB, b"reserved control opcode"), 1002, PROTOCOL_REASON),
        (frame(0x0, b"continuation of nothing"), 1002, PROTOCOL_REASON),
        (frame(0x2, b"a", fin=False) + frame(0x2, b"b"), 1002, PROTOCOL_REASON),
        (frame(0x9, b"fragmented ping", fin=False), 1002, PROTOCOL_REASON),
        (frame(0x9, b"p" * 126), 1002, PROTOCOL_REASON),
        (frame(0x2, b"compressed?", rsv=0x40), 1002, PROTOCOL_REASON),
        (frame(0x8, struct.pack("!H", 999)), 1002, PROTOCOL_REASON),
        (frame(0x8, b"\x03"), 1002, PROTOCOL_REASON),
        # Bytes that are not frames read as an unmasked frame header: refused as such.
        (b"hello, this is not a frame\r\n", 1002, UNMASKED_REASON),
    ],
    ids=[
        "invalid-utf8",
        "truncated-utf8",
        "utf8-split-across-fragments",
        "reserved-opcode",
        "reserved-control-opcode",
        "continuation-without-start",
        "new-message-inside-fragmented-one",
        "fragmented-control-frame",
        "control-frame-over-125-bytes",
        "reserved-bit",
        "invalid-close-code",
        "one-byte-close-payload",
        "garbage",
    ],
)
async def test_malformed_frames_close_with_a_code_and_reason(
    serve: Serve,
    raw_clients: Callable[[Served], Awaitable[RawClient]],
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    code: int,
    reason: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    served = await serve(inbound=[">"])
    client = await raw_clients(served)
    await client.upgrade(served)
    await eventually(lambda: served.hub.clients == 1)
    client.writer.write(data)
    assert await client.read_close() == (code, reason)
    assert await client.at_eof()
    await eventually(lambda: served.hub.clients == 0)
    assert served.published.items == []
    assert served.hub.stats().inbound_refused == 1
    assert no_tracebacks(caplog) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"ws 127.0.0.1 closed with {code}: {reason}")


async def test_a_good_frame_before_the_bad_one_is_still_published(
    serve: Serve, raw_clients: Callable[[Served], Awaitable[RawClient]]
) -> None:
    served = await serve()
    client = await raw_clients(served)
    await client.upgrade(served)
    client.writer.write(frame(0x2, b"first") + frame(0x1, b"caf\xe9"))
    assert (await client.read_close())[0] == 1007
    assert served.published.payloads() == [b"first"]


# -- 6. slow consumers by bytes -----------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
async def test_a_client_over_the_byte_cap_is_closed_with_1013_and_memory_stays_bounded(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    queue_bytes = 2 * MiB
    block = bytes(range(256)) * 1024  # 256 KiB
    count = 320  # 80 MiB broadcast in all: far more than the cap
    served = await serve(queue_bytes=queue_bytes, queue_size=10_000)
    slow = await served.connect("/ws?topic=big")  # never reads until it is disconnected
    fast = await served.connect("/ws?topic=big")
    baseline = peak = rss_bytes()
    sent: list[bytes] = []
    slow_reader: asyncio.Task[tuple[list[bytes], int, str]] | None = None
    for i in range(count):
        payload = i.to_bytes(4, "big") + block  # a new 256 KiB object each time
        assert served.hub.broadcast("big", payload) >= 1
        sent.append(payload[:4])
        msg = await asyncio.wait_for(fast.receive(), TIMEOUT)
        assert msg.data == payload  # the reading client gets everything, in order
        del payload, msg
        peak = max(peak, rss_bytes())
        if slow_reader is None and served.hub.stats().slow_disconnects:
            slow_reader = asyncio.create_task(recv_until_close(slow))
    assert slow_reader is not None, f"{count} large broadcasts and the slow client is still on"
    frames, code, reason = await slow_reader
    assert (code, reason) == (1013, f"slow consumer: over {queue_bytes} bytes queued")
    assert [f[:4] for f in frames] == sent[: len(frames)]  # in order, no gap
    assert len(frames) < count // 2
    assert served.hub.stats().slow_disconnects == 1
    # The cap plus socket and client buffers, with room for the allocator: not 80 MiB.
    assert peak - baseline < 4 * queue_bytes + 16 * MiB, (peak - baseline) / MiB
    slow_lines = [r for r in caplog.records if "slow consumer" in r.getMessage()]
    assert len(slow_lines) == 1
    assert "--ws-queue-bytes 2097152" in slow_lines[0].getMessage()


async def test_one_frame_larger_than_the_byte_cap_is_still_delivered(serve: Serve) -> None:
    served = await serve(queue_bytes=1000)
    ws = await served.connect("/ws?topic=t")
    assert served.hub.broadcast("t", b"x" * 5000) == 1  # an empty queue takes any frame
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.data == b"x" * 5000
    assert served.hub.stats().slow_disconnects == 0


# -- rate limits as plain objects ---------------------------------------------------------


def test_token_bucket_starts_full_then_spaces_tokens_out() -> None:
    bucket = TokenBucket(20, now=100.0)
    assert bucket.burst == 20
    assert [bucket.take(100.0) for _ in range(20)] == [0.0] * 20
    assert bucket.take(100.0) == pytest.approx(1 / 20)
    assert bucket.take(100.0) == pytest.approx(2 / 20)  # each waiter queues behind the last


def test_token_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(10, burst=2, now=0.0)
    assert [bucket.take(0.0), bucket.take(0.0)] == [0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.2) == pytest.approx(0.0)  # paid back its wait, then one more
    assert bucket.take(100.0) == 0.0  # a long pause saves up only `burst`
    assert bucket.take(100.0) == 0.0
    assert bucket.take(100.0) == pytest.approx(0.1)


def test_try_take_refuses_without_running_into_debt() -> None:
    bucket = TokenBucket(10, burst=2, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(4)] == [True, True, False, False]
    assert bucket.try_take(0.1)  # refusals cost nothing: one token a tenth of a second
    assert not bucket.try_take(0.1)


def test_token_bucket_keeps_the_average_rate() -> None:
    bucket = TokenBucket(50, now=0.0)
    now = 0.0
    for _ in range(1000):  # a caller that waits exactly as told
        now += bucket.take(now)
    assert now == pytest.approx((1000 - 50) / 50)


def test_token_bucket_rate_below_one_has_a_burst_of_one() -> None:
    bucket = TokenBucket(0.5, now=0.0)
    assert bucket.burst == 1
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(2.0)


def test_token_bucket_ignores_a_clock_going_back() -> None:
    bucket = TokenBucket(1, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0, None, "rate must be more than zero"),
        (-1, None, "rate must be more than zero"),
        (float("nan"), None, "rate must be more than zero"),
        (float("inf"), None, "rate must be more than zero"),
        (5, 0.5, "burst must be at least 1"),
    ],
)
def test_token_bucket_checks_its_arguments(rate: float, burst: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBucket(rate, burst=burst)


def test_log_limiter_logs_one_line_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("tinywasm.test"), interval=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "tinywasm.test"):
        assert limiter("client %s refused", "a")
        assert not limiter("client %s refused", "b")
        assert not limiter("client %s refused", "c")
        assert limiter.suppressed == 2
        now[0] = 0.99
        assert not limiter("client %s refused", "d")
        now[0] = 1.5
        assert limiter("client %s refused", "e")
        now[0] = 3.0
        assert limiter("client %s refused", "f")
    assert [r.getMessage() for r in caplog.records] == [
        "client a refused",
        "client e refused (3 similar lines suppressed)",
        "client f refused",
    ]
    assert limiter.suppressed == 0


# -- 4. admin endpoints -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.168.1.5", False),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2001:db8::1", False),
        ("0.0.0.0", False),
        ("localhost", False),  # a name, not an address: remote is always an address
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(remote: str | None, expected: bool) -> None:
    assert is_loopback(remote) is expected


NO_TOKEN_403 = "served only to clients on the server's own machine"


@pytest.mark.parametrize(
    ("remote", "token", "authorization", "status", "text"),
    [
        # No token set: loopback only, whatever the header says.
        ("127.0.0.1", None, None, None, ""),
        ("::1", None, "Bearer anything", None, ""),
        ("192.168.1.5", None, None, 403, NO_TOKEN_403),
        ("192.168.1.5", None, None, 403, "set --admin-token / TINYWASM_ADMIN_TOKEN"),
        ("192.168.1.5", None, "Bearer guess", 403, NO_TOKEN_403),
        (None, None, None, 403, NO_TOKEN_403),
        # A token set: everyone must send it, loopback clients too.
        ("192.168.1.5", "s3cret", "Bearer s3cret", None, ""),
        ("127.0.0.1", "s3cret", "bearer  s3cret ", None, ""),
        ("127.0.0.1", "s3cret", None, 401, "send Authorization: Bearer <token>"),
        ("192.168.1.5", "s3cret", None, 401, "needs the server's admin token"),
        ("192.168.1.5", "s3cret", "", 401, "send Authorization: Bearer"),
        ("192.168.1.5", "s3cret", "Bearer", 401, "send Authorization: Bearer"),
        ("192.168.1.5", "s3cret", "Bearer ", 401, "send Authorization: Bearer"),
        ("192.168.1.5", "s3cret", "Basic czNjcmV0", 401, "send Authorization: Bearer"),
        ("192.168.1.5", "s3cret", "s3cret", 401, "send Authorization: Bearer"),
        ("192.168.1.5", "s3cret", "Bearer S3CRET", 403, "admin token refused"),
        ("127.0.0.1", "s3cret", "Bearer s3cre", 403, "admin token refused"),
        ("127.0.0.1", "s3cret", "Bearer s3cret2", 403, "admin token refused"),
        ("127.0.0.1", "s3cret", "Bearer s3crét", 403, "--admin-token / TINYWASM_ADMIN_TOKEN"),
    ],
)
def test_decide_admin(
    remote: str | None, token: str | None, authorization: str | None, status: int | None, text: str
) -> None:
    decision = decide_admin(remote, token, authorization)
    if status is None:
        assert decision is None
    else:
        assert isinstance(decision, AdminRefusal)
        assert decision.status == status
        assert text in decision.text


def test_admin_guard_refuses_an_empty_token() -> None:
    with pytest.raises(ValueError, match="the admin token is empty"):
        AdminGuard("  ")


ADMIN_POSTS = ["/api/modules/chat/reload", "/api/modules/chat/rollback"]


@pytest.mark.parametrize("path", ADMIN_POSTS)
async def test_admin_endpoints_need_the_token_when_one_is_set(
    make_server: ServerFactory, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(admin_token="s3cret", watch=False)
    url = server.url + path
    async with aiohttp.ClientSession() as http:
        async with http.post(url) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Authorization: Bearer <token>" in await response.text()
        async with http.post(url, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 403
            assert "admin token refused" in await response.text()
        async with http.post(url, headers={"Authorization": "Bearer s3cret"}) as response:
            # Past the guard: reload answers 200, rollback 409 (no earlier version).
            assert response.status in (200, 409), await response.text()
            assert "admin" not in await response.text()
    refused = [r.getMessage() for r in caplog.records if r.name == "tinywasm.admin"]
    assert len(refused) == 1  # two refusals within a second: one line
    assert f"admin POST {path} from 127.0.0.1 refused with 401" in refused[0]


async def test_admin_endpoints_serve_loopback_clients_when_no_token_is_set(
    make_server: ServerFactory,
) -> None:
    server = await make_server(watch=False)
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url + "/api/modules/chat/reload") as response,
    ):
        assert response.status == 200
        assert (await response.json())["name"] == "chat"


async def test_read_only_endpoints_stay_public_with_a_token(make_server: ServerFactory) -> None:
    server = await make_server(admin_token="s3cret", watch=False)
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/api/modules", "/api/modules/chat/history"):
            async with http.get(server.url + path) as response:
                assert response.status == 200, path


async def test_a_guarded_handler_is_not_run_when_refused() -> None:
    ran: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        ran.append(request.path)
        return web.Response(text="done")

    guard = AdminGuard("s3cret")
    app = web.Application()
    app.router.add_post("/admin", guard(handler))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/admin"
        async with aiohttp.ClientSession() as http:
            async with http.post(url) as response:
                assert response.status == 401
            assert ran == []
            async with http.post(url, headers={"Authorization": "Bearer s3cret"}) as response:
                assert (response.status, await response.text()) == (200, "done")
        assert ran == ["/admin"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0.0], [0]),
        ([0.0, 0.5, 0.9, 1.0], [0, None, None, 2]),
        ([0.0, 1.0, 2.0], [0, 0, 0]),
        ([5.0, 5.0, 5.0, 5.99, 6.0, 6.1, 9.0], [0, None, None, None, 3, None, 1]),
    ],
)
def test_line_gate_lets_one_line_through_per_interval_and_counts_the_held(
    times: list[float], expected: list[int | None]
) -> None:
    now = [0.0]
    gate = LineGate(interval=1.0, clock=lambda: now[0])
    admitted = []
    for t in times:
        now[0] = t
        admitted.append(gate.admit())
    assert admitted == expected
    assert LineGate.note(0) == ""
    assert LineGate.note(3) == " (3 similar lines suppressed)"
