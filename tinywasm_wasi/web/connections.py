"""Connections before they are requests: a header deadline, a cap, and a reserve of fds.

aiohttp gives a connection all the time it wants to send its request head, and
accepts connections until the process runs out of file descriptors; from then on
every accept fails (asyncio logs each failure with a traceback) and nothing,
`/healthz` included, is answered. `ConnectionGuard` adds three rules:

- **A header deadline.** A connection must deliver its first request head within
  `header_timeout` seconds (10 by default) or it gets ``408`` and is closed: a
  client trickling its headers a byte at a time holds a socket for no longer.
- **A cap.** Up to `max_connections` (the open-file limit minus a reserve) are
  served as usual. Past the cap a connection is a *reserve* connection: it has
  `reserve_timeout` seconds (1) to send its head, and only ``/healthz`` and the
  ``/api/`` endpoints are answered on it (anything else gets ``503``). At most
  `reserve_connections` reserve connections are open at once; past that a new one
  is closed at once. So the server never spends its last descriptors on idle
  sockets, and monitoring and the admin API still answer.
- **One accept-error line a second.** Should accepts fail anyway (descriptors
  used elsewhere), asyncio's report of each failure is cut to one line a second.

`raise_fd_limit` raises the soft open-file limit to the hard one; the command line
calls it at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tinywasm_wasi.policy.ratelimit import LineGate, LogLimiter

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "AcceptErrorFilter",
    "ConnectionGuard",
    "GuardedRunner",
    "connection_budget",
    "raise_fd_limit",
]

log = logging.getLogger("tinywasm.server")

DEFAULT_HEADER_TIMEOUT = 10.0
RESERVE_TIMEOUT = 1.0
RESERVE_CONNECTIONS = 32
RESERVED_PATHS = ("/healthz", "/api/")
SHED = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 51\r\n\r\n"
    b"the server is at its connection limit: retry later\n"
)
TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 45\r\n\r\nthe request head did not arrive in time: 408\n"
)


def raise_fd_limit() -> tuple[int, int] | None:
    """Raise the soft open-file limit to the hard one; (before, after), or None if unchanged."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return None
    return soft, hard


def connection_budget() -> int:
    """How many connections to serve before the reserve: the open-file limit minus a reserve.

    The reserve is an eighth of the limit, at least 64 descriptors, plus those open
    now (modules, the cache, the log), since modules loaded later need more.
    """
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except ImportError:
        return 1_000_000
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    return max(16, soft - in_use - max(64, soft // 8) - RESERVE_CONNECTIONS)


class ConnectionGuard:
    """The header deadline, the connection cap and the reserve; see the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        reserve_timeout: float = RESERVE_TIMEOUT,
        reserve_connections: int = RESERVE_CONNECTIONS,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.reserve_timeout = reserve_timeout
        self.reserve_connections = reserve_connections
        self.open = 0
        self.timed_out = 0  # connections closed for a late request head
        self.shed = 0  # connections closed at once: the reserve was full
        self.refused = 0  # requests answered 503 on a reserve connection
        self._reserve: set[Any] = set()  # aiohttp's RequestHandler: slotted, no weak references
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        self._warn = LogLimiter(log)

    def opened(self, handler: Any, transport: asyncio.Transport) -> None:
        """A connection was accepted: arm its header deadline, or shed it."""
        self.open += 1
        loop = asyncio.get_running_loop()
        timeout = self.header_timeout
        if self.open > self.max_connections:
            if len(self._reserve) >= self.reserve_connections:
                self.shed += 1
                self._warn(
                    "at the connection limit (%d open, the reserve of %d in use): "
                    "closing new connections until some end",
                    self.open,
                    self.reserve_connections,
                )
                # Not from inside connection_made: aiohttp starts the handler's task after it.
                loop.call_soon(_shed, transport)
                return
            self._reserve.add(handler)
            timeout = self.reserve_timeout
        self._timers[handler] = loop.call_later(timeout, self._deadline, handler, transport)

    def closed(self, handler: Any) -> None:
        self.open -= 1
        self._reserve.discard(handler)
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _deadline(self, handler: Any, transport: asyncio.Transport) -> None:
        self._timers.pop(handler, None)
        if transport.is_closing():
            return
        if getattr(handler, "_request_count", 1):  # aiohttp's count of request heads parsed
            return
        self.timed_out += 1
        self._warn(
            "closed a connection from %s: no request head within %g s",
            _peer(transport),
            self.reserve_timeout if handler in self._reserve else self.header_timeout,
        )
        transport.write(TIMED_OUT)
        transport.close()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """On a reserve connection, answer only `RESERVED_PATHS`."""
        if request.protocol in self._reserve and not request.path.startswith(RESERVED_PATHS):
            self.refused += 1
            return web.Response(
                status=503,
                text="the server is at its connection limit: retry later\n",
                headers={"Retry-After": "1", "Connection": "close"},
            )
        return await handler(request)


class _GuardedServer(web.Server):
    """aiohttp's low-level server, telling the guard of each connection."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.guard.opened(handler, transport)

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.guard.closed(handler)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server tells `guard` of every connection."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self._server_kwargs = {
            k: v for k, v in kwargs.items() if k not in ("handle_signals", "shutdown_timeout")
        }

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            guard=self.guard,
            **self._server_kwargs,
        )


class AcceptErrorFilter(logging.Filter):
    """asyncio's "socket.accept() out of system resource": one line a second, no traceback."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(
        self, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.gate = LineGate(interval=interval, clock=clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        held = self.gate.admit()
        if held is None:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        text = f"{self.MESSAGE}: {exc.strerror if isinstance(exc, OSError) else exc}"
        text += "; raise the open-file limit (ulimit -n) or lower the load" + LineGate.note(held)
        record.msg, record.args, record.exc_info, record.exc_text = text, None, None, None
        return True

    @classmethod
    def install(cls) -> None:
        logger = logging.getLogger("asyncio")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


def _shed(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.write(SHED)
        transport.close()


def _peer(transport: asyncio.Transport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"
