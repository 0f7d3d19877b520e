"""Who may call the admin endpoints: a pure decision and an aiohttp guard that applies it.

With an admin token set (``--admin-token`` / ``TINYWASM_ADMIN_TOKEN``), an
admin request must carry ``Authorization: Bearer <token>``: without it the
answer is 401 (with ``WWW-Authenticate: Bearer``), with a wrong token 403.
Without a token, admin requests are served to loopback clients only (127.0.0.0/8
and ::1); others get 403 telling them to set a token. Behind a reverse proxy on
the same machine every client looks local, so set a token there.

Three more rules keep web pages and proxies out (issue 16, item 13):

- an admin request whose ``Origin`` is not the server's own (a page on another
  site, which a browser lets POST without a preflight) gets 403, token or not;
- without a token, a ``Host`` that is not one of the server's names (``localhost``,
  a loopback address, the listen address) gets 403: that is DNS rebinding;
- without a token, a request carrying ``X-Forwarded-For``, ``Forwarded`` or
  ``X-Real-IP`` came through a proxy, whose TCP peer says nothing about the
  client: 403.

Wrap each state-changing handler: ``app.router.add_post(path, guard(handler))``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps

from aiohttp import hdrs, web

from tinywasm_wasi.policy.logtext import escape, shorten
from tinywasm_wasi.policy.ratelimit import LogLimiter
from tinywasm_wasi.web.hub_policy import same_origin

__all__ = [
    "FORWARDING_HEADERS",
    "AdminGuard",
    "AdminRefusal",
    "decide_admin",
    "is_local_host",
    "is_loopback",
]

log = logging.getLogger("tinywasm.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TOKEN_SETTING = "--admin-token / TINYWASM_ADMIN_TOKEN"
# Headers a reverse proxy adds: their presence means the TCP peer is the proxy.
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


@dataclass(frozen=True, slots=True)
class AdminRefusal:
    """An admin request refused: answer with `status` (401 or 403) and `text`."""

    status: int
    text: str


def decide_admin(
    remote: str | None,
    token: str | None,
    authorization: str | None,
    *,
    origin: str | None = None,
    host: str | None = None,
    forwarded: str | None = None,
    listen_host: str | None = None,
) -> AdminRefusal | None:
    """Decide an admin request; None lets it through.

    Args:
        remote: the client's address (``request.remote``); None if unknown.
        token: the server's admin token; None when no token is set.
        authorization: the request's Authorization header, if any.
        origin: the request's Origin header, if any (browsers send it with a POST).
        host: the request's Host header, if any.
        forwarded: the name of a forwarding header the request carries, if any.
        listen_host: the address the server listens on (one of its own names).
    """
    if origin is not None and not same_origin(origin, host):
        return AdminRefusal(
            403,
            f"cross-origin admin call refused: the page's origin {_quote(origin)} is not "
            f"this server's own ({_quote(host or '')}); admin endpoints answer only "
            "requests made from the server's own pages or from programs without an Origin",
        )
    if token is None:
        if forwarded is not None:
            return AdminRefusal(
                403,
                f"this admin request came through a proxy (it has {forwarded}), so its "
                "address says nothing about the client: admin calls through a proxy need "
                f"a token; set {_TOKEN_SETTING} on the server, then send "
                "Authorization: Bearer <token>",
            )
        if not is_loopback(remote):
            return AdminRefusal(
                403,
                "admin endpoints are served only to clients on the server's own machine "
                f"while no admin token is set: set {_TOKEN_SETTING} on the server, then send "
                "Authorization: Bearer <token>",
            )
        if host is not None and not is_local_host(host, listen_host):
            return AdminRefusal(
                403,
                f"admin call for host {_quote(host)} refused: without an admin token only "
                "the names 'localhost', a loopback address or the listen address are "
                "served (another name pointing here is how DNS rebinding reaches the "
                f"server); set {_TOKEN_SETTING} to call it under other names",
            )
        return None
    scheme, _, given = (authorization or "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return AdminRefusal(
            401,
            "this admin endpoint needs the server's admin token "
            f"({_TOKEN_SETTING}): send Authorization: Bearer <token>",
        )
    # aiohttp decodes header bytes that are not UTF-8 as surrogates: compare the bytes sent.
    sent = given.encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(sent, token.encode("utf-8")):
        return AdminRefusal(
            403, f"admin token refused: it is not the one set by the server's {_TOKEN_SETTING}"
        )
    return None


def is_local_host(host: str, listen_host: str | None = None) -> bool:
    """True when a Host header names this machine: localhost, a loopback address, the listen one.

    The port, if any, is ignored.
    """
    text = host.strip().lower()
    if text.startswith("["):
        name = text[1 : text.find("]")] if "]" in text else ""
    else:
        name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    name = name.rstrip(".")
    if not name:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    listen = (listen_host or "").strip("[]").lower()
    if listen and listen not in ("0.0.0.0", "::") and name == listen:
        return True
    return is_loopback(name)


def _quote(text: str) -> str:
    return escape(repr(shorten(text, 100)))


def is_loopback(remote: str | None) -> bool:
    """True for an address in 127.0.0.0/8, ::1, or an IPv4-mapped loopback address."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class AdminGuard:
    """Wraps admin handlers so that only requests `decide_admin` allows reach them."""

    def __init__(self, token: str | None, *, listen_host: str | None = None) -> None:
        """Create a guard.

        Args:
            token: the admin token; None serves admin endpoints to loopback clients only.
            listen_host: the address the server listens on: a Host header naming it is
                one of the server's own names.

        Raises:
            ValueError: `token` is empty.
        """
        if token is not None and not token.strip():
            raise ValueError("the admin token is empty: set a long random value, or leave it unset")
        self._token = token
        self._listen_host = listen_host
        self._warn = LogLimiter(log)

    def check(self, request: web.Request) -> None:
        """Return if `request` may use an admin endpoint.

        Raises:
            web.HTTPUnauthorized: a token is set and the request has none.
            web.HTTPForbidden: the token is wrong, or no token is set and the client
                is not on the loopback interface.
        """
        refusal = self._decide(request)
        if refusal is None:
            return
        self._warn(
            "admin %s %s from %s refused with %d: %s",
            request.method,
            shorten(request.path, 200),
            request.remote,
            refusal.status,
            refusal.text,
        )
        if refusal.status == 401:
            raise web.HTTPUnauthorized(
                text=f"{refusal.text}\n",
                headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="tinywasm admin"'},
            )
        raise web.HTTPForbidden(text=f"{refusal.text}\n")

    def allows_by_token(self, request: web.Request) -> bool:
        """True if an admin token is set and `request` carries it (and passes the other
        rules). Loopback without a token does not count; nothing is logged: a reader
        that takes other credentials too asks this after refusing those."""
        return self._token is not None and self._decide(request) is None

    def _decide(self, request: web.Request) -> AdminRefusal | None:
        headers = request.headers
        authorization = headers.get(hdrs.AUTHORIZATION)
        if authorization is None and request.path == "/ws" and "admin_token" in request.query:
            # A browser's WebSocket cannot send headers: the /ws system feed takes the
            # token in the query (`/ws?topic=$sys.>&admin_token=...`).
            authorization = f"Bearer {request.query['admin_token']}"
        return decide_admin(
            request.remote,
            self._token,
            authorization,
            origin=headers.get(hdrs.ORIGIN),
            host=headers.get(hdrs.HOST),
            forwarded=next((h for h in FORWARDING_HEADERS if h in headers), None),
            listen_host=self._listen_host,
        )

    def __call__(self, handler: Handler) -> Handler:
        """`handler`, answering only requests this guard allows."""

        @wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            self.check(request)
            return await handler(request)

        return guarded
