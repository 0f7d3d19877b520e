"""HTTP to a module another worker owns: NATS request-reply, with the answers of a local call.

Each worker answers forwarded requests on ``tw.http.<worker>`` by running the same
dispatch as for its own requests (middlewares, then the module), so the status
codes are the ones a local call gives. The caller waits for the module's call
deadline (its ``call_timeout``) plus `TRANSIT` seconds for the hop and the
owner's queue; past it the answer is 504. An owner that is not there (it died and
is being restarted, or NATS is away) is 503 with ``Retry-After: 1``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from bus.nats import LinkError, NatsLink, NoResponders
from tinywasm_wasi.policy.http_forward import (
    Forwarded,
    ForwardedAnswer,
    ForwardError,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    subject_for,
)
from tinywasm_wasi.policy.ratelimit import LogLimiter
from tinywasm_wasi.web.dispatch import Failed

__all__ = ["TRANSIT", "NatsForwarder"]

log = logging.getLogger("tinywasm.forward")

TRANSIT = 1.0  # seconds allowed on top of the call deadline for the hop and the owner's queue
MOVED_POLL = 0.01  # seconds between two looks at placement after the owner stopped serving


class Moves(Protocol):
    """Modules moving between workers (web/handover.py)."""

    def moving(self, name: str) -> bool: ...

    async def settle(self, name: str, timeout: float) -> None: ...

    def relay_to(self, name: str) -> str | None: ...


class NatsForwarder:
    """The `Forwarder` of one worker: sends to owners, answers what is sent to it."""

    def __init__(
        self,
        link: NatsLink,
        me: str,
        call_timeout: Callable[[str], float],
        owner_of: Callable[[str], str | None],
        moves: Moves | None = None,
        gone_from: Callable[[str], str | None] | None = None,
    ) -> None:
        """Forward for worker `me`; `owner_of(name)` is the worker that answers for
        module `name`, or None when this one does (`ModuleHost.remote_owner`);
        `gone_from(name)` the last worker with its file when it runs nowhere."""
        self._link = link
        self._me = me
        self.moves = moves
        self._gone_from = gone_from
        self._call_timeout = call_timeout
        self._owner_of = owner_of
        self._warn = LogLimiter(log)
        self.forwarded = 0
        self.failed = 0
        self.lost = 0  # sent, and no answer came: what the owner had of it is lost

    def owner_of(self, name: str) -> str | None:
        # A module this worker handed over goes where it went, whatever placement says yet.
        return self.relay_to(name) or self._owner_of(name)

    def moving(self, name: str) -> bool:
        # Asked on every request: cheap (no deadline, which reads limits.toml's stamp).
        return self.moves is not None and self.moves.moving(name)

    async def settle(self, name: str) -> None:
        if self.moves is not None and self.moves.moving(name):
            await self.moves.settle(name, self._call_timeout(name) + TRANSIT)

    def relay_to(self, name: str) -> str | None:
        return None if self.moves is None else self.moves.relay_to(name)

    def gone_from(self, name: str) -> str | None:
        return None if self._gone_from is None else self._gone_from(name)

    async def send(
        self, owner: str, request: Forwarded, *, retried: bool = False
    ) -> ForwardedAnswer:
        timeout = self._call_timeout(request.name) + TRANSIT
        if not retried:
            self.forwarded += 1
        try:
            raw = await self._link.request(subject_for(owner), encode_request(request), timeout)
            return decode_answer(raw)
        except TimeoutError:
            self.failed += 1
            self.lost += 1
            self._warn(
                "request for module %s: worker %s did not answer in time; it is lost "
                "(%d lost so far)",
                request.name,
                owner,
                self.lost,
            )
            raise Failed(
                504,
                f"module {request.name!r} on worker {owner} did not answer within "
                f"{timeout * 1000:.0f} ms",
            ) from None
        except LinkError as exc:
            if isinstance(exc, NoResponders) and not retried:
                # The owner has just stopped: once its last beat is in, it names where the
                # module runs now. Sent there, once.
                now = await self._moved_from(request.name, owner)
                if now is not None:
                    return await self.send(now, request, retried=True)
            self.failed += 1
            self._warn("request for module %s: worker %s unreachable: %s", request.name, owner, exc)
            raise Failed(
                503,
                f"module {request.name!r} runs on worker {owner}, which cannot be reached "
                "now: retry later",
                retry_after=1,
            ) from None
        except ForwardError as exc:
            self.failed += 1
            raise Failed(502, f"worker {owner} sent a malformed answer: {exc}") from None

    async def _moved_from(self, name: str, owner: str) -> str | None:
        """The other worker that runs `name` once the heartbeats no longer name `owner`
        (waiting at most TRANSIT), or None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TRANSIT
        while (now := self.owner_of(name)) == owner and loop.time() < deadline:
            await asyncio.sleep(MOVED_POLL)
        return now if now != owner else None

    async def serve(self, answer: Callable[[Forwarded], Awaitable[ForwardedAnswer]]) -> None:
        """Answer the requests other workers forward to this one."""

        async def on_request(data: bytes) -> bytes:
            try:
                request = decode_request(data)
            except ForwardError as exc:
                return encode_answer(ForwardedAnswer(400, (), f"{exc}\n".encode()))
            return encode_answer(await answer(request))

        await self._link.serve(subject_for(self._me), on_request)
