"""HTTP routes other than /ws: health, module status and the demo page.

Read-only routes are public. State-changing ones (reload, rollback, the inbound
allow-list) go through
an `AdminGuard` (tinywasm_wasi/admin.py): a token, or loopback clients only.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from bus import TopicError, validate_topic
from bus.nats import NatsLink
from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.policy.public_paths import PublicPaths
from tinywasm_wasi.policy.topic_history import parse_position
from tinywasm_wasi.supervisor.host import ModuleHost
from tinywasm_wasi.web.admin import AdminGuard, Handler
from tinywasm_wasi.web.hub import Hub
from tinywasm_wasi.web.relay import RELAY_ACTIONS, Action, AdminRelay, Here
from tinywasm_wasi.web.status import StatusView

__all__ = ["add_api_fallback", "add_module_routes", "add_static_routes"]


MAX_HISTORY_READ = 100_000


def _payload_json(payload: bytes) -> dict[str, str]:
    """A payload in JSON: base64 always, and the text too when it is UTF-8."""
    out = {"payload_base64": base64.b64encode(payload).decode("ascii")}
    with contextlib.suppress(UnicodeDecodeError):
        out["payload"] = payload.decode("utf-8")
    return out


MAX_PRESENCE_READ = 100_000


def _check_reader(hub: Hub, admin: AdminGuard, request: web.Request, topic: str) -> None:
    """With token auth on: 401 or 403 unless the bearer token may subscribe to `topic`,
    or the request carries the admin token (when one is set)."""
    refusal = hub.check_reader(request.headers.get("Authorization"), topic)
    if refusal is not None and not admin.allows_by_token(request):
        status, reason = refusal
        if status == 401:
            raise web.HTTPUnauthorized(text=f"{reason}\n", headers={"WWW-Authenticate": "Bearer"})
        raise web.HTTPForbidden(text=f"{reason}\n")


def add_static_routes(app: web.Application, web_dir: Path) -> None:
    """The web folder's pages and scripts.

    `/` is the demo page, `/dashboard` the live dashboard, `/tinywasm.js` the
    browser client (an ES module), `/vendor/` what it imports (cbor-x), and
    `/static/` the whole folder.
    """
    pages = {
        "/": "index.html",
        "/dashboard": "dashboard.html",
        "/dashboard.js": "dashboard.js",
        "/tinywasm.js": "tinywasm.js",
    }
    for path, file in pages.items():
        app.router.add_get(path, _file_route(web_dir / file))
    for folder in ("vendor", "static"):
        root = web_dir if folder == "static" else web_dir / folder
        if root.is_dir():
            app.router.add_static(f"/{folder}/", root, show_index=False)


def _file_route(path: Path) -> Handler:
    async def serve_file(_request: web.Request) -> web.StreamResponse:
        if not path.is_file():
            raise web.HTTPNotFound(text=f"{path.name} is missing from the web folder\n")
        return web.FileResponse(path, headers={hdrs.CACHE_CONTROL: "no-cache"})

    return serve_file


def _public(handler: Handler) -> Handler:
    return handler


def add_module_routes(
    app: web.Application,
    host: ModuleHost,
    hub: Hub,
    *,
    nats: NatsLink | None = None,
    fleet: Callable[[], dict[str, Any]] | None = None,
    relay: AdminRelay | None = None,
    admin: AdminGuard | None = None,
    status_private: bool = False,
) -> StatusView:
    """`/healthz`, `/api/modules[/{name}]` and each module's history, reload and rollback.

    `hub` gives the client count and the hub's counters. `admin` guards reload and
    rollback; the default serves them to loopback clients only. With
    `status_private`, it guards the module status and history too (`/healthz`
    stays public, for load balancers). With `nats`, /healthz says ``degraded``
    while the NATS connection is down (local traffic still flows: the answer
    stays 200), and /api/modules carries the link's counters. With `fleet` (one of
    several workers), /api/modules carries the fleet: live workers and who runs what;
    with `relay`, reload, rollback and unpin of a module another worker runs are
    carried out there (`app[RELAY_ACTIONS]` is what this worker serves). Returns the
    `StatusView` the routes read; `add_api_fallback` answers the other paths.
    """
    if admin is None:
        admin = AdminGuard(None)
    view = StatusView(host, hub, nats, fleet)
    paths = _Paths(host)

    def answer(data: object, status: int = 200) -> web.Response:
        return web.json_response(paths.public().json(data), status=status)

    async def healthz(request: web.Request) -> web.Response:
        # The problems come public already (and cached); the rest is words and numbers.
        health = view.health(paths.public())
        strict = bool(request.query_string) and "strict" in request.query
        return web.json_response(health, status=503 if strict and health["status"] != "ok" else 200)

    async def list_modules(_request: web.Request) -> web.Response:
        return answer(view.overview())

    def known(request: web.Request) -> str:
        return known_name(request.match_info["name"])

    def known_name(name: str) -> str:
        if not view.known(name):
            raise _not_found(
                app,
                f"no module named {name!r}",
                modules=sorted({*host.modules, *host.quarantined, *host.refused}),
            )
        return name

    async def one_module(request: web.Request) -> web.Response:
        return answer(await view.module(known(request)))

    async def history(request: web.Request) -> web.Response:
        name = known(request)
        records = host.histories[name].records if name in host.histories else []
        return answer({"name": name, "history": [r.to_json() for r in records]})

    def elsewhere(name: str) -> str | None:
        """The worker that runs `name` when it is not this one (with --workers N)."""
        return host.remote_owner(name)

    async def reload(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        owner = elsewhere(name)  # on another machine of a fleet, its file is there, not here
        if owner is None and name not in host.modules and host.find_file(name) is None:
            raise _not_found(
                request.app,
                f"no module file for {name!r} (name.wasm or [NN-]name@[rule].wasm) "
                "in the modules folder",
                modules=sorted(host.modules),
            )
        if owner is not None:
            if relay is None:
                assert host.placement is not None  # a remote owner only with placement
                raise web.HTTPMisdirectedRequest(
                    text=f"module {name!r} runs on worker {owner}, not on this one "
                    f"({host.placement.me}): retry until the answer comes from that worker "
                    "(the X-Tinywasm-Worker header)\n"
                )
            return await relay.ask(owner, Action.RELOAD, name)
        return await reload_here(name)

    async def reload_here(name: str, _body: bytes = b"") -> web.Response:
        record = await host.swap(name, "api")
        return answer(
            {
                "name": name,
                "result": record.to_json() if record else None,
                "note": None if record else "unchanged, or folded into a swap already running",
            }
        )

    async def rollback(request: web.Request) -> web.Response:
        return await relayed(request, Action.ROLLBACK, rollback_here)

    async def rollback_here(name: str, _body: bytes = b"") -> web.Response:
        name = known_name(name)
        try:
            record = await host.rollback(name)
        except ModuleLoadError as exc:
            raise web.HTTPConflict(
                text=json.dumps({"error": paths.public().text(str(exc))}),
                content_type="application/json",
            ) from None
        return answer({"name": name, "result": record.to_json() if record else None})

    async def unpin(request: web.Request) -> web.Response:
        return await relayed(request, Action.UNPIN, unpin_here)

    async def unpin_here(name: str, _body: bytes = b"") -> web.Response:
        name = known_name(name)
        try:
            record = await host.unpin(name)
        except ModuleLoadError as exc:
            raise web.HTTPConflict(text=f"{paths.public().text(str(exc))}\n") from None
        return answer({"name": name, "result": record.to_json() if record else None})

    async def relayed(request: web.Request, action: Action, here: Here) -> web.Response:
        """`here(name)`, on the worker that runs the module (relayed there if need be)."""
        name = request.match_info["name"]
        owner = elsewhere(name) if relay is not None else None
        if relay is not None and owner is not None:
            return await relay.ask(owner, action, name)
        return await here(name, b"")

    if relay is not None:
        app[RELAY_ACTIONS] = {
            Action.RELOAD: reload_here,
            Action.ROLLBACK: rollback_here,
            Action.UNPIN: unpin_here,
        }

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
        _check_reader(hub, admin, request, topic)
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

    async def topic_presence(request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        try:
            validate_topic(topic)
            limit = int(request.query.get("limit", "1000"))
            if not 1 <= limit <= MAX_PRESENCE_READ:
                raise ValueError(f"limit must be 1 to {MAX_PRESENCE_READ}")
        except (TopicError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        _check_reader(hub, admin, request, topic)
        count, members = hub.presence(topic, limit)
        return web.json_response(
            {"topic": topic, "count": count, "clients": [m.to_json() for m in members]}
        )

    app.router.add_get("/healthz", healthz)
    status = admin if status_private else _public
    app.router.add_get("/api/modules", status(list_modules))
    app.router.add_get("/api/modules/{name}", status(one_module))
    app.router.add_get("/api/modules/{name}/history", status(history))
    app.router.add_get("/api/ws/inbound", status(get_inbound))
    app.router.add_get("/api/topics/{topic}/history", topic_history)
    app.router.add_get("/api/topics/{topic}/presence", topic_presence)
    app.router.add_put("/api/ws/inbound", admin(put_inbound))
    app.router.add_post("/api/modules/{name}/reload", admin(reload))
    app.router.add_post("/api/modules/{name}/rollback", admin(rollback))
    app.router.add_post("/api/modules/{name}/unpin", admin(unpin))
    return view


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


def add_api_fallback(app: web.Application) -> None:
    """Any other path under `/api/`: a JSON 404, or 405 with `Allow`, listing the endpoints.

    Register it after every `/api/` route: aiohttp tries resources in order.
    """

    async def unknown_api(request: web.Request) -> web.Response:
        endpoints = _api_endpoints(request.app)
        allowed = [m for m, path in endpoints if _same_shape(path, request.path)]
        if allowed:
            return web.json_response(
                {
                    "error": f"{request.method} is not allowed on {request.path}",
                    "allowed": allowed,
                },
                status=405,
                headers={hdrs.ALLOW: ", ".join(allowed)},
            )
        raise _not_found(request.app, f"no API endpoint {request.method} {request.path}")

    app.router.add_route("*", "/api", unknown_api)
    app.router.add_route("*", "/api/{tail:.*}", unknown_api)


def _api_endpoints(app: web.Application) -> list[tuple[str, str]]:
    """Every `/api/` route the app has, as (method, path): read from the router, never stale."""
    found = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/") and route.method not in ("*", "HEAD") and "{tail" not in path:
            found.append((route.method, path))
    return sorted(set(found), key=lambda r: (r[1], r[0]))


def _same_shape(pattern: str, path: str) -> bool:
    want, have = pattern.strip("/").split("/"), path.strip("/").split("/")
    return len(want) == len(have) and all(
        w.startswith("{") or w == h for w, h in zip(want, have, strict=True)
    )


def _not_found(app: web.Application, error: str, **extra: object) -> web.HTTPNotFound:
    body = {
        "error": error,
        **extra,
        "endpoints": [f"{method} {path}" for method, path in _api_endpoints(app)]
        + ["GET /healthz[?strict]", "GET /metrics"],
    }
    return web.HTTPNotFound(text=json.dumps(body), content_type="application/json")
