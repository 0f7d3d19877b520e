"""One running canary: both versions serve, split by percentage, until a verdict.

`CanaryRun` splits the traffic (`policy/canary.py`'s `Split`), watches the
canary's window (what it served, what failed: traps, deadline misses and 5xx
answers) and decides with `judge` every `TICK` seconds; `promote()` and
`abort()` decide on command. The swapper waits on `verdict` in its CANARY phase
and then carries the decision out through the swap state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from tinywasm_wasi.policy.canary import CanarySettings, Split, Verdict, judge
from tinywasm_wasi.runtime.module import WasmModule

__all__ = ["TICK", "CanaryRequest", "CanaryRun"]

log = logging.getLogger("tinywasm.canary")

TICK = 0.05  # seconds between two looks at the canary's window


@dataclass(slots=True)
class CanaryRequest:
    """What `POST …/canary` asks the swapper for: a `Source` of the bytes, and the settings.

    `started` is settled once the canary serves (its run) or was refused (the reason).
    """

    data: bytes
    settings: CanarySettings
    started: asyncio.Future[CanaryRun | str]

    def __call__(self) -> bytes:
        return self.data


class CanaryRun:
    """The canary of one module name, from its start to its verdict."""

    def __init__(self, stable: WasmModule, canary: WasmModule, settings: CanarySettings) -> None:
        self.stable = stable
        self.canary = canary
        self.settings = settings
        self._split = Split(settings.percent)
        self._lock = threading.Lock()  # the bus splits on publishers' threads
        self.started = time.monotonic()
        self.server_errors = 0  # 5xx answers the canary returned (traps are counted by it)
        self._base = canary.counters.as_dict()
        self.verdict: asyncio.Future[tuple[Verdict, str]] = (
            asyncio.get_running_loop().create_future()
        )
        self._watch: asyncio.Task[None] | None = None

    # -- the split -----------------------------------------------------------------------------

    def pick(self, key: str | None = None) -> WasmModule:
        """The version an HTTP request goes to (`key`: its sticky header or cookie value)."""
        if self.verdict.done():
            return self.stable
        with self._lock:
            return self.canary if self._split.to_canary(key) else self.stable

    def _message_target(self) -> WasmModule | None:
        with self._lock:
            return self.canary if self._split.to_canary() else None

    def sticky_key(self, headers: Any, cookies: Any) -> str | None:
        s = self.settings
        if s.sticky_header is not None:
            value = headers.get(s.sticky_header)
            if value is not None:
                return str(value)
        if s.sticky_cookie is not None:
            value = cookies.get(s.sticky_cookie)
            if value is not None:
                return str(value)
        return None

    # -- the window ----------------------------------------------------------------------------

    def window(self) -> tuple[int, int, float]:
        """(served, failed, seconds) since the canary started."""
        now, base = self.canary.counters.as_dict(), self._base
        trapped = now["failed"] - base["failed"]
        served = now["delivered"] - base["delivered"] + now["requests"] - base["requests"]
        return served + trapped, trapped + self.server_errors, time.monotonic() - self.started

    def start(self) -> None:
        """Send the canary its share of messages and watch its window."""
        self.stable.split_messages(self._message_target)
        self._watch = asyncio.get_running_loop().create_task(self._run(), name="canary watch")

    async def _run(self) -> None:
        while not self.verdict.done():
            served, failed, elapsed = self.window()
            decided = judge(self.settings, served, failed, elapsed)
            if decided is not None:
                self._decide(*decided)
                return
            await asyncio.sleep(TICK)

    def promote(self, reason: str = "promoted by request") -> bool:
        return self._decide(Verdict.PROMOTE, reason)

    def abort(self, reason: str = "aborted by request") -> bool:
        return self._decide(Verdict.ROLL_BACK, reason)

    def _decide(self, verdict: Verdict, reason: str) -> bool:
        if self.verdict.done():
            return False
        log.info("canary %s: %s (%s)", self.canary.name, verdict.value, reason)
        self.verdict.set_result((verdict, reason))
        return True

    def end_split(self) -> None:
        """All traffic to the stable version again; no more watching."""
        self.stable.split_messages(None)
        if self._watch is not None:
            self._watch.cancel()

    async def close(self) -> None:
        self.end_split()
        if self._watch is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    def to_json(self) -> dict[str, Any]:
        served, failed, elapsed = self.window()
        return {
            "sha256": self.canary.compiled.sha256,
            "settings": self.settings.to_json(),
            "served": served,
            "failed": failed,
            "seconds": round(elapsed, 3),
            "metadata": None if self.canary.metadata is None else self.canary.metadata.to_json(),
            "health": None if self.canary.health is None else self.canary.health.value,
        }
