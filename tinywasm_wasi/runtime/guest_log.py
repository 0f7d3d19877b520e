"""A guest's log lines: tagged with the module, rate-limited, and the suppressed ones reported."""

from __future__ import annotations

import logging
import time

from tinywasm_wasi.policy.ratelimit import TokenBucket

__all__ = ["LOG_BURST", "LOG_LINES_PER_SECOND", "GuestLog"]

guest_log = logging.getLogger("tinywasm.guest")

LOG_LINES_PER_SECOND = 100  # a guest's log lines beyond this (after a burst) are counted only
LOG_BURST = 200


class GuestLog:
    """Writes one module's log lines to the `tinywasm.guest` logger, within a budget."""

    def __init__(self, module: str) -> None:
        self.module = module
        self._budget = TokenBucket(LOG_LINES_PER_SECOND, burst=LOG_BURST, now=time.monotonic())
        self._suppressed = 0  # lines left out since the last report
        self.suppressed_total = 0
        self._last_report = time.monotonic()

    def write(self, line: str, *, stream: str) -> None:
        now = time.monotonic()
        if self._suppressed and now - self._last_report >= 1.0:
            guest_log.warning(
                "[%s] %d log line(s) suppressed: more than %d lines/s",
                self.module,
                self._suppressed,
                LOG_LINES_PER_SECOND,
            )
            self._suppressed = 0
            self._last_report = now
        if not self._budget.try_take(now):
            self._suppressed += 1
            self.suppressed_total += 1
            return
        level = logging.WARNING if stream == "stderr" else logging.INFO
        guest_log.log(level, "[%s] %s", self.module, line)
