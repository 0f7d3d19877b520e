"""The application's own life cycle, driven by pytest-aiohttp's `aiohttp_client`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from tinywasm_wasi.config import DEFAULT_MODULES_DIR, Config
from tinywasm_wasi.runtime.module import ModuleState
from tinywasm_wasi.server import BUS, HOST, HUB, create_app

Client = Callable[[web.Application], Awaitable[TestClient]]


async def test_the_app_loads_modules_on_startup_and_stops_them_on_cleanup(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    app = create_app(Config(modules_dir=DEFAULT_MODULES_DIR, cache_dir=tmp_path, watch=False))
    host = app[HOST]
    assert not host.modules, "nothing is loaded before the app starts"
    client = await aiohttp_client(app)
    modules = dict(host.modules)
    assert {"chat", "echo", "monitor"} <= set(modules)

    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["modules"] == len(modules)
    resp = await client.get("/m/echo")
    assert resp.status == 200
    assert app[BUS].stats().subscriptions > 0

    await client.close()  # aiohttp runs on_shutdown, then the cleanup contexts
    assert not host.modules
    assert all(m.state is ModuleState.CLOSED for m in modules.values())
    assert app[HUB].closed
