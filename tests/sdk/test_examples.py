"""The same behaviour from every language's SDK examples, on a real server.

Each test runs once per language (the `lang` fixture), against that language's relay,
http_json and counter modules built from source with its real toolchain.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.sdk.examples import HTTP_LANGS, SENDER_LANGS, built
from tests.support import eventually
from tinywasm_wasi.policy.history import Outcome
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(600)  # the first test of a language builds its examples


class Collected:
    """What the bus delivers on one topic, in order (handlers run on module threads)."""

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, _topic: str, payload: bytes) -> bool:
        with self._lock:
            self._items.append(payload)
        return True

    @property
    def items(self) -> list[bytes]:
        with self._lock:
            return list(self._items)

    async def wait_for(self, count: int) -> list[bytes]:
        await eventually(lambda: len(self.items) >= count, f"{count} message(s)")
        return self.items


def with_custom_section(wasm: bytes, note: bytes) -> bytes:
    """The same module with a custom section appended: other bytes, same behaviour."""
    name = b"tinywasm.test"
    content = bytes([len(name)]) + name + note
    size, leb = len(content), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        leb.append(byte | (0x80 if size else 0))
        if not size:
            break
    return wasm + b"\x00" + bytes(leb) + content


Serve = Callable[[str], Awaitable[WasiServer]]


@pytest.fixture
def serve(
    lang_examples: Path,
    examples_base: Path,
    tmp_path: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> Serve:
    """Start a server on loopback running one of `lang`'s examples (from a copy it may change).

    The compiled-module cache is shared by the whole session: a Go module takes tens of
    seconds to compile on a busy machine, and each is compiled once.
    """
    caplog.set_level(logging.INFO, logger="tinywasm.guest")  # the modules' log lines

    async def serve(example: str) -> WasiServer:
        modules = tmp_path / "modules"
        modules.mkdir()
        shutil.copy(lang_examples / f"{example}.wasm", modules)
        server = await make_server(
            modules_dir=modules, watch=False, cache_dir=examples_base / "module-cache"
        )
        assert set(server.host.modules) == {example}
        return server

    return serve


async def test_relay_forwards_to_bus_and_browsers_then_unsubscribes(
    lang: str, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve("relay")
    out = Collected()
    served.bus.subscribe("relay.out", out)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{served.url}/ws?topic=relay.out") as ws,
    ):
        await eventually(lambda: served.hub.clients >= 1, "the browser to connect")
        served.bus.publish("relay.in", b"hello")
        served.bus.publish("relay.in", "h\u00e9llo \x00 bytes".encode())
        assert await out.wait_for(2) == [b"hello", "h\u00e9llo \x00 bytes".encode()]
        assert (await ws.receive_bytes(timeout=10)) == b"hello"
        assert (await ws.receive_bytes(timeout=10)) == "h\u00e9llo \x00 bytes".encode()

        served.bus.publish("relay.ctl", b"ping")
        assert (await out.wait_for(3))[2] == b"pong"
        served.bus.publish("relay.ctl", b"stop")
        assert (await out.wait_for(4))[3] == b"stopped"
        served.bus.publish("relay.in", b"after stop")  # unsubscribed: nobody gets it
        served.bus.publish("relay.ctl", b"ping")
        assert await out.wait_for(5) == [
            b"hello",
            "h\u00e9llo \x00 bytes".encode(),
            b"pong",
            b"stopped",
            b"pong",
        ]
    assert any(f"{lang} relay ready" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("lang", SENDER_LANGS, indirect=True)
async def test_relay_says_who_sent_a_message(lang: str, serve: Serve) -> None:
    served = await serve("relay")
    out = Collected()
    served.bus.subscribe("relay.out", out)
    served.bus.publish("relay.ctl", b"who", "user:ann")
    served.bus.publish("relay.ctl", b"who", "conn:c7")
    served.bus.publish("relay.ctl", b"who")  # the server's own: no sender
    long = "user:" + "x" * 300  # over C's and Zig's 256-byte buffer: dropped, never cut;
    served.bus.publish("relay.ctl", b"who", long)  # Rust and Go ask again with room for it
    assert await out.wait_for(4) == [
        b"from user:ann",
        b"from conn:c7",
        b"from nobody",
        b"from nobody" if lang in ("c", "zig") else f"from {long}".encode(),
    ]


@pytest.mark.parametrize("lang", HTTP_LANGS, indirect=True)
async def test_http_json_answers_with_the_request_as_json(lang: str, serve: Serve) -> None:
    served = await serve("http_json")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{served.url}/m/http_json/a/b%20c?x=1&y=2",
            data=b"12345",
            headers={"X-Agent": 'sdk "test"\\'},
        ) as response:
            assert response.status == 200, await response.text()
            assert response.headers["content-type"] == "application/json"
            assert json.loads(await response.read()) == {
                "lang": lang,
                "method": "POST",
                "path": "/m/http_json/a/b%20c",
                "query": "x=1&y=2",
                "body_bytes": 5,
                "agent": 'sdk "test"\\',
            }
        async with http.get(f"{served.url}/m/http_json") as response:
            assert response.status == 200
            answer = json.loads(await response.read())
            assert (answer["method"], answer["query"], answer["body_bytes"]) == ("GET", "", 0)
            assert answer["agent"] == ""
        async with http.delete(f"{served.url}/m/http_json/x") as response:
            assert response.status == 405
            assert response.headers["allow"] == "GET, POST"
            assert await response.text() == "method not allowed\n"


async def test_counter_keeps_its_count_across_hot_swaps(
    lang: str, serve: Serve, tmp_path: Path, examples_base: Path
) -> None:
    served = await serve("counter")
    values = Collected()
    served.bus.subscribe("counter.value", values)
    for _ in range(3):
        served.bus.publish("counter.inc", b"")
    assert await values.wait_for(3) == [b"1", b"2", b"3"]

    async def count() -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{served.url}/m/counter") as r:
            assert r.status == 200
            return await r.text()

    assert await count() == "3"

    # A new version of the same module (other bytes): it takes the count over.
    path = tmp_path / "modules" / "counter.wasm"
    path.write_bytes(with_custom_section(path.read_bytes(), b"v2"))
    record = await served.reload("counter")
    assert record is not None and record.outcome is Outcome.SWAPPED, record
    served.bus.publish("counter.inc", b"")
    assert (await values.wait_for(4))[3] == b"4"
    assert await count() == "4"

    # The state envelope is the same in every SDK: the C counter takes the count over too.
    if lang != "c":
        shutil.copy(built("c", examples_base) / "counter.wasm", path)
        record = await served.reload("counter")
        assert record is not None and record.outcome is Outcome.SWAPPED, record
        served.bus.publish("counter.inc", b"")
        assert (await values.wait_for(5))[4] == b"5"


@pytest.mark.parametrize("lang", ["go"], indirect=True)
async def test_go_reference_style_module_runs_unchanged(lang: str, serve: Serve) -> None:
    """examples/go/refstyle: raw imports, on_message and malloc, in the reference's layout."""
    served = await serve("refstyle")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{served.url}/ws?topic=events") as ws,
    ):
        await eventually(lambda: served.hub.clients >= 1, "the browser to connect")
        for i in range(3):
            served.bus.publish("events", f"event {i}".encode() * 10_000)  # over 64 KiB: own block
        for i in range(3):
            assert await ws.receive_bytes(timeout=10) == f"event {i}".encode() * 10_000
