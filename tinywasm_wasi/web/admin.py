"""Who may call the admin endpoints: a pure decision and an aiohttp guard that applies it.

With an admin token set (``--admin-token`` / ``TINYWASM_ADMIN_TOKEN``), an
admin request must carry ``Authorization: Bearer <token>``: without it the
answer is 401 (with ``WWW-Authenticate: Bearer``), with a wrong token 403.
Without a token, admin requests are served to loopback clients only (127.0.0.0/8
and ::1); others get 403 telling them to set a token. Behind a reverse proxy on
the same machine every client looks local, so set a token there.

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

from tinywasm_wasi.policy.ratelimit import LogLimiter

__all__ = ["AdminGuard", "AdminRefusal", "decide_admin", "is_loopback"]

log = logging.getLogger("tinywasm.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TOKEN_SETTING = "--admin-token / TINYWASM_ADMIN_TOKEN"


@dataclass(frozen=True, slots=True)
class AdminRefusal:
    """An admin request refused: answer with `status` (401 or 403) and `text`."""

    status: int
    text: str


def decide_admin(
    remote: str | None, token: str | None, authorization: str | None
) -> AdminRefusal | None:
    """Decide an admin request; None lets it through.

    Args:
        remote: the client's address (``request.remote``); None if unknown.
        token: the server's admin token; None when no token is set.
        authorization: the request's Authorization header, if any.
    """
    if token is None:
        if is_loopback(remote):
            return None
        return AdminRefusal(
            403,
            "admin endpoints are served only to clients on the server's own machine while "
            f"no admin token is set: set {_TOKEN_SETTING} on the server, then send "
            "Authorization: Bearer <token>",
        )
    scheme, _, given = (authorization or "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return AdminRefusal(
            401,
            "this admin endpoint needs the server's admin token "
            f"({_TOKEN_SETTING}): send Authorization: Bearer <token>",
        )
    if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
        return AdminRefusal(
            403, f"admin token refused: it is not the one set by the server's {_TOKEN_SETTING}"
        )
    return None


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

    def __init__(self, token: str | None) -> None:
        """Create a guard.

        Args:
            token: the admin token; None serves admin endpoints to loopback clients only.

        Raises:
            ValueError: `token` is empty.
        """
        if token is not None and not token.strip():
            raise ValueError("the admin token is empty: set a long random value, or leave it unset")
        self._token = token
        self._warn = LogLimiter(log)

    def check(self, request: web.Request) -> None:
        """Return if `request` may use an admin endpoint.

        Raises:
            web.HTTPUnauthorized: a token is set and the request has none.
            web.HTTPForbidden: the token is wrong, or no token is set and the client
                is not on the loopback interface.
        """
        refusal = decide_admin(request.remote, self._token, request.headers.get(hdrs.AUTHORIZATION))
        if refusal is None:
            return
        self._warn(
            "admin %s %s from %s refused with %d: %s",
            request.method,
            request.path,
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

    def __call__(self, handler: Handler) -> Handler:
        """`handler`, answering only requests this guard allows."""

        @wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            self.check(request)
            return await handler(request)

        return guarded
