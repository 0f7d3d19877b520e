"""Canary and blue-green releases through the real server: split, sticky, promote, roll back."""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.release_guests import flaky, sha, versioned
from tests.support import eventually
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(240)

NEVER = {"requests": 10**9, "seconds": 86_400}  # a window that does not pass in a test


async def start_canary(
    http: aiohttp.ClientSession, server: WasiServer, data: bytes, settings: dict[str, Any]
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("module", data, filename="relay.wasm", content_type="application/wasm")
    form.add_field("settings", json.dumps(settings), content_type="application/json")
    async with http.post(f"{server.url}/api/modules/relay/canary", data=form) as resp:
        return resp.status, await resp.json() if resp.status == 200 else await resp.text()


async def ask(http: aiohttp.ClientSession, server: WasiServer, **kw: Any) -> tuple[int, str]:
    async with http.get(f"{server.url}/m/relay", **kw) as resp:
        return resp.status, await resp.text()


def last_record(server: WasiServer) -> Any:
    return server.host.histories["relay"].records[-1]


@pytest.fixture
async def relay_server(tmp_path: Path, make_server: ServerFactory) -> WasiServer:
    (tmp_path / "relay.wasm").write_bytes(versioned(1))
    return await make_server(
        modules_dir=tmp_path, swap_probation=0.01, ws_queue_size=100_000, call_timeout=1.0
    )


async def test_at_10_percent_requests_and_messages_split_and_each_message_goes_once(
    relay_server: WasiServer,
) -> None:
    server = relay_server
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=out") as reader,
    ):
        status, body = await start_canary(
            http, server, versioned(2), {"percent": 10, "promote_after": NEVER}
        )
        assert status == 200, body
        assert body["canary"]["sha256"] == sha(versioned(2))
        answers = collections.Counter([(await ask(http, server))[1] for _ in range(1000)])
        assert set(answers) == {"v1", "v2"}
        assert 70 <= answers["v2"] <= 130, answers

        run = server.host.view.canaries["relay"]
        stable_before = run.stable.counters.delivered
        for i in range(1000):
            server.bus.publish("nums", b"%d" % i)
        got: list[int] = []
        async with asyncio.timeout(60):
            while len(got) < 1000:
                got.append(int((await reader.receive()).data))
        assert sorted(got) == list(range(1000)), "a message was lost or delivered twice"
        await eventually(  # the counters move just after the broadcast
            lambda: (
                run.canary.counters.delivered + run.stable.counters.delivered - stable_before
                == 1000
            )
        )
        canary_got = run.canary.counters.delivered
        assert 70 <= canary_got <= 130

        async with http.get(f"{server.url}/api/modules") as resp:
            entry = next(m for m in (await resp.json())["modules"] if m["name"] == "relay")
        assert entry["canary"]["settings"]["percent"] == 10
        assert entry["canary"]["served"] >= answers["v2"] + canary_got

        async with http.post(f"{server.url}/api/modules/relay/canary/abort") as resp:
            assert resp.status == 200
            assert (await resp.json())["verdict"] == "roll back"
        assert [(await ask(http, server))[1] for _ in range(50)] == ["v1"] * 50
        async with http.post(f"{server.url}/api/modules/relay/canary/abort") as resp:
            assert resp.status == 404
    record = last_record(server)
    assert (record.outcome.value, record.trigger.value) == ("rolled back", "canary")
    assert record.reason == "aborted by request"


async def test_sticky_header_keeps_each_user_on_one_version(relay_server: WasiServer) -> None:
    server = relay_server
    async with aiohttp.ClientSession() as http:
        settings = {"percent": 30, "promote_after": NEVER, "sticky": {"header": "X-User"}}
        assert (await start_canary(http, server, versioned(2), settings))[0] == 200
        seen: dict[str, set[str]] = collections.defaultdict(set)
        for _round in range(4):
            for user in range(60):
                status, text = await ask(http, server, headers={"X-User": f"u{user}"})
                assert status == 200
                seen[f"u{user}"].add(text)
        assert all(len(v) == 1 for v in seen.values()), "a user moved between versions"
        on_canary = sum(v == {"v2"} for v in seen.values())
        assert 5 <= on_canary <= 35


async def test_a_canary_trapping_on_5_percent_is_rolled_back_within_its_window(
    relay_server: WasiServer, tmp_path: Path
) -> None:
    server = relay_server
    settings = {
        "percent": 10,
        "promote_after": {"requests": 200, "seconds": 60},
        "max_error_rate": 0.01,
    }
    statuses: collections.Counter[int] = collections.Counter()
    async with aiohttp.ClientSession() as http:
        assert (await start_canary(http, server, flaky(2, every=20), settings))[0] == 200
        for _ in range(5000):
            status, _text = await ask(http, server)
            statuses[status] += 1
            if "relay" not in server.host.view.canaries:
                break
        await server.host.swapper.idle("relay")
        after = [await ask(http, server) for _ in range(50)]
    record = last_record(server)
    assert record.outcome.value == "rolled back"
    assert (
        record.reason.startswith("canary error rate") and "over the 0.01 allowed" in record.reason
    )
    sent = sum(statuses.values())
    # Budget: 1 % of a 200-request window = 2 failures; the third stops it.
    assert statuses[500] == 3, statuses
    assert statuses[500] <= 0.1 * sent  # never more than its share of the traffic
    assert sent < 5000
    assert after == [(200, "v1")] * 50
    assert (tmp_path / "relay.wasm").read_bytes() == versioned(1)  # the file never changed


async def test_a_clean_canary_is_promoted_and_becomes_the_file(
    relay_server: WasiServer, tmp_path: Path
) -> None:
    server = relay_server
    settings = {"percent": 20, "promote_after": {"requests": 100, "seconds": 0.2}}
    async with aiohttp.ClientSession() as http:
        assert (await start_canary(http, server, versioned(2), settings))[0] == 200
        for _ in range(5000):
            assert (await ask(http, server))[0] == 200
            if "relay" not in server.host.view.canaries:
                break
        await server.host.swapper.idle("relay")
        assert [(await ask(http, server))[1] for _ in range(20)] == ["v2"] * 20
    record = last_record(server)
    assert record.outcome.value == "promoted"
    assert record.reason.startswith("canary window passed")
    assert (tmp_path / "relay.wasm").read_bytes() == versioned(2)
    await eventually(lambda: server.host.modules["relay"].compiled.sha256 == sha(versioned(2)))


async def test_blue_green_is_a_canary_at_0_percent_switched_on_command(
    relay_server: WasiServer,
) -> None:
    server = relay_server
    async with aiohttp.ClientSession() as http:
        status, body = await start_canary(http, server, versioned(2), {"percent": 0})
        assert status == 200, body
        assert [(await ask(http, server))[1] for _ in range(100)] == ["v1"] * 100
        assert "relay" in server.host.view.canaries  # never promoted by itself
        async with http.post(f"{server.url}/api/modules/relay/canary/promote") as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["verdict"] == "promote"
        assert answer["result"]["outcome"] == "promoted"
        assert [(await ask(http, server))[1] for _ in range(20)] == ["v2"] * 20


async def test_canary_refusals(relay_server: WasiServer) -> None:
    server = relay_server
    async with aiohttp.ClientSession() as http:
        status, text = await start_canary(http, server, b"junk", {"percent": 10})
        assert status == 409 and "not started" in text
        status, text = await start_canary(http, server, versioned(1), {"percent": 10})
        assert status == 409 and "same bytes" in text
        status, text = await start_canary(http, server, versioned(2), {"percent": 300})
        assert status == 400 and "'percent' must be a number from 0 to 100" in text
        async with http.post(f"{server.url}/api/modules/relay/canary", data=b"x") as resp:
            assert resp.status == 400 and "multipart/form-data" in await resp.text()
        assert (await start_canary(http, server, versioned(2), {"promote_after": NEVER}))[0] == 200
        status, text = await start_canary(http, server, versioned(3), {"percent": 10})
        assert status == 409 and "already runs" in text
