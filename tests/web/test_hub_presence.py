"""Presence on /ws: join/leave frames, GET /api/topics/{topic}/presence, churn without leaks."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import jwt
import pytest
from aiohttp import WSMsgType

import bus
import tinywasm_wasi
from tests.conftest import ServerFactory
from tests.support import eventually
from tests.web.test_hub import Start, connect, start
from tests.web.test_metrics import scrape, value
from tinywasm_wasi.policy import presence
from tinywasm_wasi.policy.presence import Member, PresenceStats
from tinywasm_wasi.policy.tokens import TokenVerifier
from tinywasm_wasi.web.hub import Hub

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


async def test_presence_over_http_in_status_and_metrics(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(modules_dir=tmp_path, watch=False)
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        async with (
            session.ws_connect(f"{base}/ws?topic=room"),
            session.ws_connect(f"{base}/ws?topic=room&topic=other&topic=x.*"),
        ):
            await eventually(lambda: server.hub.presence_stats().members == 3)
            async with session.get(f"{base}/api/topics/room/presence") as resp:
                body = await resp.json()
            assert body["topic"] == "room" and body["count"] == 2
            assert [c["user"] for c in body["clients"]] == [None, None]
            assert all(c["conn"].startswith("c") and c["since"] > 0 for c in body["clients"])
            async with session.get(f"{base}/api/topics/room/presence?limit=1") as resp:
                assert len((await resp.json())["clients"]) == 1
            async with session.get(f"{base}/api/topics/nobody/presence") as resp:
                assert await resp.json() == {"topic": "nobody", "count": 0, "clients": []}
            for bad in ("a..b/presence", "room/presence?limit=0", "room/presence?limit=x"):
                async with session.get(f"{base}/api/topics/{bad}") as resp:
                    assert resp.status == 400, bad
            async with session.get(f"{base}/api/modules") as resp:
                assert (await resp.json())["presence"] == {"topics": 2, "members": 3, "watchers": 0}
            metrics = await scrape(session, base)
            for name, want in (("topics", 2), ("members", 3), ("watchers", 0)):
                family = f"tinywasm_presence_{name}"
                assert value(metrics[family], family) == want
        await eventually(lambda: server.hub.presence_stats().members == 0)


async def test_with_token_auth_presence_needs_a_sub_grant_or_the_admin_token(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(
        modules_dir=tmp_path, watch=False, auth_secret=SECRET, admin_token="adm" * 8
    )
    base = f"http://127.0.0.1:{server.port}"
    url = f"{base}/api/topics/room/presence"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{base}/ws?topic=room&token={token('ann', ['room'])}"),
    ):
        await eventually(lambda: server.hub.presence_stats().members == 1)
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer not-a-jwt"}, 401),
            ({"Authorization": f"Bearer {token('bob', ['news', 'room.>'])}"}, 403),
            ({"Authorization": f"Bearer {token('bob', ['room'])}"}, 200),
            ({"Authorization": f"Bearer {token('eve', ['>'])}"}, 200),
            ({"Authorization": f"Bearer {'adm' * 8}"}, 200),
        ):
            async with session.get(url, headers=headers) as resp:
                assert resp.status == status, (headers, await resp.text())
                if status == 200:
                    body = await resp.json()
                    assert [c["user"] for c in body["clients"]] == ["ann"]
                if status == 403:
                    assert "'room' is outside the subscribe grant" in await resp.text()


WAVE = 100  # connections opened at once; half are killed, half closed
WAVES = 10  # measured waves: 1,000 connections in all


@pytest.mark.parametrize("start", ["app-runner"], indirect=True)  # as the server runs
async def test_churn_of_1000_connections_ends_at_the_right_count_and_memory_returns(
    start: Start,
) -> None:
    """1,000 connections come and go; presence ends where it began and keeps nothing.

    What is checked, all deterministic:
    - the counts: 6 members on 1 topic, the watcher's 1 watch, `hub.clients` 6;
    - the watcher's frames: exactly one join and one leave per connection, join first;
    - no churned connection's Member is kept alive by anything (found by the collector);
    - the presence index's own allocations (tracemalloc, filtered to policy/presence.py)
      after the last wave are what they were after the first measured wave, and the
      hub's and the bus's allocations do not grow from wave to wave. A warm-up wave
      first lets dicts, sets and pools reach their steady size (dicts never shrink).
    """
    hub, _, client = await start(rate_limit=0)
    watcher = await connect(hub, client, "/ws?topic=room&envelope=cbor&presence=1")
    steady = [await connect(hub, client, "/ws?topic=room") for _ in range(5)]
    # Every long-lived socket is read all along, so it answers the hub's heartbeat pings
    # (aiohttp's client answers a ping only inside receive()); a slow wave on a busy
    # machine would otherwise see them dropped for a missing pong.
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    readers = [asyncio.create_task(read_all(ws, None)) for ws in steady]
    readers.append(asyncio.create_task(read_all(watcher, events)))
    for _ in steady:
        assert (await next_event(events))["type"] == 2
    assert hub.presence_stats() == PresenceStats(topics=1, members=6, watchers=1)

    # A session of its own: aiohttp's default pool of 100 connections would hold back a wave.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    presence_file = [tracemalloc.Filter(True, presence.__file__)]
    server_files = [
        tracemalloc.Filter(True, str(Path(tinywasm_wasi.__file__).parent / "*")),
        tracemalloc.Filter(True, str(Path(bus.__file__).parent / "*")),
    ]
    tracemalloc.start()
    try:
        seen: list[tuple[int, str]] = []
        await churn(hub, events, session, client, 0, seen)  # warm-up
        warm_up = {conn for _, conn in seen}
        index_bytes: list[int] = []
        server_bytes: list[int] = []
        seen.clear()
        for wave in range(1, WAVES + 1):
            await churn(hub, events, session, client, wave * WAVE, seen)
            gc.collect()
            snapshot = tracemalloc.take_snapshot()
            index_bytes.append(traced(snapshot, presence_file))
            server_bytes.append(traced(snapshot, server_files))
    finally:
        tracemalloc.stop()
        await session.close()

    assert hub.presence_stats() == PresenceStats(topics=1, members=6, watchers=1)
    assert hub.clients == 6 and hub.presence("room", 10)[0] == 6
    joins = [conn for kind, conn in seen if kind == 2]
    leaves = [conn for kind, conn in seen if kind == 3]
    assert len(joins) == len(set(joins)) == WAVES * WAVE
    assert sorted(leaves) == sorted(joins)
    order = {(kind, conn): i for i, (kind, conn) in enumerate(seen)}
    assert all(order[(2, conn)] < order[(3, conn)] for conn in joins)
    # A handler lingers up to LINGER seconds for its client's EOF after the close,
    # holding its connection until it returns: wait for that, then none of the churned
    # connections' Members may be left (other tests in this process may keep their own).
    churned = {*joins, *warm_up}
    await eventually(
        lambda: not leftover(churned), "no Member outlives its connection", timeout=30, interval=0.1
    )
    assert index_bytes[-1] == index_bytes[0], f"presence index bytes per wave: {index_bytes}"
    # The rest of the server (hub and bus files; aiohttp's own are not counted) keeps
    # about 270 KB from the warm-up and then stays within ~1 KB over the nine waves
    # measured. 16 KiB over 900 connections is 18 bytes each: a leaked string per
    # connection (about 80 bytes) already fails here, a leaked client far more so.
    growth = server_bytes[-1] - server_bytes[0]
    assert growth < 16 * 1024, f"server bytes held after each wave: {server_bytes}"
    for ws in [*steady, watcher]:
        await ws.close()
    await asyncio.gather(*readers)
    await eventually(lambda: hub.presence_stats().members == 0)


async def read_all(
    ws: aiohttp.ClientWebSocketResponse, into: asyncio.Queue[dict[str, Any]] | None
) -> None:
    async for msg in ws:
        if into is not None:
            assert msg.type is WSMsgType.BINARY, msg
            into.put_nowait(cbor2.loads(msg.data))


async def next_event(events: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    async with asyncio.timeout(30):
        return await events.get()


def traced(snapshot: tracemalloc.Snapshot, filters: list[tracemalloc.Filter]) -> int:
    return sum(s.size for s in snapshot.filter_traces(filters).statistics("filename"))


def leftover(conns: set[str]) -> list[Member]:
    """The Members still alive for any of the connections `conns`."""
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is Member and o.conn in conns]


async def churn(
    hub: Hub,
    events: asyncio.Queue[dict[str, Any]],
    session: aiohttp.ClientSession,
    client: Any,
    first: int,
    seen: list[tuple[int, str]],
) -> None:
    """One wave: WAVE connections on `room` and a topic of their own join, then go (half
    killed, half closed); wait until the watcher has seen every join and leave."""
    urls = [client.make_url(f"/ws?topic=room&topic=solo.{first + i}") for i in range(WAVE)]
    sockets = await asyncio.gather(*(session.ws_connect(url) for url in urls))
    for i, ws in enumerate(sockets):
        if i % 2 and ws._conn is not None:
            ws._conn.transport.abort()  # killed: no close frame, no FIN first
    await asyncio.gather(*(ws.close() for ws in sockets))
    for _ in range(2 * WAVE):
        got = await next_event(events)
        seen.append((got["type"], got["conn"]))
    await eventually(lambda: hub.clients == 6, "every closed client released", timeout=30)
