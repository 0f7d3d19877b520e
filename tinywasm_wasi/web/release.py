"""Release routes: deploy and undeploy modules over HTTP (admin only).

- ``PUT /api/modules/{name}`` with the ``.wasm`` bytes as the body: written into
  the modules folder and swapped in (with ``--workers``, by the worker that runs the
  module: relayed to it over NATS, web/relay.py); 200 with the outcome (``loaded``, ``swapped``,
  ``unchanged``), 422 when the version was refused or rolled back (with the reason),
  413 over ``--max-module-size``, 400 for an empty body or a name outside the
  documented character set.
- ``DELETE /api/modules/{name}``: the file removed and the module unloaded; 404 if
  there is no such module.
- ``POST /api/modules/{name}/canary`` (multipart: ``module`` bytes, ``settings`` JSON):
  the version runs beside the live one until promoted or rolled back (409 if it cannot
  start, with the reason); ``POST …/canary/promote`` and ``…/canary/abort`` decide.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import BodyPartReader, web

from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.policy.canary import CanaryError, CanarySettings, parse_canary_settings
from tinywasm_wasi.policy.names import ModuleNameError, check_module_name
from tinywasm_wasi.supervisor.deployer import NotDeployedError
from tinywasm_wasi.supervisor.host import ModuleHost
from tinywasm_wasi.web.admin import AdminGuard, Handler
from tinywasm_wasi.web.relay import RELAY_ACTIONS, Action, AdminRelay

__all__ = ["add_release_routes", "read_capped"]

CHUNK = 64 * 1024
FORM_HELP = (
    "send multipart/form-data with a 'module' part (the .wasm bytes) and an optional "
    "'settings' part (JSON), e.g. curl -F module=@chat.wasm "
    "-F 'settings={\"percent\": 10}' …/canary\n"
)


async def read_capped(request: web.Request, cap: int, what: str) -> bytes:
    """The request body, refused with 413 past `cap` bytes (before reading it all)."""
    too_large = web.HTTPRequestEntityTooLarge(
        max_size=cap,
        actual_size=request.content_length or cap + 1,
        text=f"{what} is over the {cap} byte limit (raise --max-module-size on the server)\n",
    )
    if request.content_length is not None and request.content_length > cap:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(CHUNK):
        size += len(chunk)
        if size > cap:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_canary_form(request: web.Request, cap: int) -> tuple[bytes, CanarySettings]:
    """A canary's ``multipart/form-data``: the ``module`` part (bytes) and ``settings`` (JSON)."""
    if not request.content_type.startswith("multipart/"):
        raise web.HTTPBadRequest(text=FORM_HELP)
    data: bytes | None = None
    settings: object = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise web.HTTPBadRequest(text=FORM_HELP)
        if part.name == "module":
            chunks, size = [], 0
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                if size > cap:
                    raise web.HTTPRequestEntityTooLarge(
                        max_size=cap,
                        actual_size=size,
                        text=f"the module is over the {cap} byte limit (--max-module-size)\n",
                    )
                chunks.append(chunk)
            data = b"".join(chunks)
        elif part.name == "settings":
            raw = await part.read(decode=False)
            if len(raw) > 64 * 1024:
                raise web.HTTPBadRequest(text="the canary settings are over 64 KiB\n")
            try:
                settings = json.loads(raw)
            except ValueError as exc:
                raise web.HTTPBadRequest(
                    text=f"the canary settings are not JSON: {exc}\n"
                ) from None
    if not data:
        raise web.HTTPBadRequest(text=FORM_HELP)
    try:
        return data, parse_canary_settings(settings)
    except CanaryError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None


def add_release_routes(
    app: web.Application, host: ModuleHost, admin: AdminGuard, relay: AdminRelay | None = None
) -> None:
    """``PUT`` and ``DELETE /api/modules/{name}``, behind `admin`; with `relay`, a deploy
    of a module another worker runs is carried out there (after the module routes, which
    set `app[RELAY_ACTIONS]`)."""

    def checked_name(request: web.Request) -> str:
        name = request.match_info["name"]
        try:
            return check_module_name(name)
        except ModuleNameError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None

    async def deploy(request: web.Request) -> web.Response:
        name = checked_name(request)
        data = await read_capped(request, host.loader.max_module_size, "the module")
        if not data:
            raise web.HTTPBadRequest(
                text="empty body: send the .wasm file's bytes (Content-Type: application/wasm)\n"
            )
        owner = host.deploy_owner(name) if relay is not None else None
        if relay is not None and owner is not None:
            return await relay.ask(owner, Action.DEPLOY, name, data)
        return await deploy_here(name, data)

    async def deploy_here(name: str, data: bytes) -> web.Response:
        try:
            result = await host.deploy(check_module_name(name), data)
        except ModuleNameError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        except ModuleLoadError as exc:
            raise web.HTTPConflict(text=f"{exc}\n") from None
        return web.json_response(result.to_json(), status=200 if result.outcome.ok else 422)

    async def undeploy(request: web.Request) -> web.Response:
        name = checked_name(request)
        try:
            result = await host.undeploy(name)
        except NotDeployedError as exc:
            raise web.HTTPNotFound(text=f"{exc}\n") from None
        except ModuleLoadError as exc:
            raise web.HTTPConflict(text=f"{exc}\n") from None
        return web.json_response(result.to_json())

    async def canary(request: web.Request) -> web.Response:
        name = checked_name(request)
        data, settings = await read_canary_form(request, host.loader.max_module_size)
        try:
            run = await host.canary(name, data, settings)
        except ModuleNameError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        except ModuleLoadError as exc:
            raise web.HTTPConflict(text=f"{exc}\n") from None
        return web.json_response({"name": name, "canary": run.to_json()})

    def decide(promote: bool) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            name = checked_name(request)
            try:
                run = host.decide_canary(name, promote)
            except ModuleLoadError as exc:
                raise web.HTTPNotFound(text=f"{exc}\n") from None
            verdict, reason = await asyncio.shield(run.verdict)
            await host.swapper.idle(name)  # the promotion or rollback has run
            history = host.histories.get(name)
            last = history.records[-1].to_json() if history and history.records else None
            return web.json_response(
                {"name": name, "verdict": verdict.value, "reason": reason, "result": last}
            )

        return handler

    if relay is not None:
        known = app[RELAY_ACTIONS]
        app[RELAY_ACTIONS] = {**known, Action.DEPLOY: deploy_here}
    app.router.add_put("/api/modules/{name}", admin(deploy))
    app.router.add_post("/api/modules/{name}/canary", admin(canary))
    app.router.add_post("/api/modules/{name}/canary/promote", admin(decide(promote=True)))
    app.router.add_post("/api/modules/{name}/canary/abort", admin(decide(promote=False)))
    app.router.add_delete("/api/modules/{name}", admin(undeploy))
