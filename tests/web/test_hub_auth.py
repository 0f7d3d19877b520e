"""Token auth and topic grants on /ws, and the reloadable inbound list: real server, real clients."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bus import Message, encode_message
from tests.conftest import ServerFactory
from tests.support import eventually
from tests.web.test_hub import Start, connect, start
from tinywasm_wasi.config import Config
from tinywasm_wasi.policy.tokens import PROTOCOL, TokenVerifier
from tinywasm_wasi.server import create_app

__all__ = ["start"]  # the fixture, shared with test_hub

pytestmark = pytest.mark.timeout(60)

SECRET = "k" * 32
AUTH = TokenVerifier(secret=SECRET)


def token(
    sub: str = "ann", *, exp: float | None = 3600, grants: object = None, **kw: object
) -> str:
    claims: dict[str, object] = {"sub": sub, **kw}
    if exp is not None:
        claims["exp"] = int(time.time() + exp)
    claims["grants"] = {"sub": ["chat", "rooms.>"], "pub": ["chat"]} if grants is None else grants
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("topic=chat", 401, "missing token"),
        (f"topic=chat&token={token(exp=-10)}", 401, "token expired"),
        (f"topic=chat&token={jwt.encode({'sub': 'a'}, 'x' * 32, algorithm='HS256')}", 401,
         "bad token signature"),
        (f"topic=chat&token={jwt.encode({'sub': 'a'}, 'x' * 64, algorithm='HS512')}", 401,
         "token algorithm 'HS512' refused"),
        ("topic=chat&token=eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.", 401,
         "token algorithm 'none' refused"),
        (f"topic=>&token={token()}", 403,
         "subscription refused for 'ann': '>' is outside the subscribe grant (chat, rooms.>)"),
        (f"topic=chat&topic=rooms&token={token()}", 403, "'rooms' is outside the subscribe grant"),
        (f"topic=chat&token={token(grants={})}", 403, "'chat': the subscribe grant is empty"),
    ],
)  # fmt: skip
async def test_refused_at_the_upgrade_with_a_reason(
    start: Start, query: str, status: int, text: str
) -> None:
    hub, _, client = await start(auth=AUTH)
    resp = await client.get(f"/ws?{query}")
    assert resp.status == status
    assert text in await resp.text()
    if status == 401:
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert hub.clients == 0
    stats = hub.stats()
    assert (stats.tokens_refused, stats.grants_refused) == ((1, 0) if status == 401 else (0, 1))


async def test_a_valid_token_in_the_query_subscribes_within_its_wildcard_grants(
    start: Start,
) -> None:
    hub, _, client = await start(auth=AUTH)
    ws = await connect(hub, client, f"/ws?topic=rooms.*&topic=rooms.a.>&token={token()}")
    hub.broadcast("rooms.x", b"1")
    hub.broadcast("rooms.a.b", b"2")
    hub.broadcast("chat", b"no")
    assert (await ws.receive(timeout=5)).data == b"1"
    assert (await ws.receive(timeout=5)).data == b"2"
    await ws.close()


async def test_a_token_in_sec_websocket_protocol_is_taken_and_the_protocol_answered(
    start: Start,
) -> None:
    hub, _, client = await start(auth=AUTH)
    ws = await client.ws_connect("/ws?topic=chat", protocols=(PROTOCOL, token()))
    await eventually(lambda: hub.clients == 1)
    assert ws.protocol == PROTOCOL
    hub.broadcast("chat", b"hi")
    assert (await ws.receive(timeout=5)).data == b"hi"
    await ws.close()


async def test_publishing_outside_the_pub_grant_closes_1008_inside_is_published(
    start: Start,
) -> None:
    hub, published, client = await start(auth=AUTH, inbound=[">"])  # inbound is not used
    url = f"/ws?topic=chat&topic=rooms.>&envelope=cbor&token={token()}"
    ws = await connect(hub, client, url)
    await ws.send_bytes(encode_message(Message(topic="chat", payload=b"ok")))
    await eventually(lambda: published == [("chat", b"ok")])
    await ws.send_bytes(encode_message(Message(topic="rooms.a", payload=b"no")))
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE
    assert msg.data == 1008
    assert msg.extra == "publishing to 'rooms.a' is not allowed: the token's pub grant controls it"
    assert published == [("chat", b"ok")]


async def test_a_token_that_expires_while_connected_closes_3000(start: Start) -> None:
    hub, _, client = await start(auth=AUTH)
    ws = await connect(hub, client, f"/ws?topic=chat&token={token(exp=1.5)}")
    msg = await ws.receive(timeout=10)
    assert msg.type is WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (3000, "token expired")
    assert hub.stats().tokens_expired == 1
    await eventually(lambda: hub.clients == 0)


async def test_without_auth_the_inbound_list_applies_and_reloads_without_a_restart(
    start: Start,
) -> None:
    hub, published, client = await start(inbound=["chat"])
    ws = await connect(hub, client, "/ws?topic=chat&envelope=cbor")
    await ws.send_bytes(encode_message(Message(topic="chat", payload=b"1")))
    await eventually(lambda: published == [("chat", b"1")])
    hub.set_inbound(["chat", "news.>"])
    await ws.send_bytes(encode_message(Message(topic="news.x", payload=b"2")))
    await eventually(lambda: published == [("chat", b"1"), ("news.x", b"2")])
    hub.set_inbound([])
    await ws.send_bytes(encode_message(Message(topic="chat", payload=b"3")))
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1008)
    assert "--ws-inbound setting is empty" in msg.extra


async def test_admin_endpoint_reloads_the_inbound_list(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(modules_dir=tmp_path, watch=False, ws_inbound=("chat",))
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/ws/inbound") as resp:
            assert await resp.json() == {"inbound": ["chat"]}
        async with session.put(f"{base}/api/ws/inbound", json={"inbound": ["a.>", "b"]}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"inbound": ["a.>", "b"]}
        async with session.put(f"{base}/api/ws/inbound", json={"inbound": ["a..b"]}) as resp:
            assert resp.status == 400
            assert "pattern 'a..b' has an empty token" in await resp.text()
        async with session.put(f"{base}/api/ws/inbound", json=["x"]) as resp:
            assert resp.status == 400
        async with session.get(f"{base}/api/ws/inbound") as resp:
            assert await resp.json() == {"inbound": ["a.>", "b"]}
        async with session.ws_connect(f"{base}/ws?topic=a.x&envelope=cbor") as ws:
            await ws.send_bytes(encode_message(Message(topic="a.x", payload=b"in")))
            await eventually(lambda: server.host.bus.stats().published >= 1)


async def test_the_server_verifies_eddsa_tokens_from_a_public_key_file(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    modules = tmp_path / "modules"
    modules.mkdir()
    server = await make_server(
        modules_dir=modules, watch=False, auth_public_key=tmp_path / "key.pem"
    )
    good = jwt.encode({"sub": "ed", "grants": {"sub": ["chat"]}}, key, algorithm="EdDSA")
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/ws?topic=chat&token={token()}") as resp:
            assert resp.status == 401  # an HS256 token: this server takes EdDSA only
            assert "accepts EdDSA only" in await resp.text()
        async with session.ws_connect(f"{base}/ws?topic=chat&token={good}") as ws:
            await eventually(lambda: server.hub.clients == 1)
            server.hub.broadcast("chat", b"hello ed")
            assert (await ws.receive(timeout=5)).data == b"hello ed"


def test_an_unreadable_or_unusable_key_stops_the_server_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the auth public key"):
        create_app(Config(modules_dir=tmp_path, auth_public_key=tmp_path / "missing.pem"))
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(ValueError, match="not a PEM public key"):
        create_app(Config(modules_dir=tmp_path, auth_public_key=tmp_path / "bad.pem"))
    with pytest.raises(ValueError, match="too short"):
        create_app(Config(modules_dir=tmp_path, auth_secret="short"))
