"""Log output: plain text, or one JSON object per line (``--log-format json``).

A JSON line has ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger`` and
``msg``, then, for a module life-cycle event (`tinywasm_wasi.policy.events`),
``event``, ``module`` and its fields (``sha256``, ``trigger``, ``duration_ms``,
``held``, ``error``...), and ``exc`` with the traceback when there is one.
`configure_logging` is called by the command line only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from tinywasm_wasi.config import LogFormat
from tinywasm_wasi.policy.events import EXTRA_KEY

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose own INFO lines are noise here: watchfiles logs "N changes detected"
# on every build; our watcher logs what it does with the change instead.
QUIET_LOGGERS = ("watchfiles",)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (with `worker` when one is given)."""

    def __init__(self, worker: str | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self._worker is not None:
            line["worker"] = self._worker
        fields = getattr(record, EXTRA_KEY, None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(
    level: str, fmt: LogFormat, stream: TextIO | None = None, *, prefix: str = ""
) -> None:
    """Send the root logger's records to `stream` (stderr) as text or JSON lines.

    `prefix` goes before each text message (a worker's ``[w0] ``); in JSON it is the
    ``worker`` field.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt is LogFormat.JSON:
        handler.setFormatter(JsonFormatter(worker=prefix.strip(" []") or None))
    else:
        handler.setFormatter(
            logging.Formatter(TEXT_FORMAT.replace("%(message)s", prefix + "%(message)s"))
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
