"""One record, one line: escaping on the package's loggers and aiohttp's.

`install` puts an `EscapingFilter` on every ``tinywasm.*`` logger and on
aiohttp's, so a newline or an escape sequence in a file name, a topic, a header
value or a module's output is logged as a visible escape (`policy.logtext`)
instead of starting a forged line. `create_app` and the command line call it;
it is idempotent.
"""

from __future__ import annotations

import logging

from tinywasm_wasi.policy.logtext import escape

__all__ = ["EscapingFilter", "install"]

_AIOHTTP = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
)


class EscapingFilter(logging.Filter):
    """Formats a record's message once and escapes what could break the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error report
            return True
        safe = escape(message)
        if safe != message:
            record.msg, record.args = safe, None
        return True


def install() -> None:
    """Put one `EscapingFilter` on each of our loggers and aiohttp's (again: no change)."""
    names = {n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in ("tinywasm", "bus")}
    names.update(_AIOHTTP)
    names.add("tinywasm")
    for name in sorted(names):
        logger = logging.getLogger(name)
        if not any(isinstance(f, EscapingFilter) for f in logger.filters):
            logger.addFilter(EscapingFilter())
