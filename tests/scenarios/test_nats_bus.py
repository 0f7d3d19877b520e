"""Two servers joined by a real nats-server on loopback: the bus and the hub across processes.

Each `WasiServer` here has its own NATS connection, exactly as two processes would
(one event loop holds both, which changes nothing on the wire). Modules are inline
WAT guests; browsers are real WebSocket clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerFactory
from tests.scenarios.cluster import NEEDS_NATS
from tests.support import eventually
from tests.wat import guest, write
from tests.web.test_message_sender import PINGER, SENDER_IMPORT, STRINGS, WITNESS
from tinywasm_wasi.cluster.nats_server import NatsServerProcess
from tinywasm_wasi.server import NATS, WasiServer

pytestmark = [
    pytest.mark.timeout(90),
    NEEDS_NATS,
]

# Subscribes to `src` and broadcasts every payload on `dst`.
RELAY = """
  (func (export "init") (call $subscribe {src} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {dst} (local.get $p) (local.get $n)))
"""


def relay(directory: Path, name: str, src: str, dst: str) -> Path:
    write(directory, name, guest(RELAY, {"src": src, "dst": dst}))
    return directory


@pytest.fixture
def nats_server() -> Iterator[NatsServerProcess]:
    with NatsServerProcess() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The unlabelled samples of a server's /metrics, by name."""
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


def link(server: WasiServer):  # type: ignore[no-untyped-def]
    return server.app[NATS]


async def joined(
    make_server: ServerFactory, nats: NatsServerProcess, directory: Path, **settings: object
) -> WasiServer:
    directory.mkdir(parents=True, exist_ok=True)
    settings.setdefault("watch", False)
    return await make_server(modules_dir=directory, nats=(nats.url,), **settings)


async def frames(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[bytes]:
    got = []
    async with asyncio.timeout(10):
        while len(got) < count:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            got.append(msg.data)
    return got


async def nothing_more(ws: aiohttp.ClientWebSocketResponse, *servers: WasiServer) -> None:
    """Every server's NATS traffic has settled and nothing else arrived on `ws`."""
    for server in servers:
        await link(server).sync()
    for server in servers:
        await link(server).sync()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            msg = await ws.receive()
            raise AssertionError(f"one frame too many: {msg!r}")


async def test_browsers_on_two_servers_see_each_others_chat(
    tmp_path: Path,
    make_server: ServerFactory,
    nats_server: NatsServerProcess,
    http: aiohttp.ClientSession,
) -> None:
    # The chat module lives on A only: B's browser publishes cross to it, and its
    # broadcasts cross back to B's hub.
    a = await joined(make_server, nats_server, relay(tmp_path / "a", "chat", "chat", "chat"))
    b = await joined(make_server, nats_server, tmp_path / "b")
    async with (
        http.ws_connect(f"{a.url}/ws?topic=chat") as on_a,
        http.ws_connect(f"{b.url}/ws?topic=chat") as on_b,
    ):
        await eventually(lambda: "tw.b.chat" in link(b).subjects(), "B's hub to want chat")
        await link(a).sync()
        await link(b).sync()
        await on_b.send_bytes(b"hello from b")
        assert await frames(on_a, 1) == [b"hello from b"]
        assert await frames(on_b, 1) == [b"hello from b"]
        await on_a.send_bytes(b"hello from a")
        assert await frames(on_a, 1) == [b"hello from a"]
        assert await frames(on_b, 1) == [b"hello from a"]
        await nothing_more(on_a, a, b)
        await nothing_more(on_b, a, b)
    body = await (await http.get(f"{b.url}/healthz")).json()
    assert body["status"] == "ok" and body["nats"] == "connected"


async def test_delivery_is_local_first_and_never_echoed(
    tmp_path: Path,
    make_server: ServerFactory,
    nats_server: NatsServerProcess,
    http: aiohttp.ClientSession,
) -> None:
    # A module subscribed to `nums` on each server: a publish on A reaches A's at
    # once and B's over NATS, each exactly once, in order; no copy comes back.
    a = await joined(
        make_server,
        nats_server,
        relay(tmp_path / "a", "rec", "nums", "got.a"),
        ws_inbound=("nums",),
    )
    b = await joined(make_server, nats_server, relay(tmp_path / "b", "rec", "nums", "got.b"))
    count = 50
    async with (
        http.ws_connect(f"{a.url}/ws?topic=got.*") as watcher,
        http.ws_connect(f"{a.url}/ws?topic=nums") as publisher,
    ):
        await eventually(lambda: "tw.t.nums" in link(b).subjects())
        await link(b).sync()
        for i in range(count):
            await publisher.send_bytes(b"%d" % i)
        got = await frames(watcher, 2 * count)
        await nothing_more(watcher, a, b)
    numbers = [str(i).encode() for i in range(count)]
    assert [f for f in got if f in numbers] == got  # nothing else arrived
    assert sorted(got) == sorted(numbers * 2)
    for server in (a, b):
        counters = server.host.modules["rec"].snapshot()["counters"]
        assert counters["delivered"] == count, counters
    # A's own module got them first, in order, straight from the bus.
    assert a.bus.stats().delivered == count
    assert b.bus.stats().delivered == count


async def test_each_hub_wants_only_its_clients_patterns(
    tmp_path: Path,
    make_server: ServerFactory,
    nats_server: NatsServerProcess,
    http: aiohttp.ClientSession,
) -> None:
    a = await joined(
        make_server,
        nats_server,
        relay(tmp_path / "a", "news", "news.in", "news.sport"),
        ws_inbound=("news.in",),
    )
    b = await joined(make_server, nats_server, tmp_path / "b")
    assert [s for s in link(b).subjects() if s.startswith("tw.b.")] == []
    async with (
        http.ws_connect(f"{b.url}/ws?topic=news.*&topic=news.sport") as both,
        http.ws_connect(f"{b.url}/ws?topic=news.*") as wild,
    ):
        await eventually(lambda: link(b).subjects() == ["tw.b.news.*", "tw.b.news.sport"])
        await link(b).sync()
        async with http.ws_connect(f"{a.url}/ws?topic=news.in") as publisher:
            await publisher.send_bytes(b"goal")
            # A client on two matching patterns gets one frame, as it would locally.
            assert await frames(both, 1) == [b"goal"]
            assert await frames(wild, 1) == [b"goal"]
            await nothing_more(both, a, b)
            await nothing_more(wild, a, b)
        await both.close()
        await eventually(lambda: link(b).subjects() == ["tw.b.news.*"], "news.sport dropped")
    await eventually(lambda: link(b).subjects() == [], "every pattern dropped")


async def test_nats_outage_keeps_local_traffic_holds_remote_and_resumes(
    tmp_path: Path,
    make_server: ServerFactory,
    nats_server: NatsServerProcess,
    http: aiohttp.ClientSession,
) -> None:
    # Each browser publish on A is two messages for NATS: the bus publish on `nums`
    # and the module's broadcast on `got`. Ten may wait: five publishes' worth.
    a = await joined(
        make_server,
        nats_server,
        relay(tmp_path / "a", "rec", "nums", "got"),
        ws_inbound=("nums",),
        nats_buffer=10,
    )
    b = await joined(make_server, nats_server, tmp_path / "b")
    async with (
        http.ws_connect(f"{a.url}/ws?topic=got") as local,
        http.ws_connect(f"{b.url}/ws?topic=got") as remote,
        http.ws_connect(f"{a.url}/ws?topic=nums") as publisher,
    ):
        await eventually(lambda: "tw.b.got" in link(b).subjects())
        await link(b).sync()
        await publisher.send_bytes(b"before")
        assert await frames(local, 1) == [b"before"]
        assert await frames(remote, 1) == [b"before"]

        nats_server.stop()
        await eventually(lambda: not link(a).connected and not link(b).connected, "the outage")
        health = await (await http.get(f"{a.url}/healthz")).json()
        assert health["status"] == "degraded" and health["nats"] == "disconnected"
        assert [p["problem"] for p in health["problems"]] == ["nats_away"], health
        forwarded = link(a).stats().forwarded

        during = [b"during %d" % i for i in range(8)]
        for payload in during:
            await publisher.send_bytes(payload)
        assert await frames(local, 8) == during  # local delivery never waited
        await eventually(lambda: link(a).stats().dropped == 6, "the drops past the buffer")
        assert link(a).stats().held == 10
        metrics = await scrape(http, a.url)
        assert metrics["tinywasm_nats_connected"] == 0
        assert metrics["tinywasm_nats_held"] == 10
        assert metrics["tinywasm_nats_dropped_total"] == 6
        assert metrics["tinywasm_nats_disconnects_total"] == 1

        nats_server.start()
        await eventually(lambda: link(a).connected and link(b).connected, "the reconnects")
        await eventually(lambda: link(a).stats().held == 0, "the held messages sent")
        assert link(a).stats().forwarded == forwarded + 10
        await link(a).sync()
        await link(b).sync()
        # The held broadcasts reach B in order, once each: those of the first five
        # publishes, as the buffer took them (fewer if A was back before B had
        # resubscribed: NATS keeps nothing for a subject nobody wants).
        await publisher.send_bytes(b"after")
        seen = []
        while not seen or seen[-1] != b"after":
            seen += await frames(remote, 1)
        places = [during.index(frame) for frame in seen[:-1]]
        assert places == sorted(set(places)) and all(p < 5 for p in places), seen
        assert await frames(local, 1) == [b"after"]
        health = await (await http.get(f"{a.url}/healthz")).json()
        assert health["status"] == "ok"
        metrics = await scrape(http, a.url)
        assert metrics["tinywasm_nats_connected"] == 1
        assert metrics["tinywasm_nats_held"] == 0
        assert metrics["tinywasm_nats_forwarded_total"] == link(a).stats().forwarded


@pytest.mark.parametrize("replicas", ["one", "all"])
async def test_the_sender_crosses_nats_with_the_message(
    replicas: str,
    tmp_path: Path,
    make_server: ServerFactory,
    nats_server: NatsServerProcess,
    http: aiohttp.ClientSession,
) -> None:
    # A's witness says who sent each message it gets; everything it sees is published on
    # B: by B's browser, by B's module, by B's server, and with a sender too long to carry.
    # With replicas = "all" the witness is a group of one, reached through the queue group.
    a_dir = tmp_path / "a"
    write(a_dir, "witness", guest(WITNESS, STRINGS, imports=SENDER_IMPORT))
    if replicas == "all":
        (a_dir / "limits.toml").write_text('[witness]\nreplicas = "all"\n')
    b_dir = tmp_path / "b"
    write(b_dir, "pinger", guest(PINGER, STRINGS))
    a = await joined(make_server, nats_server, a_dir)
    b = await joined(make_server, nats_server, b_dir, ws_inbound=("chat",))
    await eventually(lambda: "witness" in a.host.modules and "pinger" in b.host.modules)
    async with (
        http.ws_connect(f"{a.url}/ws?topic=seen") as seen,
        http.ws_connect(f"{b.url}/ws?topic=chat") as browser,
    ):
        await eventually(lambda: a.hub.clients == 1 and b.hub.clients == 1)
        await link(b).sync()
        await browser.send_bytes(b"hi")
        assert await frames(seen, 1) == [b"chat|conn:c1"]
        b.bus.publish("ping", b"p")  # the server's own: no sender; the pinger relays it
        assert await frames(seen, 2) == [b"ping|-", b"relay|module:pinger"]
        odd = "user:ann.smith@example.com =é"
        b.bus.publish("chat", b"x", odd)
        b.bus.publish("chat", b"x", "user:" + "x" * 600)  # over MAX_SENDER: not carried
        assert await frames(seen, 2) == [f"chat|{odd}".encode(), b"chat|-"]
        await nothing_more(seen, a, b)
