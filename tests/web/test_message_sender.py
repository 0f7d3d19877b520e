"""Who sent a message (guest interface version 2, `message_sender`): real modules in
wasmtime, a real server, real WebSocket clients, and clients that try to forge it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import aiohttp
import cbor2
import jwt
import pytest
from aiohttp import WSMsgType

from bus import Message, decode_message, encode_message
from tests.conftest import ServerFactory
from tests.support import eventually
from tests.wat import IMPORTS, guest, write
from tinywasm_wasi.config import DEFAULT_MODULES_DIR
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(90)

SECRET = "s" * 32

SENDER_IMPORT = (
    IMPORTS
    + """
  (import "env" "message_sender" (func $message_sender (param i32 i32) (result i32)))
"""
)

# Broadcasts "<topic>|<sender>" on `seen` for every message on `chat`, `ping` and
# `relay` ("-" when there is no sender). init traps unless message_sender says -1 there
# (no delivery), and a 4-byte buffer must still return the full length.
WITNESS = """
  (func (export "init")
    (if (i32.ne (call $message_sender (i32.const 2048) (i32.const 256)) (i32.const -1))
      (then unreachable))
    (call $subscribe {chat} (i32.const 0))
    (call $subscribe {ping} (i32.const 0))
    (call $subscribe {relay} (i32.const 0)))
  (func (export "on_topic_message") (param $tp i32) (param $tn i32) (param $p i32) (param $n i32)
    (local $len i32) (local $at i32)
    (local.set $len (call $message_sender (i32.const 2048) (i32.const 256)))
    (if (i32.ne (call $message_sender (i32.const 3072) (i32.const 4)) (local.get $len))
      (then unreachable))
    (memory.copy (i32.const 4096) (local.get $tp) (local.get $tn))
    (local.set $at (i32.add (i32.const 4096) (local.get $tn)))
    (i32.store8 (local.get $at) (i32.const 124))
    (local.set $at (i32.add (local.get $at) (i32.const 1)))
    (if (i32.lt_s (local.get $len) (i32.const 0))
      (then
        (i32.store8 (local.get $at) (i32.const 45))
        (local.set $at (i32.add (local.get $at) (i32.const 1))))
      (else
        (memory.copy (local.get $at) (i32.const 2048) (local.get $len))
        (local.set $at (i32.add (local.get $at) (local.get $len)))))
    (call $ws_broadcast {seen} (i32.const 4096) (i32.sub (local.get $at) (i32.const 4096))))
"""

# Publishes on `relay` for each message on `ping`: a module-to-module message.
PINGER = """
  (func (export "init") (call $subscribe {ping} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $publish {relay} (local.get $p) (local.get $n)))
"""

STRINGS = {"chat": "chat", "ping": "ping", "relay": "relay", "seen": "seen"}


def modules(tmp_path: Path) -> Path:
    folder = tmp_path / "modules"
    write(folder, "witness", guest(WITNESS, STRINGS, imports=SENDER_IMPORT))
    write(folder, "pinger", guest(PINGER, STRINGS))
    shutil.copy(DEFAULT_MODULES_DIR / "chat.wasm", folder / "chat.wasm")  # the real C module
    return folder


def envelope(payload: bytes, **forged: object) -> bytes:
    """A chat frame; `forged` keys are what a client adds to pass as someone else."""
    return cbor2.dumps({"topic": "chat", "type": 0, "id": 0, "payload": payload, **forged})


_kept: dict[tuple[int, str], list[bytes]] = {}


async def frames(ws: aiohttp.ClientWebSocketResponse, topic: str, count: int) -> list[bytes]:
    """The payloads of the next `count` envelope frames on `topic`; frames on other topics
    are kept for their turn (two modules' broadcasts have no common order)."""
    kept = _kept.setdefault((id(ws), topic), [])
    while len(kept) < count:
        msg = await ws.receive(timeout=10)
        assert msg.type is WSMsgType.BINARY, msg
        message = decode_message(msg.data)
        if message.type == 0:
            _kept.setdefault((id(ws), message.topic), []).append(message.payload)
    got, kept[:] = kept[:count], kept[count:]
    return got


async def ready(server: WasiServer) -> None:
    await eventually(lambda: {"witness", "pinger", "chat"} <= set(server.host.modules))


async def test_browsers_and_modules_see_the_connection_not_what_the_frame_claims(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    _kept.clear()
    server = await make_server(modules_dir=modules(tmp_path), watch=False)
    await ready(server)
    base = f"ws://127.0.0.1:{server.port}/ws"
    async with aiohttp.ClientSession() as session:
        alice = await session.ws_connect(f"{base}?topic=chat&topic=seen&envelope=cbor")
        await eventually(lambda: server.hub.clients == 1)
        bob = await session.ws_connect(f"{base}?topic=chat&topic=seen&envelope=cbor")
        raw = await session.ws_connect(f"{base}?topic=chat")  # raw mode: the first topic
        await eventually(lambda: server.hub.clients == 3)

        # Alice's frame claims to come from a user, a module and the server.
        await alice.send_bytes(
            envelope(b'say "hi"\n', sender="user:root", **{"from": "module:chat", "user": "x"})
        )
        (echo,) = await frames(bob, "chat", 1)
        assert json.loads(echo) == {"from": "conn:c1", "data": 'say "hi"\n'}
        assert await frames(bob, "seen", 1) == [b"chat|conn:c1"]
        assert await frames(alice, "chat", 1) == [echo]  # the sender sees the same line

        await bob.send_bytes(encode_message(Message(topic="chat", payload=b"yo")))
        assert json.loads((await frames(alice, "chat", 1))[0])["from"] == "conn:c2"
        await raw.send_str("plain")
        assert json.loads((await frames(alice, "chat", 1))[0]) == {
            "from": "conn:c3",
            "data": "plain",
        }

        # The server's own publish has no sender; a module's carries its name.
        server.host.bus.publish("ping", b"p")
        assert await frames(alice, "seen", 5) == [
            b"chat|conn:c1",
            b"chat|conn:c2",
            b"chat|conn:c3",
            b"ping|-",
            b"relay|module:pinger",
        ]
        for ws in (alice, bob, raw):
            await ws.close()


def token(sub: str) -> str:
    claims = {"sub": sub, "exp": int(time.time() + 600), "grants": {"sub": [">"], "pub": ["chat"]}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_with_tokens_the_sender_is_the_verified_user(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    _kept.clear()
    server = await make_server(modules_dir=modules(tmp_path), watch=False, auth_secret=SECRET)
    await ready(server)
    base = f"ws://127.0.0.1:{server.port}/ws?topic=chat&topic=seen&envelope=cbor"
    odd = 'ann "the admin"\\\n\x01é'  # JSON-escaped by the chat module, not cut
    async with aiohttp.ClientSession() as session:
        ann = await session.ws_connect(f"{base}&token={token(odd)}")
        bob = await session.ws_connect(f"{base}&token={token('bob')}")
        await eventually(lambda: server.hub.clients == 2)
        await bob.send_bytes(envelope(b"I am ann", sender="user:" + odd, **{"from": "user:" + odd}))
        echo = json.loads((await frames(ann, "chat", 1))[0])
        assert echo == {"from": "user:bob", "data": "I am ann"}
        assert await frames(ann, "seen", 1) == [b"chat|user:bob"]
        await ann.send_bytes(envelope("ünïcode".encode()))
        echo = json.loads((await frames(bob, "chat", 2))[1])
        assert echo == {"from": "user:" + odd, "data": "ünïcode"}
        assert (await frames(bob, "seen", 2))[1] == b"chat|user:" + odd.encode()
        await ann.close()
        await bob.close()
