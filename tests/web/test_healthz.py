"""/healthz against a real server: its problem list follows every change, paths stay private.

The list is cached between registry changes (bench.http showed recomputing it per
request cost 10 % of a /healthz answer), so these tests change the modules through
the server's own paths (a refused file at start-up, a reload that fixes it, a
quarantine) and check that the very next /healthz says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.support import eventually
from tests.wat import guest, write

pytestmark = pytest.mark.timeout(60)

ANSWER = guest('(func (export "handle") (param i32 i32) (result i32) {r} drop)', {"r": "ok"})
TRAPS = guest('(func (export "handle") (param i32 i32) (result i32) unreachable)')


async def healthz(http: aiohttp.ClientSession, url: str, query: str = "") -> tuple[int, Any]:
    async with http.get(f"{url}/healthz{query}") as resp:
        return resp.status, await resp.json()


async def test_healthz_follows_a_refusal_its_fix_and_keeps_paths_out(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    modules = tmp_path / "modules"
    write(modules, "good", ANSWER)
    (modules / "bad.wasm").mkdir()  # reading it fails with the absolute path in the error
    server = await make_server(modules_dir=modules, watch=False)
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # the second answer comes from the cache: the same
            status, body = await healthz(http, server.url)
            assert status == 200
            assert body["status"] == "degraded"
            assert [(p["module"], p["problem"]) for p in body["problems"]] == [("bad", "refused")]
            assert str(tmp_path) not in str(body)
        status, _ = await healthz(http, server.url, "?strict")
        assert status == 503

        shutil.rmtree(modules / "bad.wasm")
        write(modules, "bad", ANSWER)
        async with http.post(f"{server.url}/api/modules/bad/reload") as resp:
            assert resp.status == 200
        status, body = await healthz(http, server.url, "?strict")
        assert (status, body["status"], body["problems"]) == (200, "ok", [])
        assert body["modules"] == 2


async def test_healthz_shows_a_quarantine_as_soon_as_it_happens(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    modules = tmp_path / "modules"
    write(modules, "trapper", TRAPS)
    server = await make_server(modules_dir=modules, watch=False, quarantine_traps=2)
    async with aiohttp.ClientSession() as http:
        status, body = await healthz(http, server.url)
        assert (status, body["problems"]) == (200, [])
        for _ in range(2):
            async with http.get(f"{server.url}/m/trapper") as resp:
                assert resp.status == 500

        async def quarantined() -> bool:
            _, body = await healthz(http, server.url)
            return [p["problem"] for p in body["problems"]] == ["quarantined"]

        await eventually(quarantined, "/healthz to list the quarantine")
        assert "trapper" in server.host.quarantined
