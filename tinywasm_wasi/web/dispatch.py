"""HTTP routes to modules: ``/m/<name>[/<rest>]``, any method, through middlewares.

A request runs through the middlewares whose rule names the route, in order
(`RegistryView.middlewares`), then through the target module. The first module
that answers ends the chain; a full-mode middleware may instead pass the
request on with headers added. Each call goes through the module's mailbox,
like a bus message, so it is ordered with the module's messages and moves with
them during a hot swap.

Failures become short plain-text answers (`failure_status`); the details go to
the log, never to the client as a traceback. A middleware that fails fails the
request: an authentication middleware that traps must not let it through.
"""

from __future__ import annotations

import logging
import math
import time
from http.cookies import CookieError, SimpleCookie
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from tinywasm_wasi.config import Config
from tinywasm_wasi.exceptions import (
    GuestTrap,
    MailboxFullError,
    ModuleClosedError,
    TinywasmError,
    TrapCode,
)
from tinywasm_wasi.policy.http_abi import (
    HttpMode,
    HttpRequest,
    HttpResponse,
    PassOn,
    ResponseError,
    compat_response,
    encode_compat_request,
    encode_full_request,
    join_headers,
    parse_response,
    text_problem,
)
from tinywasm_wasi.policy.http_forward import Forwarded, ForwardedAnswer
from tinywasm_wasi.policy.public_paths import PublicPaths
from tinywasm_wasi.policy.ratelimit import LogLimiter
from tinywasm_wasi.runtime.module import WasmModule
from tinywasm_wasi.supervisor.registry import RegistryView

__all__ = ["RESPONSE_OVERHEAD", "Dispatcher", "Failed", "add_dispatch_routes", "failure_status"]

log = logging.getLogger("tinywasm.http")

# Room for the status and headers in a full-mode response, on top of the body limit.
RESPONSE_OVERHEAD = 64 * 1024
_READ_CHUNK = 64 * 1024
# A request that meets a swap may be retried on the version that replaced the one it was
# sent to; bounded so two swaps racing each other cannot loop.
_ATTEMPTS = 3
NO_CONTENT = HttpResponse(204, (), b"")


class Failed(Exception):
    """A request ends with an error status; `reason` is the short text sent back."""

    def __init__(self, status: int, reason: str, *, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def failure_status(module: str, exc: TinywasmError, call_timeout: float) -> Failed:
    """The answer for a module call that failed with `exc`."""
    if isinstance(exc, GuestTrap):
        if exc.code is TrapCode.INTERRUPT:
            return Failed(
                504, f"module {module!r} did not answer within {call_timeout * 1000:.0f} ms"
            )
        if exc.code in (None, TrapCode.HOST_FAULT):  # the host's own one-line message
            return Failed(500, str(exc))
        return Failed(500, f"module {module!r} trapped in {exc.call}() [{exc.code}]")
    if isinstance(exc, MailboxFullError):
        return Failed(503, f"module {module!r} is busy: retry later", retry_after=1)
    if isinstance(exc, ModuleClosedError):
        return Failed(503, f"module {module!r} is being unloaded: retry later", retry_after=1)
    if isinstance(exc, ResponseError):
        return Failed(500, f"module {module!r} returned a malformed response: {exc}")
    return Failed(500, f"module {module!r} failed: {exc}")


class Dispatcher:
    """The aiohttp handler for ``/m/...``; reads the live modules from `registry` per request."""

    def __init__(
        self, registry: RegistryView, config: Config, forward: Forwarder | None = None
    ) -> None:
        self._host = registry
        self._forward = forward
        folder = config.modules_dir
        self._paths = PublicPaths(str(folder.absolute()), str(folder.resolve()))
        self._max_body = config.http_max_body
        self._warn: dict[str, LogLimiter] = {}  # per module: one line a second at most
        # Requests a middleware answered itself (the target never ran), by middleware.
        self.short_circuits: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        forward = self._forward
        try:
            if forward is not None and forward.moving(name):
                await forward.settle(name)
            owner = self._elsewhere(name)
            if owner is None:
                self._runs_somewhere(name)
                self._target(name)  # 404 or 503 before the body is read
            body = await self._read_body(request) if request.body_exists else b""
            url = request.rel_url
            forwarded = Forwarded(
                name=name,
                method=request.method,
                path=url.raw_path,
                query=url.raw_query_string,
                headers=tuple(request.headers.items()),
                body=body,
            )
            problem = _not_text(forwarded)
            if problem is not None:
                raise Failed(400, problem)
            if owner is not None:
                assert forward is not None
                answer = await forward.send(owner, forwarded)
            else:
                answer = await self._answer(forwarded)
        except Failed as failed:
            answer = self._public_failure(failed)
        response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        if answer.retry_after:
            response.headers["Retry-After"] = str(answer.retry_after)
        return response

    async def relay(self, request: Forwarded) -> ForwardedAnswer:
        """A request another worker forwarded here: answered here, or sent on once to the
        worker this one handed the module to (a move it did not know of yet)."""
        if self._forward is not None:
            if self._forward.moving(request.name):
                await self._forward.settle(request.name)
            heir = self._forward.relay_to(request.name)
            if heir is not None:
                try:
                    return await self._forward.send(heir, request)
                except Failed as failed:
                    return self._public_failure(failed)
        return await self.answer(request)

    async def answer(self, request: Forwarded) -> ForwardedAnswer:
        """Run `request` through its middlewares and its module here; failures become answers."""
        problem = _not_text(request)
        if problem is not None:
            return self._public_failure(Failed(400, problem))
        return await self._answer(request)

    async def _answer(self, request: Forwarded) -> ForwardedAnswer:
        """`answer` for a request whose text was checked already (`_not_text`)."""
        try:
            name = request.name
            target = self._target(name)
            canary = self._host.canaries.get(name)
            if canary is not None:  # a canary runs: this request goes to one of the two
                headers = CIMultiDict(request.headers)
                target = canary.pick(canary.sticky_key(headers, _cookies(headers)))
            chain = [
                m
                for m in self._host.middlewares()
                if m.rule is not None and m.rule.applies_to(name)
            ]
            # Compat mode sends method and path only: headers are gathered for full mode.
            full = _mode(target) is HttpMode.FULL or (
                bool(chain) and any(_mode(m) is HttpMode.FULL for m in chain)
            )
            http_request = HttpRequest(
                method=request.method,
                path=request.path,
                route=name,
                query=request.query,
                headers=join_headers(request.headers) if full else {},
                body=request.body,
            )
            result = await self._run(chain, target, http_request)
            if canary is not None and target is canary.canary and result.status >= 500:
                canary.server_errors += 1
        except Failed as failed:
            return self._public_failure(failed)
        return ForwardedAnswer(result.status, tuple(result.headers), result.body)

    def _public_failure(self, failed: Failed) -> ForwardedAnswer:
        """The answer for `failed`, its reason naming files relative to the modules folder."""
        reason = self._paths.text(failed.reason)
        return _failure(Failed(failed.status, reason, retry_after=failed.retry_after))

    def _runs_somewhere(self, name: str) -> None:
        """Raises Failed (503) when `name` runs nowhere in the fleet now."""
        if self._forward is None or name in self._host.modules:
            return
        gone = self._forward.gone_from(name)
        if gone is not None:
            raise Failed(
                503,
                f"module {name!r} runs nowhere now: {gone}, the last worker with its file, "
                "is gone; it starts again when a worker with its file joins the fleet",
                retry_after=1,
            )

    def _elsewhere(self, name: str) -> str | None:
        """The worker to forward a request for `name` to, or None to answer it here."""
        if self._forward is None or name in self._host.modules:
            return None
        return self._forward.owner_of(name)

    def routes(self) -> str:
        """What exists under /m/, in words."""
        names = sorted(
            m.name for m in self._host.modules.values() if m.rule is None and _mode(m) is not None
        )
        if not names:
            return "no loaded module has an HTTP route (none exports handle or handle_http)"
        return "modules with an HTTP route: " + ", ".join(f"/m/{n}" for n in names)

    async def index(self, _request: web.Request) -> web.Response:
        """``/m`` and ``/m/``: which routes exist."""
        return web.Response(
            status=404, text=f"give a module name: /m/<name>[/...]; {self.routes()}\n"
        )

    def _target(self, name: str) -> WasmModule:
        module = self._host.modules.get(name)
        quarantine = self._host.quarantined.get(name)
        if module is None and quarantine is not None:
            wait = max(1, math.ceil(quarantine.retry_at - time.time()))
            raise Failed(
                503,
                f"module {name!r} is quarantined after repeated traps ({quarantine.error}); "
                f"it is retried in {wait} s",
                retry_after=wait,
            )
        if module is None:
            refused = self._host.refused.get(name)
            why = f" (it was refused: {refused})" if refused else ""
            raise Failed(404, f"no module named {name!r} is loaded{why}; {self.routes()}")
        if module.rule is not None:
            raise Failed(
                404,
                f"module {name!r} is a middleware (rule {module.rule.text}): it runs in front "
                "of the routes its rule names and cannot be reached directly",
            )
        if _mode(module) is None:
            raise Failed(
                404,
                f"module {name!r} has no HTTP route: it exports neither handle nor handle_http",
            )
        return module

    async def _read_body(self, request: web.Request) -> bytes:
        if not request.body_exists:
            return b""
        limit = self._max_body
        if request.content_length is not None and request.content_length > limit:
            raise self._too_big()
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise self._too_big()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_big(self) -> Failed:
        limit = self._max_body
        return Failed(413, f"the request body is over the {limit} byte limit (--http-max-body)")

    async def _run(
        self, chain: list[WasmModule], target: WasmModule, request: HttpRequest
    ) -> HttpResponse:
        """The route's middlewares (`chain`, in order), then the target; the first answer wins."""
        for middleware in chain:
            result = await self._call(middleware, request, middleware=True)
            if isinstance(result, PassOn):
                request = request.with_headers(result.headers)
            elif result is not None:
                self.short_circuits[middleware.name] = (
                    self.short_circuits.get(middleware.name, 0) + 1
                )
                return result
        result = await self._call(target, request, middleware=False)
        assert not isinstance(result, PassOn)  # parse_response refuses it for a route
        return NO_CONTENT if result is None else result

    async def _call(
        self, module: WasmModule, request: HttpRequest, *, middleware: bool
    ) -> HttpResponse | PassOn | None:
        """Ask `module`; if it is swapped away meanwhile, ask the version that replaced it."""
        for attempt in range(_ATTEMPTS):
            mode = _mode(module)
            if mode is None:
                raise Failed(
                    500,
                    f"middleware {module.name!r} exports neither handle nor handle_http, "
                    "so it cannot run: rebuild it or remove it",
                )
            encode = encode_full_request if mode is HttpMode.FULL else encode_compat_request
            try:
                raw = await module.http(encode(request), self._max_body + RESPONSE_OVERHEAD)
                return self._decode(mode, raw, middleware=middleware)
            except (GuestTrap, ModuleClosedError) as exc:
                current = self._host.modules.get(module.name)
                if attempt + 1 < _ATTEMPTS and _swapped(module, current, mode, exc):
                    assert current is not None
                    log.debug("request to %r: %s; asking the version now live", module.name, exc)
                    module = current
                    continue
                raise self._failed(module, exc) from None
            except TinywasmError as exc:
                raise self._failed(module, exc) from None
        raise AssertionError("unreachable")

    def _decode(
        self, mode: HttpMode, raw: bytes | None, *, middleware: bool
    ) -> HttpResponse | PassOn | None:
        if raw is None:
            return None
        if mode is HttpMode.COMPAT:
            return compat_response(raw)
        return parse_response(raw, max_body=self._max_body, middleware=middleware)

    def _failed(self, module: WasmModule, exc: TinywasmError) -> Failed:
        failed = failure_status(module.name, exc, module.limits.call_timeout)
        if isinstance(exc, ResponseError):  # traps are logged by the module already
            warn = self._warn.get(module.name)
            if warn is None:
                warn = self._warn[module.name] = LogLimiter(log)
            warn("%s", failed.reason)
        return failed


def _failure(failed: Failed) -> ForwardedAnswer:
    headers = (("Content-Type", "text/plain; charset=utf-8"),)
    return ForwardedAnswer(
        failed.status, headers, (failed.reason + "\n").encode(), failed.retry_after
    )


class Forwarder(Protocol):
    """Sends a request for a module another worker owns (web/forward.py)."""

    def owner_of(self, name: str) -> str | None:
        """The worker that runs `name` if it is not this one, else None."""

    async def send(self, owner: str, request: Forwarded) -> ForwardedAnswer:
        """The owner's answer; raises Failed when it cannot be reached in time."""

    def moving(self, name: str) -> bool:
        """True while `name` moves to or from this worker (then `settle` waits)."""

    async def settle(self, name: str) -> None:
        """Wait (within the call deadline) while `name` moves to or from this worker."""

    def relay_to(self, name: str) -> str | None:
        """The worker this one handed `name` to, for a request that still came here."""

    def gone_from(self, name: str) -> str | None:
        """The last worker that had `name`'s file, when no live worker has it now."""


def _not_text(request: Forwarded) -> str | None:
    """Which part of `request` is not UTF-8 text (`http_abi.not_text`), or None."""
    return text_problem(request.method, request.path, request.query, request.headers)


def _cookies(headers: CIMultiDict[str]) -> dict[str, str]:
    """The request's cookies by name (a malformed Cookie header gives none)."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("Cookie", ""))
    except CookieError:
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


_MODES = {mode.value: mode for mode in HttpMode}


def _mode(module: WasmModule) -> HttpMode | None:
    """The mode `module` answers in (found once, when it was compiled)."""
    http = module.compiled.interface.http
    return None if http is None else _MODES[http]


def _swapped(
    called: WasmModule, current: WasmModule | None, mode: HttpMode, exc: TinywasmError
) -> bool:
    """True if the request failed only because `called` was replaced by `current`.

    A closed module never ran the request; a trap is retried only when the new
    version answers in another mode than the request was encoded for (the swap
    changed ``handle`` to ``handle_http`` or back). A real trap is not retried: the
    request may have had effects.
    """
    if current is None or current is called:
        return False
    if isinstance(exc, ModuleClosedError):
        return True
    return _mode(current) is not mode


def add_dispatch_routes(
    app: web.Application,
    registry: RegistryView,
    config: Config,
    forward: Forwarder | None = None,
) -> Dispatcher:
    """Route ``/m/{name}`` and ``/m/{name}/{rest}``, any method, to the modules of `registry`.

    With `forward`, a request for a module another worker owns goes to that worker.
    """
    dispatcher = Dispatcher(registry, config, forward)
    # The module routes first: aiohttp tries the resources under "/m" in the order they
    # were added, so a request for /m/<name> does not try the index first.
    app.router.add_route("*", "/m/{name}", dispatcher.handle)
    app.router.add_route("*", "/m/{name}/{rest:.*}", dispatcher.handle)
    app.router.add_route("*", "/m", dispatcher.index)
    app.router.add_route("*", "/m/", dispatcher.index)
    return dispatcher
