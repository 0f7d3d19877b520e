"""Presence on /ws: join/leave frames, GET /api/topics/{topic}/presence, churn without leaks."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import jwt
import pytest
from aiohttp import WSMsgType

from tests.conftest import ServerFactory
from tests.support import eventually
from tests.web.test_hub import Start, connect, start
from tinywasm_wasi.policy.tokens import TokenVerifier

__all__ = ["start"]  # the fixture, shared with test_hub

pytestmark = pytest.mark.timeout(300)

SECRET = "p" * 32


def token(sub: str, topics: list[str]) -> str:
    return jwt.encode({"sub": sub, "grants": {"sub": topics}}, SECRET, algorithm="HS256")


async def frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    assert msg.type is WSMsgType.BINARY, msg
    data: dict[str, Any] = cbor2.loads(msg.data)
    return data


async def test_watchers_get_join_and_leave_with_the_token_user(start: Start) -> None:
    hub, _, client = await start(auth=TokenVerifier(secret=SECRET))
    watcher = await connect(
        hub, client, f"/ws?topic=room&envelope=cbor&presence=1&token={token('ann', ['room'])}"
    )
    bob = await connect(hub, client, f"/ws?topic=room&topic=x.*&token={token('bob', ['>'])}")
    joined = await frame(watcher)
    assert (joined["type"], joined["topic"], joined["user"]) == (2, "room", "bob")
    assert hub.presence_stats().members == 2  # x.* is a wildcard: not presence
    count, members = hub.presence("room", 10)
    assert count == 2 and [m.user for m in members] == ["ann", "bob"]
    await bob.close()
    left = await frame(watcher)
    assert (left["type"], left["user"], left["conn"]) == (3, "bob", joined["conn"])
    await eventually(lambda: hub.presence_stats().members == 1)
    await watcher.close()
    await eventually(lambda: hub.presence_stats().topics == 0)


async def test_presence_needs_envelope(start: Start) -> None:
    _, _, client = await start()
    resp = await client.get("/ws?topic=room&presence=1")
    assert resp.status == 400
    assert "presence=1 needs envelope=cbor" in await resp.text()


async def test_presence_over_http_and_in_status(make_server: ServerFactory, tmp_path: Path) -> None:
    server = await make_server(modules_dir=tmp_path, watch=False)
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        async with (
            session.ws_connect(f"{base}/ws?topic=room"),
            session.ws_connect(f"{base}/ws?topic=room&topic=other"),
        ):
            await eventually(lambda: server.hub.presence_stats().members == 3)
            async with session.get(f"{base}/api/topics/room/presence") as resp:
                body = await resp.json()
            assert body["topic"] == "room" and body["count"] == 2
            assert [c["user"] for c in body["clients"]] == [None, None]
            assert all(c["conn"].startswith("c") and c["since"] > 0 for c in body["clients"])
            async with session.get(f"{base}/api/topics/room/presence?limit=1") as resp:
                assert len((await resp.json())["clients"]) == 1
            async with session.get(f"{base}/api/topics/a..b/presence") as resp:
                assert resp.status == 400
            async with session.get(f"{base}/api/modules") as resp:
                assert (await resp.json())["presence"] == {"topics": 2, "members": 3, "watchers": 0}
        await eventually(lambda: server.hub.presence_stats().members == 0)


async def test_churn_of_1000_connections_ends_at_the_right_count_and_memory_returns(
    start: Start,
) -> None:
    hub, _, client = await start(rate_limit=0)
    watcher = await connect(hub, client, "/ws?topic=room&envelope=cbor&presence=1")
    steady = [await connect(hub, client, "/ws?topic=room") for _ in range(5)]
    await eventually(lambda: hub.presence_stats().members == 6)

    # A session of its own: aiohttp's default pool of 100 connections would hold back a wave.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        await churn(hub, watcher, session, client.make_url("/ws?topic=room"))
    finally:
        await session.close()
    for ws in steady:
        await ws.close()


async def churn(hub: Any, watcher: Any, session: aiohttp.ClientSession, url: Any) -> None:

    async def churn_wave(count: int) -> None:
        sockets = await asyncio.gather(*(session.ws_connect(url) for _ in range(count)))
        await eventually(lambda: hub.presence_stats().members == 6 + count, timeout=60)
        for i, ws in enumerate(sockets):
            if i % 2 and ws._conn is not None:
                ws._conn.transport.abort()
        await asyncio.gather(*(ws.close() for ws in sockets))
        await eventually(lambda: hub.presence_stats().members == 6, timeout=60)
        await eventually(lambda: hub.clients == 6, "every closed client released", timeout=60)

    await churn_wave(100)  # warm up allocator pools and caches before measuring
    for _ in range(5 + 2 * 100):  # the steady ones joined, the warm-up wave came and went
        assert (await frame(watcher))["type"] in (2, 3)
    events = 0

    async def count_events() -> None:
        nonlocal events
        while True:
            await frame(watcher)
            events += 1

    counter = asyncio.create_task(count_events())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    begun = time.monotonic()
    for _ in range(10):
        await churn_wave(100)
    await eventually(lambda: events >= 2 * 1000, "a join and a leave per connection", timeout=30)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    counter.cancel()
    assert hub.presence_stats().members == 6 and hub.clients == 6
    assert hub.presence("room", 10)[0] == 6
    assert events == 2 * 1000
    hub_files = [tracemalloc.Filter(True, "*tinywasm_wasi*")]
    diffs = after.filter_traces(hub_files).compare_to(before.filter_traces(hub_files), "lineno")
    top = "; ".join(str(d) for d in diffs[:3])
    grown = sum(
        s.size_diff
        for s in after.filter_traces(hub_files).compare_to(
            before.filter_traces(hub_files), "filename"
        )
    )
    assert grown < 64 * 1024, (
        f"the hub kept {grown} bytes after 1,000 connections came and went: {top}"
    )
    assert time.monotonic() - begun < 280
