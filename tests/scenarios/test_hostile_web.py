"""Issue 16, the web-facing part: a real server, real sockets, hostile bytes.

Each test sends what a browser or a careful client never would (raw asyncio
streams, so any byte can be sent) and checks the status, the close code or the
log. They were written against the defects the hostile run found, and failed
before the fixes (the figures are in docs/security.md, "Hostile environment").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import shutil
import struct
from pathlib import Path

import cbor2
import pytest

from tests.conftest import ServerFactory
from tests.support import eventually
from tinywasm_wasi.config import DEFAULT_MODULES_DIR
from tinywasm_wasi.web import client_errors

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 10.0
TOKEN = "s3cr3t-admin-token-0123456789"


def examples(into: Path) -> Path:
    """A fresh copy of the example modules."""
    for path in DEFAULT_MODULES_DIR.glob("*.wasm"):
        shutil.copy(path, into / path.name)
    return into


async def exchange(port: int, data: bytes, *, timeout: float = TIMEOUT) -> bytes:
    """Send `data` on a new connection; everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


def request(
    port: int, path: str, headers: bytes = b"", method: bytes = b"GET", host: bytes | None = None
) -> bytes:
    host = b"127.0.0.1:%d" % port if host is None else host
    return (
        method
        + b" "
        + path.encode()
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\n"
        + headers
        + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """The log as a handler would write it, tracebacks included."""
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


# -- 5. log lines cannot be forged; module names keep to one character set -------------


async def test_a_file_name_with_a_newline_cannot_forge_a_log_line(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    modules = examples(tmp_path)
    (modules / "x\nERROR tinywasm.host: forged.wasm").write_bytes(b"junk")
    (modules / "a b.wasm").write_bytes((modules / "echo.wasm").read_bytes())
    (modules / "caf\udce9.wasm").write_bytes((modules / "echo.wasm").read_bytes())  # not UTF-8
    server = await make_server(modules_dir=modules, watch=False)
    lines = log_text(caplog).split("\n")
    assert not [line for line in lines if line.startswith("ERROR tinywasm.host: forged")]
    assert any("x\\nERROR tinywasm.host: forged.wasm" in line for line in lines)
    assert not any("\udce9" in line for line in lines)  # a UTF-8 stream could not write it
    refused = server.host.refused
    assert "has ' '" in refused["a b.wasm"]
    assert "names use letters, digits" in refused["a b.wasm"]
    assert "'\\udce9'" in refused["caf\udce9.wasm"]
    assert "a b" not in server.host.modules and "echo" in server.host.modules
    answer = await exchange(server.port, request(server.port, "/api/modules"))
    assert "a b.wasm" in json.loads(body_of(answer))["refused"]


async def test_a_bad_name_dropped_in_while_serving_is_ignored_with_an_escaped_line(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    modules = examples(tmp_path)
    server = await make_server(modules_dir=modules, watch_debounce=0.05)
    (modules / "y\rWARNING fake.wasm").write_bytes((modules / "echo.wasm").read_bytes())
    await eventually(lambda: "y\\rWARNING fake.wasm" in log_text(caplog))
    assert not any("\r" in r.getMessage() for r in caplog.records)
    assert set(server.host.modules) == {m for m in server.host.modules if " " not in m}


# -- 7 and 11. client mistakes: one rate-limited line, no traceback, no secret -----------

MALFORMED = [
    b"GARBAGE\r\n\r\n",  # not a request line
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",  # header too long
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",  # no colon
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",  # NUL in a value
    b"GET /" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # request line too long
    b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # traversal
    b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
]


async def test_malformed_requests_get_a_4xx_and_at_most_one_log_line_a_second(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await make_server(modules_dir=examples(tmp_path), watch=False)
    port = server.port
    caplog.clear()
    rounds = 30
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(rounds):
        answers = await asyncio.gather(*(exchange(port, data) for data in MALFORMED))
        assert all(400 <= status_of(a) < 500 for a in answers), [a[:40] for a in answers]
    elapsed = loop.time() - started
    assert b"root:" not in b"".join(answers)
    records = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert [r for r in caplog.records if r.exc_info or r.exc_text] == []
    # One line a second at most (plus the first), whatever the number of bad requests.
    assert len(records) <= elapsed + 2, [r.getMessage() for r in records]
    assert all(r.getMessage().startswith("bad request from 127.0.0.1: 4") for r in records)
    assert sum(len(r.getMessage()) for r in caplog.records) < 2_000
    assert client_errors.install().seen >= rounds * 5  # they were seen, and left out
    assert status_of(await exchange(port, request(port, "/healthz"))) == 200


async def test_the_admin_token_never_reaches_the_log(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await make_server(modules_dir=examples(tmp_path), watch=False, admin_token=TOKEN)
    port = server.port
    bearer = b"Authorization: Bearer " + TOKEN.encode()
    for headers in (
        bearer + b"\x00x\r\n",  # aiohttp's parser refuses it and used to quote the line
        bearer + b"\xe9\r\n",
        bearer + b"\r\nX-Broken\r\n",
        bearer + b"\r\n",  # a good call
    ):
        answer = await exchange(port, request(port, "/api/modules/echo/reload", headers, b"POST"))
        assert status_of(answer) in (200, 400, 403), answer[:80]
    assert TOKEN not in log_text(caplog)
    assert TOKEN[:12] not in log_text(caplog)


# -- 13. admin calls from web pages, other names and proxies -----------------------------

RELOAD = "/api/modules/echo/reload"


@pytest.mark.parametrize(
    ("headers", "host", "says"),
    [
        (b"Origin: http://evil.example\r\n", None, "cross-origin admin call refused"),
        (b"Origin: null\r\n", None, "cross-origin admin call refused"),
        (b"", b"evil.example", "DNS rebinding"),
        (b"", b"evil.example:1234", "DNS rebinding"),
        (b"X-Forwarded-For: 203.0.113.9\r\n", None, "came through a proxy"),
        (b"Forwarded: for=203.0.113.9\r\n", None, "(it has Forwarded)"),
        (b"X-Real-IP: 203.0.113.9\r\n", None, "(it has X-Real-IP)"),
    ],
)
async def test_admin_calls_from_pages_other_names_and_proxies_are_refused_without_a_token(
    make_server: ServerFactory, tmp_path: Path, headers: bytes, host: bytes | None, says: str
) -> None:
    server = await make_server(modules_dir=examples(tmp_path), watch=False)
    port = server.port
    answer = await exchange(port, request(port, RELOAD, headers, b"POST", host))
    assert status_of(answer) == 403, answer
    assert says in body_of(answer).decode()
    assert [r.trigger for r in server.host.histories["echo"].records] == ["startup"]


@pytest.mark.parametrize(
    ("headers", "host"),
    [
        (b"", None),  # curl on the machine: no Origin
        (b"Origin: http://127.0.0.1:{port}\r\n", None),  # the server's own page
        (b"", b"localhost:{port}"),
        (b"", b"[::1]:{port}"),
    ],
)
async def test_admin_calls_from_the_machine_itself_are_served_without_a_token(
    make_server: ServerFactory, tmp_path: Path, headers: bytes, host: bytes | None
) -> None:
    server = await make_server(modules_dir=examples(tmp_path), watch=False)
    port = server.port
    fill = {b"{port}": str(port).encode()}
    for key, value in fill.items():
        headers = headers.replace(key, value)
        host = None if host is None else host.replace(key, value)
    answer = await exchange(port, request(port, RELOAD, headers, b"POST", host))
    assert status_of(answer) == 200, answer


async def test_with_a_token_a_cross_origin_page_is_still_refused_and_a_proxy_is_fine(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(modules_dir=examples(tmp_path), watch=False, admin_token=TOKEN)
    port = server.port
    bearer = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    evil = await exchange(
        port, request(port, RELOAD, bearer + b"Origin: https://evil.example\r\n", b"POST")
    )
    assert status_of(evil) == 403
    proxied = bearer + b"X-Forwarded-For: 203.0.113.9\r\n"
    answer = await exchange(port, request(port, RELOAD, proxied, b"POST", b"app.example.com"))
    assert status_of(answer) == 200, answer


def test_no_token_on_a_public_address_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    from tinywasm_wasi.config import Config
    from tinywasm_wasi.server import create_app

    caplog.set_level(logging.WARNING)
    create_app(Config(host="0.0.0.0", watch=False))
    create_app(Config(host="127.0.0.1", watch=False))
    create_app(Config(host="0.0.0.0", watch=False, admin_token=TOKEN))
    warned = [r.getMessage() for r in caplog.records if "no admin token is set" in r.getMessage()]
    assert len(warned) == 1
    assert "listens on 0.0.0.0" in warned[0] and "TINYWASM_ADMIN_TOKEN" in warned[0]


# -- 9. header bytes that are not UTF-8 --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "method", "status", "says"),
    [
        ("/m/echo", b"X-A: \xff\r\n", b"GET", 400, "not UTF-8"),
        ("/m/echo_http", b"X-A: \xff\r\n", b"GET", 400, "not UTF-8"),
        ("/m/echo_http", b"Authorization: Bearer \xff\r\n", b"GET", 400, "Authorization header"),
        ("/m/echo", b"X-\xff: 1\r\n", b"GET", 400, ""),
        (RELOAD, b"Authorization: Bearer caf\xe9\r\n", b"POST", 403, "admin token refused"),
        (RELOAD, b"Origin: http://\xff\r\n", b"POST", 403, "cross-origin"),
    ],
)
async def test_header_bytes_that_are_not_utf8_get_a_4xx_with_a_reason(
    make_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    path: str,
    headers: bytes,
    method: bytes,
    status: int,
    says: str,
) -> None:
    token = TOKEN if b"Authorization" in headers and path == RELOAD else None
    server = await make_server(modules_dir=examples(tmp_path), watch=False, admin_token=token)
    port = server.port
    answer = await exchange(port, request(port, path, headers, method))
    assert status_of(answer) == status, answer
    assert says in body_of(answer).decode("utf-8", "replace")
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


WS = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
V13 = b"Sec-WebSocket-Version: 13\r\n"


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        (WS + KEY + V13 + b"Origin: http://\xff\r\n", "the Origin header"),
        (WS + KEY + V13 + b"Origin: http://caf\xc3\xa9.example\r\n", "the Origin header"),
        (WS + b"Sec-WebSocket-Key: \xff\xff\r\n" + V13, "the Sec-WebSocket-Key header"),
        (WS + KEY + b"Sec-WebSocket-Version: 1\xff\r\n", "the Sec-WebSocket-Version header"),
        (WS + KEY + V13 + b"Sec-WebSocket-Protocol: \xfe\r\n", "Sec-WebSocket-Protocol"),
    ],
)
async def test_a_websocket_handshake_with_bytes_that_are_not_ascii_gets_400(
    make_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    headers: bytes,
    says: str,
) -> None:
    server = await make_server(modules_dir=examples(tmp_path), watch=False)
    port = server.port
    answer = await exchange(port, request(port, "/ws?topic=chat", headers))
    assert status_of(answer) == 400, answer
    assert says in body_of(answer).decode()
    assert server.hub.clients == 0
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(
    "path", ["/m/%ff", "/m/caf%C3%A9", "/api/modules/%ff/history", "/m/a%0aERROR"]
)
async def test_odd_module_names_in_urls_get_404_not_500(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    server = await make_server(modules_dir=examples(tmp_path), watch=False)
    port = server.port
    answer = await exchange(port, request(port, path))
    assert status_of(answer) == 404, answer
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


# -- 10 and 16. frames the RFC forbids, oversized frames, and closing under load ---------


def ws_frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    """One client frame; `masked=False` breaks RFC 6455 section 5.1."""
    n = len(payload)
    first = 0x80 | opcode
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 65536:
        head = bytes([first, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = b"\x37\xfa\x21\x3d"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class WsClient:
    """A raw WebSocket client: upgrade by hand, then any bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, topic: str = "chat") -> WsClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            request(port, f"/ws?topic={topic}", WS + KEY + V13).replace(
                b"Connection: close\r\n", b""
            )
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), TIMEOUT)

    async def read_close(self) -> tuple[int, str]:
        for _ in range(100_000):
            opcode, payload = await self.read_frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
        raise AssertionError("no close frame")

    async def ending(self) -> str:
        """How the TCP connection ends: "eof" (a clean close) or "reset"."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), TIMEOUT):
                pass
        except ConnectionResetError:
            return "reset"
        return "eof"

    def close(self) -> None:
        self.writer.close()


async def test_an_unmasked_client_frame_is_closed_with_1002(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(modules_dir=examples(tmp_path), watch=False)
    client = await WsClient.open(server.port)
    before = server.bus.stats().published
    try:
        client.writer.write(ws_frame(0x2, b"unmasked hello", masked=False))
        code, reason = await client.read_close()
        assert code == 1002
        assert "masked" in reason
        assert await client.ending() == "eof"
    finally:
        client.close()
    assert server.bus.stats().published == before  # the frame was not published
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("extra", [1, 4096, 1024 * 1024])
async def test_a_frame_over_the_limit_is_closed_with_1009_not_reset(
    make_server: ServerFactory, tmp_path: Path, extra: int
) -> None:
    limit = 1024 * 1024
    server = await make_server(modules_dir=examples(tmp_path), watch=False, ws_max_frame=limit)
    client = await WsClient.open(server.port)
    try:
        client.writer.write(ws_frame(0x2, b"x" * (limit + extra)))
        code, reason = await client.read_close()
        assert (code, reason.startswith("frame too big")) == (1009, True)
        assert await client.ending() == "eof"
    finally:
        client.close()


async def test_on_shutdown_under_load_every_client_gets_1001_and_a_clean_close(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(
        modules_dir=examples(tmp_path), watch=False, ws_rate_limit=0, ws_inbound=("load",)
    )
    clients = [await WsClient.open(server.port, "load") for _ in range(50)]
    await eventually(lambda: server.hub.clients == 50)
    closing = [asyncio.Event() for _ in clients]

    async def sending(client: WsClient, closed: asyncio.Event) -> None:
        """Frames as fast as the socket takes them, until the server's close arrives."""
        with contextlib.suppress(ConnectionError):
            for i in range(1_000_000):
                if closed.is_set():
                    # the close reply, as RFC 6455 asks; nothing after it
                    client.writer.write(ws_frame(0x8, struct.pack("!H", 1001)))
                    return
                client.writer.write(ws_frame(0x2, b"load %d" % i))
                await client.writer.drain()
                await asyncio.sleep(0)

    async def outcome(client: WsClient, closed: asyncio.Event) -> tuple[int, str]:
        try:
            code, _ = await client.read_close()
        except ConnectionError:
            return 0, "reset before the close frame"
        except asyncio.IncompleteReadError:
            return 0, "closed before the close frame"
        finally:
            closed.set()
        return code, await client.ending()

    senders = [asyncio.create_task(sending(c, e)) for c, e in zip(clients, closing, strict=True)]
    readers = [asyncio.create_task(outcome(c, e)) for c, e in zip(clients, closing, strict=True)]
    await eventually(lambda: server.bus.stats().published >= 5_000)  # under load
    await server.stop()
    outcomes = await asyncio.gather(*readers)
    await asyncio.gather(*senders)
    for client in clients:
        client.close()
    assert collections.Counter(outcomes) == {(1001, "eof"): 50}


# -- 12. public answers name files relative to the modules folder -----------------------


async def test_public_answers_never_carry_the_servers_absolute_paths(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    modules = tmp_path / "mods"
    modules.mkdir()
    examples(modules)
    echo = (modules / "echo.wasm").read_bytes()
    (modules / "bad.wasm").write_bytes(echo)
    (modules / "bad" / "rule.txt").mkdir(parents=True)  # unreadable: a folder
    (modules / "worse.wasm").write_bytes(echo)
    (tmp_path / "worse").mkdir()
    (tmp_path / "worse" / "rule.txt").write_text("a,,b")  # the reference layout, invalid
    (modules / "y.wasm").mkdir()
    server = await make_server(modules_dir=modules, watch=False)
    assert str(tmp_path) in server.host.refused["bad.wasm"]  # the reason as logged
    port = server.port
    # A swap refused for the same reason lands in the module's public history.
    reload = await exchange(port, request(port, "/api/modules/bad/reload", method=b"POST"))
    assert status_of(reload) == 200, reload
    bodies = {}
    for path in ("/api/modules", "/api/modules/bad/history", "/m/bad", "/m/y", "/"):
        answer = await exchange(port, request(port, path))
        bodies[path] = body_of(answer).decode()
        assert str(tmp_path) not in bodies[path], (path, bodies[path])
    assert str(tmp_path) not in body_of(reload).decode()
    assert "cannot read bad/rule.txt" in bodies["/api/modules"]
    assert "../worse/rule.txt: middleware rule" in bodies["/api/modules"]
    assert "cannot read bad/rule.txt" in bodies["/api/modules/bad/history"]


# -- 16 and 8. slow headers; running out of file descriptors -----------------------------


async def test_a_client_trickling_its_headers_gets_408_and_is_closed(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(modules_dir=examples(tmp_path), watch=False, header_timeout=0.5)
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)  # the attack itself: one byte every 50 ms

    sender = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:  # the trickle's next byte met the closed socket first
        answer = b""
    elapsed = loop.time() - started
    sender.cancel()
    writer.close()
    assert answer == b"" or status_of(answer) == 408
    assert 0.4 < elapsed < 3.0  # closed at the deadline, long before the head was complete
    assert server.connections.timed_out == 1
    # a prompt client on another connection is unaffected
    assert status_of(await exchange(port, request(port, "/healthz"))) == 200


async def test_past_the_connection_cap_healthz_and_admin_still_answer(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(modules_dir=examples(tmp_path), watch=False)
    guard = server.connections
    guard.max_connections = 20  # as if the fd budget were small
    port = server.port
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20 + 40)]
    await eventually(lambda: guard.open >= 20 + guard.reserve_connections or guard.shed)
    try:
        # The idle reserve connections expire within a second; monitoring gets in then.
        async def healthz() -> bool:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, IndexError):
                return status_of(await exchange(port, request(port, "/healthz"))) == 200
            return False

        await eventually(healthz)
        assert status_of(await exchange(port, request(port, "/api/modules"))) == 200
        other = await exchange(port, request(port, "/m/echo"))
        assert status_of(other) == 503
        assert b"connection limit" in body_of(other)
    finally:
        for _, writer in idle:
            writer.close()
    assert guard.timed_out >= 1


# -- 15. CBOR envelopes cannot stall the loop ---------------------------------------------


async def test_a_hostile_cbor_envelope_is_refused_without_being_decoded(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(modules_dir=examples(tmp_path), watch=False, ws_inbound=("chat",))
    hostile = cbor2.dumps({"topic": "chat", "payload": list(range(200_000))})  # ~0.9 MiB
    clients = [await WsClient.open(server.port, "chat&envelope=cbor") for _ in range(10)]
    try:
        for client in clients:
            client.writer.write(ws_frame(0x2, hostile))
        closes = await asyncio.gather(*(c.read_close() for c in clients))
    finally:
        for client in clients:
            client.close()
    assert {code for code, _ in closes} == {1007}
    assert all("more than 64 CBOR items" in reason for _, reason in closes)
    assert status_of(await exchange(server.port, request(server.port, "/healthz"))) == 200
