"""Release routes: deploy and undeploy modules over HTTP (admin only).

- ``PUT /api/modules/{name}`` with the ``.wasm`` bytes as the body: written into
  the modules folder and swapped in; 200 with the outcome (``loaded``, ``swapped``,
  ``unchanged``), 422 when the version was refused or rolled back (with the reason),
  413 over ``--max-module-size``, 400 for an empty body or a name outside the
  documented character set.
- ``DELETE /api/modules/{name}``: the file removed and the module unloaded; 404 if
  there is no such module.
"""

from __future__ import annotations

from aiohttp import web

from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.policy.names import ModuleNameError, check_module_name
from tinywasm_wasi.supervisor.deployer import NotDeployedError
from tinywasm_wasi.supervisor.host import ModuleHost
from tinywasm_wasi.web.admin import AdminGuard

__all__ = ["add_release_routes", "read_capped"]

CHUNK = 64 * 1024


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


def add_release_routes(app: web.Application, host: ModuleHost, admin: AdminGuard) -> None:
    """``PUT`` and ``DELETE /api/modules/{name}``, behind `admin`."""

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
        try:
            result = await host.deploy(name, data)
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

    app.router.add_put("/api/modules/{name}", admin(deploy))
    app.router.add_delete("/api/modules/{name}", admin(undeploy))
