"""aiohttp's report of a malformed request: one short line a second, never a traceback.

A request aiohttp cannot parse (a garbage request line, an oversized or broken
header, a NUL in a header value) is answered 400 by aiohttp itself, which then
logs "Error handling request" with the parser's traceback: about 700 bytes for
each bad request, and the raw header line, secrets included, in the text. This
filter, on the ``aiohttp.server`` logger, turns that record into one line that
names the client and the first line of the parser's reason (never the bytes it
quotes), and lets at most one through a second; the next says how many were
left out. Every other record passes unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

from tinywasm_wasi.policy.logtext import escape, shorten
from tinywasm_wasi.policy.ratelimit import LineGate

__all__ = ["ClientErrorFilter", "install"]

LOGGER = "aiohttp.server"


class ClientErrorFilter(logging.Filter):
    """Rewrites aiohttp's client-error records; rate-limited to one a `interval` seconds."""

    def __init__(
        self, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.gate = LineGate(interval=interval, clock=clock)
        self.seen = 0  # client errors in all

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or (exc.code or 400) >= 500:
            return True
        self.seen += 1
        held = self.gate.admit()
        if held is None:
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = escape(
            shorten((exc.message or type(exc).__name__).split("\n", 1)[0].rstrip(": "), 120)
        )
        text = f"bad request from {escape(str(remote))}: {exc.code or 400} {reason}"
        record.msg, record.args = text + LineGate.note(held), None
        record.exc_info, record.exc_text = None, None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install() -> ClientErrorFilter:
    """Put one `ClientErrorFilter` on aiohttp's server logger; the one already there if any."""
    logger = logging.getLogger(LOGGER)
    for existing in logger.filters:
        if isinstance(existing, ClientErrorFilter):
            return existing
    added = ClientErrorFilter()
    logger.addFilter(added)
    return added
