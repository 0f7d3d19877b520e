"""Sticky rollback: a rolled-back version keeps serving across restarts until its file changes.

A real server, real files and a real state directory; the server is restarted on the same folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.release_guests import RESTORE_TRAPS, SAVES_STATE, sha, versioned
from tests.support import eventually
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(180)


async def status(server: WasiServer, name: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/api/modules") as resp:
        return next(m for m in (await resp.json())["modules"] if m["name"] == name)


async def post(server: WasiServer, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{server.url}{path}") as resp:
        return resp.status, await resp.json() if resp.status == 200 else await resp.text()


async def answer(server: WasiServer) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/m/relay") as resp:
        return await resp.text()


async def test_manual_rollback_is_sticky_across_restarts_until_unpin(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    path = tmp_path / "relay.wasm"
    path.write_bytes(versioned(1))
    settings: dict[str, Any] = {"modules_dir": tmp_path, "watch": False, "swap_probation": 0.01}
    server = await make_server(**settings)
    path.write_bytes(versioned(2))
    assert (await post(server, "/api/modules/relay/reload"))[0] == 200
    assert await answer(server) == "v2"
    code, body = await post(server, "/api/modules/relay/rollback")
    assert code == 200
    assert await answer(server) == "v1"
    entry = await status(server, "relay")
    assert entry["file_differs"] is True
    assert entry["pinned"]["sha256"] == sha(versioned(1))
    assert entry["pinned"]["file_sha256"] == sha(versioned(2))
    # A reload of the unchanged file keeps the pin.
    assert (await post(server, "/api/modules/relay/reload"))[0] == 200
    assert await answer(server) == "v1"
    await server.stop()

    server = await make_server(**settings)
    assert await answer(server) == "v1", "a restart served the version that was rolled back"
    assert (await status(server, "relay"))["pinned"] is not None
    code, body = await post(server, "/api/modules/relay/unpin")
    assert code == 200
    assert body["result"]["outcome"] == "swapped"
    assert await answer(server) == "v2"
    assert (await status(server, "relay"))["pinned"] is None
    assert (await post(server, "/api/modules/relay/unpin"))[0] == 409
    await server.stop()

    server = await make_server(**settings)
    assert await answer(server) == "v2"


async def test_probation_rollback_pins_until_the_file_changes_again(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    path = tmp_path / "relay.wasm"
    path.write_bytes(versioned(1, SAVES_STATE))
    state = tmp_path / "state"
    settings: dict[str, Any] = {
        "modules_dir": tmp_path,
        "state_dir": state,
        "swap_probation": 0.01,
        "watch_debounce": 0.02,
    }
    server = await make_server(**settings)
    path.write_bytes(versioned(2, RESTORE_TRAPS))
    await eventually(lambda: server.host.pins.get("relay") is not None, "the rollback's pin")
    assert await answer(server) == "v1"
    records = [r.outcome.value for r in server.host.histories["relay"].records]
    assert records[-1] == "rolled back"
    assert (state / "pins.json").is_file()
    await server.stop()

    server = await make_server(**settings)
    assert await answer(server) == "v1"
    path.write_bytes(versioned(3))  # the file changes again: the pin ends, the file serves
    await eventually(lambda: server.host.pins.get("relay") is None, "the pin to end")
    await eventually(
        lambda: server.host.modules["relay"].compiled.sha256 == sha(versioned(3)), "v3 to serve"
    )
    await server.stop()
    server = await make_server(**settings)
    assert await answer(server) == "v3"
    assert not (state / "pinned-relay.wasm.bin").exists()
