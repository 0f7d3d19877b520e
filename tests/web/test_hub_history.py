"""Topic history on /ws: offsets and epochs in envelopes, recovery at the seam, recent=1, HTTP."""

from __future__ import annotations

import asyncio
import itertools
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
from tinywasm_wasi.config import Config
from tinywasm_wasi.policy.topic_history import MemoryHistory, parse_history_rule

__all__ = ["start"]  # the fixture, shared with test_hub

pytestmark = pytest.mark.timeout(90)

RATE = 2000  # messages a second in the seam test
TOTAL = 3000  # messages in the seam test: 1.5 s of stream


def history(*rules: str, **kw: int) -> MemoryHistory:
    counter = itertools.count(1)
    return MemoryHistory(
        [parse_history_rule(r) for r in rules], new_epoch=lambda: f"ep{next(counter)}", **kw
    )


async def frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    assert msg.type is WSMsgType.BINARY, msg
    data: dict[str, Any] = cbor2.loads(msg.data)
    return data


async def stream(hub: Any, topic: str, count: int, rate: int) -> None:
    """Broadcast `count` numbered messages at about `rate` a second (bounded in count)."""
    loop = asyncio.get_running_loop()
    start_at = loop.time()
    for i in range(1, count + 1):
        hub.broadcast(topic, str(i).encode())
        due = start_at + i / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        elif i % 50 == 0:
            await asyncio.sleep(0)  # let readers run when the loop is behind


async def test_envelope_frames_carry_offset_and_epoch_and_the_first_frame_the_position(
    start: Start,
) -> None:
    hub, _, client = await start(history=history("chat.>:10:60s"))
    hub.broadcast("chat.a", b"before")
    ws = await connect(hub, client, "/ws?topic=chat.a&topic=other&envelope=cbor")
    first = await frame(ws)
    assert first == {
        "topic": "chat.a", "type": 1, "id": 0, "payload": b"", "offset": 1, "epoch": "ep1"
    }  # fmt: skip
    hub.broadcast("chat.a", b"x")
    hub.broadcast("other", b"no history")
    assert await frame(ws) == {
        "topic": "chat.a", "type": 0, "id": 0, "payload": b"x", "offset": 2, "epoch": "ep1"
    }  # fmt: skip
    assert await frame(ws) == {"topic": "other", "type": 0, "id": 0, "payload": b"no history"}
    await ws.close()


@pytest.mark.parametrize("envelope", [True, False])
async def test_recent_delivers_the_latest_kept_message_first(start: Start, envelope: bool) -> None:
    hub, _, client = await start(history=history("events:1:60s"))
    for i in range(3):
        hub.broadcast("events", f"v{i}".encode())
    ws = await connect(hub, client, "/ws?topic=events&recent=1" + "&envelope=cbor" * envelope)
    hub.broadcast("events", b"live")
    if envelope:
        assert (await frame(ws))["type"] == 1
        latest = await frame(ws)
        assert (latest["payload"], latest["offset"]) == (b"v2", 3)
        assert (await frame(ws))["payload"] == b"live"
    else:
        assert (await ws.receive(timeout=5)).data == b"v2"
        assert (await ws.receive(timeout=5)).data == b"live"
    await ws.close()


async def test_recovery_at_the_seam_of_a_killed_socket_is_exactly_once_in_order(
    start: Start,
) -> None:
    hub, _, client = await start(history=history(f"feed:{TOTAL}:60s"), queue_size=TOTAL + 10)
    ws = await connect(hub, client, "/ws?topic=feed&envelope=cbor")
    assert (await frame(ws))["type"] == 1
    producer = asyncio.create_task(stream(hub, "feed", TOTAL, RATE))
    got: list[int] = []
    last: dict[str, Any] = {}
    while len(got) < TOTAL // 3:
        last = await frame(ws)
        got.append(int(last["payload"]))
    # Kill the socket (no close frame), in the middle of the stream.
    transport = ws._conn.transport if ws._conn is not None else None
    assert transport is not None
    transport.abort()
    await eventually(lambda: hub.clients == 0, "the server to notice the dead socket")
    assert not producer.done(), "the stream must still be running when we reconnect"
    since = f"{last['offset']}:{last['epoch']}"
    ws2 = await connect(hub, client, f"/ws?topic=feed&envelope=cbor&since={since}")
    ack = await frame(ws2)
    assert (ack["type"], ack["recovered"], ack["epoch"]) == (1, True, last["epoch"])
    while len(got) < TOTAL:
        got.append(int((await frame(ws2))["payload"]))
    await producer
    assert got == list(range(1, TOTAL + 1)), "every message exactly once, in order"
    hub.broadcast("feed", b"after")
    assert (await frame(ws2))["payload"] == b"after"
    await ws2.close()


@pytest.mark.parametrize(
    ("since", "why"),
    [("1:ep1", "too old: 1 is gone"), ("3:ep9", "another epoch"), ("99:ep1", "from the future")],
)
async def test_an_unrecoverable_position_gets_recovered_false_then_live(
    start: Start, since: str, why: str
) -> None:
    hub, _, client = await start(history=history("feed:3:60s"))
    for i in range(1, 7):
        hub.broadcast("feed", str(i).encode())  # 4, 5, 6 kept
    ws = await connect(hub, client, f"/ws?topic=feed&envelope=cbor&since={since}")
    ack = await frame(ws)
    assert (ack["type"], ack["recovered"], ack["offset"], ack["epoch"]) == (1, False, 6, "ep1"), why
    hub.broadcast("feed", b"7")
    live = await frame(ws)
    assert (live["payload"], live["offset"]) == (b"7", 7)
    await ws.close()


async def test_since_names_its_topic_when_there_are_several(start: Start) -> None:
    hub, _, client = await start(history=history("a:10:60s", "b:10:60s"))
    for topic in ("a", "b", "a"):
        hub.broadcast(topic, topic.encode())
    ws = await connect(hub, client, "/ws?topic=a&topic=b&envelope=cbor&since=a:1:ep1&since=b:0:ep2")
    frames = [await frame(ws) for _ in range(4)]
    assert [(f["topic"], f["type"], f.get("recovered"), f["offset"]) for f in frames] == [
        ("a", 1, True, 2), ("a", 0, None, 2), ("b", 1, True, 1), ("b", 0, None, 1)
    ]  # fmt: skip
    await ws.close()


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("topic=a&since=1:e", "since= needs envelope=cbor"),
        ("topic=a&topic=b&envelope=cbor&since=1:e", "names no topic"),
        ("topic=a.*&envelope=cbor&since=1:e", "names no topic"),
        ("topic=a&envelope=cbor&since=b:1:e", "'b' is not one of this connection's topics"),
        ("topic=a&envelope=cbor&since=x", "is not offset:epoch"),
        ("topic=a&recent=yes", "use recent=1"),
    ],
)
async def test_bad_since_and_recent_are_400(start: Start, query: str, text: str) -> None:
    _, _, client = await start(history=history("a:10:60s"))
    resp = await client.get(f"/ws?{query}")
    assert resp.status == 400
    assert text in await resp.text()


async def test_history_over_http_status_and_tokens(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = "h" * 32
    server = await make_server(
        modules_dir=tmp_path, watch=False, history=("chat.>:3:60s",), auth_secret=secret
    )
    for i in range(5):
        server.hub.broadcast("chat.room", f"m{i}".encode())
    server.hub.broadcast("chat.room", b"\xff")
    base = f"http://127.0.0.1:{server.port}/api/topics"
    reader = jwt.encode({"sub": "r", "grants": {"sub": ["chat.>"]}}, secret, algorithm="HS256")
    other = jwt.encode({"sub": "o", "grants": {"sub": ["news"]}}, secret, algorithm="HS256")
    auth = {"Authorization": f"Bearer {reader}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/chat.room/history") as resp:
            assert resp.status == 401
            assert "Authorization: Bearer <JWT>" in await resp.text()
        async with session.get(
            f"{base}/chat.room/history", headers={"Authorization": f"Bearer {other}"}
        ) as resp:
            assert resp.status == 403
            assert "'chat.room' is outside the subscribe grant (news)" in await resp.text()
        async with session.get(f"{base}/chat.room/history?limit=2", headers=auth) as resp:
            body = await resp.json()
        epoch = body["epoch"]
        assert body == {
            "topic": "chat.room", "epoch": epoch, "offset": 6, "recovered": True,
            "messages": [
                {"offset": 5, "payload": "m4", "payload_base64": "bTQ="},
                {"offset": 6, "payload_base64": "/w=="},
            ],
        }  # fmt: skip
        async with session.get(f"{base}/chat.room/history?since=4:{epoch}", headers=auth) as r:
            assert [m["offset"] for m in (await r.json())["messages"]] == [5, 6]
        async with session.get(f"{base}/chat.room/history?since=1:{epoch}", headers=auth) as r:
            assert (await r.json())["recovered"] is False
        async with session.get(f"{base}/news/history", headers=auth) as resp:
            assert resp.status == 403
        async with session.get(f"{base}/chat.room/history?limit=0", headers=auth) as resp:
            assert resp.status == 400
        async with session.get(f"http://127.0.0.1:{server.port}/api/modules") as resp:
            stats = (await resp.json())["history"]
        assert stats["topics"] == 1 and stats["messages"] == 3 and stats["bytes"] > 0
        assert stats["rules"] == [{"pattern": "chat.>", "size": 3, "ttl": 60.0}]


async def test_no_history_rule_is_404_over_http(make_server: ServerFactory, tmp_path: Path) -> None:
    server = await make_server(modules_dir=tmp_path, watch=False, history=("chat:3:60s",))
    url = f"http://127.0.0.1:{server.port}/api/topics/news/history"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 404
        assert "keeps no history: add a --history rule" in await resp.text()


def test_history_is_refused_with_nats_or_workers() -> None:
    with pytest.raises(ValueError, match="history is kept per process"):
        Config(history=("a:1:1s",), nats=("nats://127.0.0.1:4222",))
    with pytest.raises(ValueError, match="history is kept per process"):
        Config(history=("a:1:1s",), workers=2)
