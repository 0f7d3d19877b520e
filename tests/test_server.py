"""The WasiServer end to end: example modules, aiohttp on loopback, real WebSocket clients."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import aiohttp
import pytest

from bus import decode_message
from tests.conftest import ServerFactory
from tests.support import eventually
from tests.wat import guest, write
from tinywasm_wasi.config import DEFAULT_MODULES_DIR

pytestmark = pytest.mark.timeout(60)


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> bytes:
    msg = await ws.receive(timeout)
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    data: bytes = msg.data
    return data


async def test_two_browsers_chat_through_the_chat_module(
    make_server: ServerFactory, example_modules: Path
) -> None:
    server = await make_server(modules_dir=example_modules)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=chat") as ann,
        http.ws_connect(f"{server.url}/ws?topic=chat") as bob,
    ):
        # The chat module says who sent each line: the connection, as the server knows it.
        await ann.send_str("hi from ann")
        assert await receive(ann) == b'{"from":"conn:c1","data":"hi from ann"}'
        assert await receive(bob) == b'{"from":"conn:c1","data":"hi from ann"}'
        await bob.send_bytes(b'\xff"binary" from bob')  # bytes pass through, quotes escaped
        assert await receive(ann) == b'{"from":"conn:c2","data":"\xff\\"binary\\" from bob"}'
        assert await receive(bob) == b'{"from":"conn:c2","data":"\xff\\"binary\\" from bob"}'
    await server.host.quiesce(5)  # the frame can arrive before the counter is bumped
    chat = server.host.modules["chat"]
    assert chat.counters.delivered == 2
    assert chat.counters.broadcast == 2


async def test_monitor_sees_every_topic_through_its_wildcard(
    make_server: ServerFactory, example_modules: Path
) -> None:
    server = await make_server(modules_dir=example_modules)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=monitor") as mon,
        http.ws_connect(f"{server.url}/ws?topic=chat") as chat,
    ):
        await chat.send_str("hello")
        seen = [await receive(mon)]
        if seen[0].startswith(b"events:"):  # the sender's init message may still be in flight
            seen.append(await receive(mon))
        assert seen[-1] == b"chat: hello"


async def test_envelope_mode_and_several_topics_on_one_connection(
    make_server: ServerFactory, example_modules: Path
) -> None:
    server = await make_server(modules_dir=example_modules)
    # The sender publishes once from init() and the monitor echoes it on `monitor`: that
    # copy must be on its way to the hub (it gets there on the next loop turn, long before
    # our handshake) before we subscribe, or it would arrive as a third frame.
    assert await server.host.quiesce(5)
    monitor = server.host.modules["monitor"]
    await eventually(
        lambda: monitor.counters.broadcast == 1, "the monitor's copy of the sender's message"
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=chat&topic=monitor&envelope=cbor") as ws,
        http.ws_connect(f"{server.url}/ws?topic=chat") as sender,
    ):
        await sender.send_str("x")
        got = {}
        for _ in range(2):
            message = decode_message(await receive(ws))
            got[message.topic] = message.payload
        # The chat module's line names its sender: the second connection.
        assert got == {"chat": b'{"from":"conn:c2","data":"x"}', "monitor": b"chat: x"}


async def test_sender_publishes_from_init_and_receiver_forwards_it(
    make_server: ServerFactory, example_modules: Path
) -> None:
    server = await make_server(modules_dir=example_modules)
    await server.host.quiesce(5)
    receiver = server.host.modules["receiver"]
    assert receiver.counters.as_dict() == {
        **receiver.counters.as_dict(),
        "delivered": 1,
        "broadcast": 1,
    }
    assert server.host.modules["sender"].counters.published == 1


async def test_browsers_may_only_publish_to_the_inbound_allow_list(
    make_server: ServerFactory,
) -> None:
    server = await make_server(ws_inbound=("rooms.*",))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=chat") as ws,
    ):
        await ws.send_str("not allowed any more")
        msg = await ws.receive(5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
        assert "chat" in msg.extra and "--ws-inbound" in msg.extra
    assert server.host.modules["chat"].counters.delivered == 0
    assert server.hub.stats().inbound_refused == 1


async def test_healthz_and_api_modules_report_modules_and_clients(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{server.url}/ws?topic=chat"):
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
            live = len(server.host.live())
            assert await resp.json() == {
                "status": "ok",
                "modules": live,
                "clients": 1,
                "problems": [],
            }
        async with http.get(f"{server.url}/api/modules") as resp:
            body = await resp.json()
    modules = {m["name"]: m for m in body["modules"]}
    assert {"chat", "monitor", "receiver", "sender"} <= set(modules)  # examples get added
    assert len(modules) == live
    chat = modules["chat"]
    assert chat["state"] == "live"
    assert chat["subscriptions"] == ["chat"]
    assert len(chat["sha256"]) == 64
    assert {"memory", "init", "on_message", "malloc", "free"} <= set(chat["exports"])
    assert chat["mailbox"]["depth"] == 0
    assert set(chat["counters"]) >= {"delivered", "failed", "published", "broadcast"}
    assert modules["monitor"]["subscriptions"] == [">"]
    assert body["refused"] == {}
    hub = body["hub"]  # the hub's counters, slow-consumer closes among them
    assert hub["clients"] == 1 and hub["slow_disconnects"] == 0


async def test_demo_page_is_served(make_server: ServerFactory) -> None:
    server = await make_server()
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert "/ws?topic=" in await resp.text()


async def test_ws_without_topic_is_a_readable_400(make_server: ServerFactory) -> None:
    server = await make_server()
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/ws") as resp:
        assert resp.status == 400
        assert "topic" in await resp.text()


async def test_a_module_that_fails_to_load_does_not_stop_the_others(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "broken.wasm").write_bytes(b"\0asm garbage")
    write(
        tmp_path,
        "echo",
        guest(
            """
      (func (export "init") (call $subscribe {t} (i32.const 0)))
      (func (export "on_message") (param $p i32) (param $n i32)
        (call $ws_broadcast {t} (local.get $p) (local.get $n)))
    """,
            {"t": "chat"},
        ),
    )
    server = await make_server(modules_dir=tmp_path)
    assert list(server.host.modules) == ["echo"]
    assert "invalid WebAssembly" in server.host.refused["broken"]
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=chat") as ws,
    ):
        await ws.send_str("still works")
        assert await receive(ws) == b"still works"


async def test_stop_drains_modules_then_closes_clients_with_1001(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A module whose drain() asks for two more 20 ms waits, and broadcasts when it
    # reaches idle: that last frame must reach the browser before the 1001 close.
    write(
        tmp_path,
        "careful",
        guest(
            """
      (global $left (mut i32) (i32.const 2))
      (func (export "drain") (result i32)
        (if (result i32) (i32.eqz (global.get $left))
          (then (call $ws_broadcast {t} {bye}) (i32.const 0))
          (else (global.set $left (i32.sub (global.get $left) (i32.const 1))) (i32.const 20))))
    """,
            {"t": "news", "bye": "drained"},
        ),
    )
    caplog.set_level(logging.INFO, "tinywasm")
    server = await make_server(modules_dir=tmp_path)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=news") as ws,
    ):
        await server.stop()
        assert await receive(ws) == b"drained"
        msg = await ws.receive(5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1001  # the code the server sent (it does not wait for our reply)
    await server.stop()  # idempotent
    assert server.hub.stats().frames_queued == 1  # drain() reached 0 once, not again
    messages = [r.getMessage() for r in caplog.records if r.name == "tinywasm.server"]
    assert messages.count("closing") == 1
    assert messages.count("closed") == 1
    assert not server.host.modules


async def test_port_in_use_fails_start_with_an_oserror(make_server: ServerFactory) -> None:
    first = await make_server()
    with pytest.raises(OSError):
        await make_server(port=first.port)


async def test_ws_settings_reach_the_hub(make_server: ServerFactory) -> None:
    server = await make_server(
        ws_max_frame=100,
        ws_origins=("https://app.example",),
        ws_rate_limit=50,
        ws_queue_bytes=100_000,
        watch=False,
    )
    url = f"{server.url}/ws?topic=chat"
    async with aiohttp.ClientSession() as http:
        # --ws-origins: the listed origin only (programs sending no Origin are let in).
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url, headers={"Origin": server.url})
        assert info.value.status == 403
        async with http.ws_connect(url, headers={"Origin": "https://app.example"}) as ws:
            # --ws-rate-limit: 60 frames at 50/s, every one echoed by the chat module.
            for i in range(60):
                await ws.send_bytes(b"%d" % i)
            wrapped = [b'{"from":"conn:c1","data":"%d"}' % i for i in range(60)]  # who sent it
            assert [await receive(ws) for _ in range(60)] == wrapped
            assert server.hub.stats().inbound_throttled > 0
            # --ws-max-frame
            await ws.send_bytes(b"x" * 101)
            msg = await ws.receive(5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
            assert "the limit is 100 bytes" in msg.extra
        # --ws-queue-bytes: a client that does not read is closed once 100 kB wait for it.
        async with http.ws_connect(f"{server.url}/ws?topic=big") as slow:
            await eventually(lambda: server.hub.clients >= 1, "the hub to register the client")
            for _ in range(1000):
                server.hub.broadcast("big", bytes(60_000))
                await asyncio.sleep(0)
                if server.hub.stats().slow_disconnects:
                    break
            assert server.hub.stats().slow_disconnects == 1
            while (msg := await slow.receive(5)).type is aiohttp.WSMsgType.BINARY:
                pass
            assert (msg.data, msg.extra) == (1013, "slow consumer: over 100000 bytes queued")


async def test_admin_token_reaches_the_routes(make_server: ServerFactory) -> None:
    server = await make_server(admin_token="s3cret", watch=False)
    reload = f"{server.url}/api/modules/chat/reload"
    async with aiohttp.ClientSession() as http:
        async with http.post(reload) as resp:
            assert resp.status == 401
        async with http.post(reload, headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 200


async def test_status_is_public_unless_configured_private(make_server: ServerFactory) -> None:
    public = await make_server(admin_token="s3cret", watch=False)
    private = await make_server(admin_token="s3cret", watch=False, status_private=True)
    token = {"Authorization": "Bearer s3cret"}
    async with aiohttp.ClientSession() as http:
        for path in ("/api/modules", "/api/modules/chat/history"):
            async with http.get(public.url + path) as resp:
                assert resp.status == 200
            async with http.get(private.url + path) as resp:
                assert resp.status == 401
            async with http.get(private.url + path, headers=token) as resp:
                assert resp.status == 200
        async with http.get(private.url + "/healthz") as resp:
            assert resp.status == 200  # load balancers need no token


async def test_reload_finds_a_middleware_by_its_module_name(make_server: ServerFactory) -> None:
    server = await make_server(watch=False)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/modules/auth/reload") as resp:
            assert resp.status == 200, await resp.text()  # its file is 20-auth@[echo_http].wasm
        async with http.post(f"{server.url}/api/modules/nothing/reload") as resp:
            assert resp.status == 404
            assert "no module file for 'nothing'" in await resp.text()


async def test_reload_applies_a_limits_file_edit_to_the_same_bytes(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    shutil.copy(DEFAULT_MODULES_DIR / "receiver.wasm", tmp_path / "receiver.wasm")
    server = await make_server(modules_dir=tmp_path, watch=False)
    assert server.host.modules["receiver"].limits.memory_limit == 64 * 1024 * 1024
    (tmp_path / "limits.toml").write_text('[receiver]\nmemory_limit = "2MiB"\n')
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/modules/receiver/reload") as resp:
            assert resp.status == 200
            assert (await resp.json())["result"]["outcome"] == "swapped"
        async with http.post(f"{server.url}/api/modules/receiver/reload") as resp:
            assert (await resp.json())["result"] is None  # nothing changed since
    assert server.host.modules["receiver"].limits.memory_limit == 2 * 1024 * 1024


async def test_a_broken_limits_file_is_logged_once_and_the_defaults_apply(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a", "b"):
        shutil.copy(DEFAULT_MODULES_DIR / "receiver.wasm", tmp_path / f"{name}.wasm")
    (tmp_path / "limits.toml").write_text("[a]\nmemory_limit = \n")
    server = await make_server(modules_dir=tmp_path, watch=False)
    assert {m.limits.memory_limit for m in server.host.modules.values()} == {64 * 1024 * 1024}
    errors = [r for r in caplog.records if "ignoring the limits file" in r.getMessage()]
    assert len(errors) == 1
    assert "is not valid TOML" in errors[0].getMessage()
