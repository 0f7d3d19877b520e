"""HTTP routes other than /ws: health, module status and the demo page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from tinywasm_wasi.host import ModuleHost

__all__ = ["add_module_routes", "add_static_routes"]


def add_static_routes(app: web.Application, web_dir: Path) -> None:
    """`/` serves the demo page; `/static/` the rest of the web folder."""
    index = web_dir / "index.html"

    async def index_page(_request: web.Request) -> web.StreamResponse:
        if not index.is_file():
            raise web.HTTPNotFound(text=f"no demo page: {index} is missing\n")
        return web.FileResponse(index)

    app.router.add_get("/", index_page)
    if web_dir.is_dir():
        app.router.add_static("/static/", web_dir, show_index=False)


def add_module_routes(app: web.Application, host: ModuleHost, clients: Any) -> None:
    """`/healthz` and `GET /api/modules`. `clients()` returns the WebSocket client count."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "modules": len(host.live()),
                "clients": clients(),
            }
        )

    async def list_modules(_request: web.Request) -> web.Response:
        stats = host.bus.stats()
        return web.json_response(
            {
                "modules": [m.snapshot() for m in host.modules.values()],
                "refused": host.refused,
                "bus": {
                    "published": stats.published,
                    "delivered": stats.delivered,
                    "dropped": stats.dropped,
                    "subscriptions": stats.subscriptions,
                },
            }
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/modules", list_modules)
