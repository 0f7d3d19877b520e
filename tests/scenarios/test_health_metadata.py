"""Health checks and metadata through the real server: deploys refused, status shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest

from tests.conftest import ServerFactory
from tests.release_guests import HEALTHY, health, metadata, toggled, versioned
from tests.support import eventually
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(120)


async def deploy(server: WasiServer, data: bytes, name: str = "relay") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{server.url}/api/modules/{name}", data=data) as resp,
    ):
        return resp.status, await resp.json()


async def entry(server: WasiServer, name: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/api/modules") as resp:
        return next(m for m in (await resp.json())["modules"] if m["name"] == name)


async def answer(server: WasiServer) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/m/relay") as resp:
        return await resp.text()


@pytest.mark.parametrize(
    ("check", "says"),
    [
        ("(i32.const 7)", "health_check() returned 7"),
        ("(i32.const -1)", "health_check() returned -1"),
        ("unreachable (i32.const 0)", "health_check"),
        ("(loop $l (br $l)) (i32.const 0)", "deadline"),
    ],
    ids=["non-zero", "negative", "trap", "timeout"],
)
async def test_a_failing_health_check_refuses_the_version_and_the_old_one_serves(
    tmp_path: Path, make_server: ServerFactory, check: str, says: str
) -> None:
    (tmp_path / "relay.wasm").write_bytes(versioned(1, HEALTHY))
    server = await make_server(modules_dir=tmp_path, swap_probation=0.01, call_timeout=0.2)
    assert (await entry(server, "relay"))["health"] == "healthy"
    status, body = await deploy(server, versioned(2, health(check)))
    assert (status, body["outcome"]) == (422, "refused")
    assert says in body["error"]
    assert await answer(server) == "v1"
    assert (tmp_path / "relay.wasm").read_bytes() == versioned(1, HEALTHY)
    status, body = await deploy(server, versioned(3, HEALTHY))
    assert (status, body["outcome"]) == (200, "swapped")


async def test_periodic_checks_mark_a_live_module_unhealthy_and_healthy_again(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "probe.wasm").write_bytes(toggled())
    server = await make_server(modules_dir=tmp_path, health_interval=0.05)
    assert (await entry(server, "probe"))["health"] == "healthy"
    server.bus.publish("sick", b"\x03")

    async def health() -> tuple[str, str | None]:
        e = await entry(server, "probe")
        return e["health"], e["health_error"]

    await eventually(lambda: _is(health(), ("unhealthy", "health_check() returned 3")), "unhealthy")
    assert server.host.modules["probe"].state.value == "live"  # it keeps serving
    server.bus.publish("sick", b"\x00")
    await eventually(lambda: _is(health(), ("healthy", None)), "healthy again")


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


META = {"name": "relay", "version": "2.0.1", "description": "relays nums", "subscribes": ["nums"]}


@pytest.mark.parametrize("encode", [lambda m: json.dumps(m).encode(), cbor2.dumps])
async def test_metadata_is_shown_in_status_and_history(
    tmp_path: Path, make_server: ServerFactory, encode: Any
) -> None:
    server = await make_server(modules_dir=tmp_path, swap_probation=0.01)
    status, body = await deploy(server, versioned(1, metadata(encode(META))))
    assert status == 200, body
    assert body["result"]["metadata"]["version"] == "2.0.1"
    shown = (await entry(server, "relay"))["metadata"]
    assert shown == {**META, "publishes": [], "routes": []}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/api/modules/relay/history") as resp,
    ):
        assert (await resp.json())["history"][-1]["metadata"]["description"] == "relays nums"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (json.dumps({**META, "name": "other"}).encode(), "names it 'other'"),
        (b"{broken", "invalid JSON"),
        (json.dumps({"version": 2}).encode(), "'version' must be text"),
        (json.dumps({"colour": "red"}).encode(), "unknown metadata key(s) colour"),
    ],
)
async def test_invalid_metadata_is_refused_on_deploy(
    tmp_path: Path, make_server: ServerFactory, raw: bytes, says: str
) -> None:
    (tmp_path / "relay.wasm").write_bytes(versioned(1))
    server = await make_server(modules_dir=tmp_path, swap_probation=0.01)
    status, body = await deploy(server, versioned(2, metadata(raw)))
    assert (status, body["outcome"]) == (422, "refused")
    assert "invalid metadata" in body["error"] and says in body["error"]
    assert await answer(server) == "v1"
