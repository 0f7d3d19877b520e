"""HTTP routes other than /ws: health, module status and the demo page.

Read-only routes are public. State-changing ones (reload, rollback, the inbound
allow-list) go through
an `AdminGuard` (tinywasm_wasi/admin.py): a token, or loopback clients only.
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from bus import TopicError, validate_topic
from bus.nats import NatsLink
from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.policy.public_paths import PublicPaths
from tinywasm_wasi.policy.topic_history import parse_position
from tinywasm_wasi.supervisor.host import ModuleHost
from tinywasm_wasi.web.admin import AdminGuard, Handler
from tinywasm_wasi.web.hub import Hub

__all__ = ["add_module_routes", "add_static_routes"]


MAX_HISTORY_READ = 100_000


def _payload_json(payload: bytes) -> dict[str, str]:
    """A payload in JSON: base64 always, and the text too when it is UTF-8."""
    out = {"payload_base64": base64.b64encode(payload).decode("ascii")}
    with contextlib.suppress(UnicodeDecodeError):
        out["payload"] = payload.decode("utf-8")
    return out


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


def _public(handler: Handler) -> Handler:
    return handler


def add_module_routes(
    app: web.Application,
    host: ModuleHost,
    hub: Hub,
    *,
    nats: NatsLink | None = None,
    admin: AdminGuard | None = None,
    status_private: bool = False,
) -> None:
    """`/healthz`, `/api/modules` and each module's history, reload and rollback.

    `hub` gives the client count and the hub's counters. `admin` guards reload and
    rollback; the default serves them to loopback clients only. With
    `status_private`, it guards the module status and history too (`/healthz`
    stays public, for load balancers). With `nats`, /healthz says ``degraded``
    while the NATS connection is down (local traffic still flows: the answer
    stays 200), and /api/modules carries the link's counters.
    """
    if admin is None:
        admin = AdminGuard(None)
    paths = _Paths(host)

    def answer(data: object) -> web.Response:
        return web.json_response(paths.public().json(data))

    async def healthz(_request: web.Request) -> web.Response:
        body: dict[str, object] = {
            "status": "ok",
            "modules": len(host.live()),
            "clients": hub.clients,
        }
        if nats is not None:
            body["nats"] = "connected" if nats.connected else "disconnected"
            if not nats.connected:
                body["status"] = "degraded"
        return answer(body)

    def with_pin(entry: dict[str, Any]) -> dict[str, Any]:
        pin = host.pins.get(str(entry.get("name")))
        entry["pinned"] = None if pin is None else pin.to_json()
        entry["file_differs"] = pin is not None
        run = host.view.canaries.get(str(entry.get("name")))
        entry["canary"] = None if run is None else run.to_json()
        return entry

    async def list_modules(_request: web.Request) -> web.Response:
        stats = host.bus.stats()
        history = hub.history_stats()
        return answer(
            {
                "modules": [with_pin(m.snapshot()) for m in host.modules.values()]
                + [with_pin(q.to_json()) for q in host.quarantined.values()],
                "refused": dict(host.refused),
                "bus": {
                    "published": stats.published,
                    "delivered": stats.delivered,
                    "dropped": stats.dropped,
                    "subscriptions": stats.subscriptions,
                },
                "hub": asdict(hub.stats()),
                **({"nats": asdict(nats.stats())} if nats is not None else {}),
                "history": None if history is None else asdict(history),
            }
        )

    def known(request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in host.histories and name not in host.modules:
            raise web.HTTPNotFound(text=f"no module named {name!r}: see GET /api/modules\n")
        return name

    async def history(request: web.Request) -> web.Response:
        name = known(request)
        records = host.histories[name].records if name in host.histories else []
        return answer({"name": name, "history": [r.to_json() for r in records]})

    async def reload(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in host.modules and host.find_file(name) is None:
            raise web.HTTPNotFound(
                text=f"no module file for {name!r} (name.wasm or [NN-]name@[rule].wasm) "
                "in the modules folder\n"
            )
        if not host.runs_here(name) and name not in host.modules:
            assert host.placement is not None  # runs_here is only false with placement
            raise web.HTTPMisdirectedRequest(
                text=f"module {name!r} runs on worker {host.placement.owner(name)}, not on "
                f"this one ({host.placement.me}): it reloads on its owner, which watches the "
                "same folder; retry until the answer comes from that worker "
                "(the X-Tinywasm-Worker header)\n"
            )
        record = await host.swap(name, "api")
        return answer(
            {
                "name": name,
                "result": record.to_json() if record else None,
                "note": None if record else "unchanged, or folded into a swap already running",
            }
        )

    async def rollback(request: web.Request) -> web.Response:
        name = known(request)
        try:
            record = await host.rollback(name)
        except ModuleLoadError as exc:
            raise web.HTTPConflict(text=f"{paths.public().text(str(exc))}\n") from None
        return answer({"name": name, "result": record.to_json() if record else None})

    async def unpin(request: web.Request) -> web.Response:
        name = known(request)
        try:
            record = await host.unpin(name)
        except ModuleLoadError as exc:
            raise web.HTTPConflict(text=f"{paths.public().text(str(exc))}\n") from None
        return answer({"name": name, "result": record.to_json() if record else None})

    async def get_inbound(_request: web.Request) -> web.Response:
        return web.json_response({"inbound": list(hub.inbound)})

    async def put_inbound(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            patterns = body["inbound"]
            if not isinstance(patterns, list):
                raise TypeError
            hub.set_inbound(patterns)
        except (ValueError, KeyError, TypeError) as exc:
            detail = f": {exc}" if isinstance(exc, TopicError) else ""
            raise web.HTTPBadRequest(
                text='expected JSON {"inbound": ["pattern", ...]} with valid topic patterns'
                f"{detail}\n"
            ) from None
        return web.json_response({"inbound": list(hub.inbound)})

    async def topic_history(request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        try:
            validate_topic(topic)
            limit = int(request.query.get("limit", "100"))
            if not 1 <= limit <= MAX_HISTORY_READ:
                raise ValueError(f"limit must be 1 to {MAX_HISTORY_READ}")
            since_text = request.query.get("since")
            since = None if since_text is None else parse_position(since_text)
        except (TopicError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        refusal = hub.check_reader(request.headers.get("Authorization"), topic)
        if refusal is not None:
            status, reason = refusal
            if status == 401:
                raise web.HTTPUnauthorized(
                    text=f"{reason}\n", headers={"WWW-Authenticate": "Bearer"}
                )
            raise web.HTTPForbidden(text=f"{reason}\n")
        read = hub.read_history(topic, since, limit)
        if read is None:
            raise web.HTTPNotFound(
                text=f"topic {topic!r} keeps no history: add a --history rule for it\n"
            )
        recovered, position, entries = read
        return web.json_response(
            {
                "topic": topic,
                "epoch": position.epoch,
                "offset": position.offset,
                "recovered": recovered,
                "messages": [
                    {"offset": offset, **_payload_json(payload)} for offset, payload in entries
                ],
            }
        )

    app.router.add_get("/healthz", healthz)
    status = admin if status_private else _public
    app.router.add_get("/api/modules", status(list_modules))
    app.router.add_get("/api/modules/{name}/history", status(history))
    app.router.add_get("/api/ws/inbound", status(get_inbound))
    app.router.add_get("/api/topics/{topic}/history", topic_history)
    app.router.add_put("/api/ws/inbound", admin(put_inbound))
    app.router.add_post("/api/modules/{name}/reload", admin(reload))
    app.router.add_post("/api/modules/{name}/rollback", admin(rollback))
    app.router.add_post("/api/modules/{name}/unpin", admin(unpin))


class _Paths:
    """The `PublicPaths` of the host's modules folder, made again only when the folder changes."""

    def __init__(self, host: ModuleHost) -> None:
        self._host = host
        self._for: Path | None = None
        self._paths = PublicPaths()

    def public(self) -> PublicPaths:
        directory = self._host.directory
        if directory != self._for:
            self._for = directory
            folders = (
                () if directory is None else (str(directory.absolute()), str(directory.resolve()))
            )
            self._paths = PublicPaths(*folders)
        return self._paths
