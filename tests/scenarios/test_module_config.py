"""Per-module config through the real server: config_get, validate_config, a change applied
by a swap with state handoff, and secrets that no API response ever shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.release_guests import configured, versioned
from tests.support import eventually
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(120)

SECRET_VALUE = "s3cr3t-Value-4711"


async def get(server: WasiServer, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}{path}") as resp:
        return resp.status, await resp.text()


async def answer(server: WasiServer) -> str:
    return (await get(server, "/m/conf"))[1]


async def test_a_config_change_is_seen_without_losing_state(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "conf.wasm").write_bytes(configured())
    (tmp_path / "conf.toml").write_text('greeting = "hello"\n')
    server = await make_server(modules_dir=tmp_path, swap_probation=0.01, watch_debounce=0.02)
    assert await answer(server) == "hello|0"
    for i in range(3):
        server.bus.publish("nums", b"%d" % i)
    await eventually(lambda: _eq(answer(server), "hello|3"), "three messages counted")
    sha = server.host.modules["conf"].compiled.sha256

    (tmp_path / "conf.toml").write_text('greeting = "bonjour"\n')
    await eventually(lambda: _eq(answer(server), "bonjour|3"), "the new config, same state")
    await server.host.swapper.idle("conf")
    record = server.host.histories["conf"].records[-1]
    assert (record.outcome.value, record.sha256) == ("swapped", sha)  # the same bytes
    _status, body = await get(server, "/api/modules")
    entry = next(m for m in json.loads(body)["modules"] if m["name"] == "conf")
    assert entry["config"] == {"greeting": "bonjour"}


async def _eq(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def test_validate_config_and_bad_config_files_refuse_the_version(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "conf.wasm").write_bytes(configured())
    (tmp_path / "conf.toml").write_text('greeting = "hi"\n')
    server = await make_server(modules_dir=tmp_path, swap_probation=0.01, watch=False)
    assert await answer(server) == "hi|0"
    cases = [
        ('other = "x"\n', "validate_config() returned 1"),
        ("greeting = 5\n", "'greeting' must be a string"),
        ('greeting = "${NOT_SET_ANYWHERE}"\n', "${NOT_SET_ANYWHERE}, which is not set"),
    ]
    async with aiohttp.ClientSession() as http:
        for text, says in cases:
            (tmp_path / "conf.toml").write_text(text)
            async with http.post(f"{server.url}/api/modules/conf/reload") as resp:
                result = (await resp.json())["result"]
            assert result["outcome"] == "refused", text
            assert says in result["error"]
            assert await answer(server) == "hi|0"  # the old version, old config, serves


async def test_secrets_reach_the_module_and_never_an_api_response(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "conf.wasm").write_bytes(configured())
    (tmp_path / "conf.toml").write_text('greeting = "${GREETING_SECRET}"\nplain = "visible"\n')
    (tmp_path / "relay.wasm").write_bytes(versioned(1))
    server = await make_server(
        modules_dir=tmp_path,
        swap_probation=0.01,
        watch=False,
        environment={"GREETING_SECRET": SECRET_VALUE},
    )
    assert await answer(server) == f"{SECRET_VALUE}|0"  # the module has it
    bodies = []
    async with aiohttp.ClientSession() as http:
        for method, path, data in [
            ("GET", "/api/modules", None),
            ("GET", "/api/modules/conf/history", None),
            ("GET", "/healthz", None),
            ("POST", "/api/modules/conf/reload", None),
            ("PUT", "/api/modules/conf", configured()),  # unchanged
            ("PUT", "/api/modules/conf", b"\0asm broken"),  # refused
            ("POST", "/api/modules/conf/rollback", None),
            ("GET", "/api/modules", None),
        ]:
            async with http.request(method, f"{server.url}{path}", data=data) as resp:
                bodies.append(await resp.text())
    assert all(SECRET_VALUE not in body for body in bodies)
    modules = json.loads(bodies[0])["modules"]
    conf = next(m for m in modules if m["name"] == "conf")
    assert conf["config"] == {"greeting": "(secret)", "plain": "visible"}
    assert SECRET_VALUE not in repr(server.config)
