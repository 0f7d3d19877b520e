"""Reload, rollback, unpin and deploy on the worker that runs the module: NATS request-reply.

With ``--workers N`` a module runs on one worker, and only that worker can swap
it. An admin request that reaches another worker (the kernel spreads connections)
is checked there (the admin guard), then sent to ``tw.api.<worker>`` of the
worker that runs it, which carries it out as if it had received it and sends its
answer back unchanged: status, content type and body. The answer names that worker in
``X-Tinywasm-Owner`` (``X-Tinywasm-Worker`` names the one that answered). A deploy
carries the module's bytes, so NATS's max_payload (1 MiB by default) bounds it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from bus.nats import LinkError, NatsLink

__all__ = ["OWNER_HEADER", "RELAY_ACTIONS", "RELAY_TIMEOUT", "Action", "AdminRelay", "Here"]

log = logging.getLogger("tinywasm.relay")

RELAY_TIMEOUT = 30.0  # seconds a relayed admin request may take (a swap, its drain, its probation)
SUBJECT_PREFIX = "tw.api."
OWNER_HEADER = "X-Tinywasm-Owner"  # the worker that carried out a relayed action


class Action(enum.StrEnum):
    RELOAD = "reload"
    ROLLBACK = "rollback"
    UNPIN = "unpin"
    DEPLOY = "deploy"  # with the module's bytes


Here = Callable[[str, bytes], Awaitable[web.Response]]
"""Carries out an action on module `name` in this worker, with the request's body (a
deploy's module bytes; empty for the others); may raise web.HTTPException."""


RELAY_ACTIONS: web.AppKey[Mapping[Action, Here]] = web.AppKey("relay_actions")
"""What this worker carries out when another relays an action (set by the module routes)."""


class AdminRelay:
    """Sends admin actions to the worker that runs a module; carries out the ones sent here."""

    def __init__(self, link: NatsLink, me: str, timeout: float = RELAY_TIMEOUT) -> None:
        self._link = link
        self._me = me
        self._timeout = timeout
        self.relayed = 0

    async def ask(self, worker: str, action: Action, name: str, body: bytes = b"") -> web.Response:
        """`worker`'s answer to `action` on `name` (with `body`), as a response to send on."""
        fields = {"action": action.value, "name": name}
        if body:
            fields["body"] = base64.b64encode(body).decode("ascii")
        request = json.dumps(fields).encode()
        if len(request) > self._link.max_payload:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self._link.max_payload,
                actual_size=len(request),
                text=f"{action} of module {name!r}: it runs on worker {worker}, and the "
                f"request ({len(request)} bytes as sent there) is over what NATS carries "
                f"between workers ({self._link.max_payload} bytes, nats-server's "
                "max_payload): copy the file into the modules folder instead (the watcher "
                "swaps it), or raise max_payload in the nats-server config\n",
            )
        self.relayed += 1
        try:
            raw = await self._link.request(SUBJECT_PREFIX + worker, request, self._timeout)
        except TimeoutError:
            raise web.HTTPGatewayTimeout(
                text=f"{action} of module {name!r}: worker {worker}, which runs it, did not "
                f"answer within {self._timeout:g} s; see its log\n"
            ) from None
        except LinkError as exc:
            raise web.HTTPServiceUnavailable(
                text=f"{action} of module {name!r}: worker {worker}, which runs it, cannot be "
                f"reached now ({exc}); retry later\n",
                headers={"Retry-After": "1"},
            ) from None
        try:
            answer = json.loads(raw)
            status, content_type, body = answer["status"], answer["type"], answer["body"]
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPBadGateway(
                text=f"worker {worker} sent a malformed answer: {exc}\n"
            ) from None
        return web.Response(
            status=int(status),
            text=str(body),
            content_type=str(content_type),
            headers={OWNER_HEADER: worker},
        )

    async def serve(self, actions: Mapping[Action, Here]) -> None:
        """Carry out the actions other workers send here with `actions`."""

        async def on_request(data: bytes) -> bytes:
            try:
                request = json.loads(data)
                action, name = Action(request["action"]), str(request["name"])
                body = base64.b64decode(request.get("body", ""), validate=True)
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                return _encode(400, "text/plain", f"malformed relayed request: {exc}\n")
            here = actions.get(action)
            if here is None:
                return _encode(501, "text/plain", f"{action} is not relayed to this worker\n")
            try:
                response = await here(name, body)
            except web.HTTPException as exc:
                return _encode(exc.status, exc.content_type, exc.text or "")
            return _encode(response.status, response.content_type, response.text or "")

        await self._link.serve(SUBJECT_PREFIX + self._me, on_request)


def _encode(status: int, content_type: str, body: str) -> bytes:
    return json.dumps({"status": status, "type": content_type, "body": body}).encode()
