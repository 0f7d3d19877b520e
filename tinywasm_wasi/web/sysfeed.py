"""The server's own feed for the dashboard: ``$sys.status`` over the WebSocket hub.

While some client subscribes to a ``$sys`` topic, `SystemFeed` sends the whole
status (health, modules and their files, hub, history; `StatusView.dashboard`)
once a second, and at once when a history record is added (a load, swap,
refusal, rollback, quarantine...). Browsers never poll. With nobody subscribed
it only wakes up once a second to find that out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from tinywasm_wasi.policy.history import VersionRecord
from tinywasm_wasi.supervisor.host import ModuleHost
from tinywasm_wasi.web.hub import Hub
from tinywasm_wasi.web.status import StatusView

__all__ = ["STATUS_TOPIC", "SystemFeed"]

log = logging.getLogger("tinywasm.sysfeed")

STATUS_TOPIC = "$sys.status"


class SystemFeed:
    """Pushes `StatusView.dashboard()` to ``$sys.status`` subscribers."""

    def __init__(self, host: ModuleHost, hub: Hub, view: StatusView, interval: float = 1.0):
        self._hub = hub
        self._view = view
        self._interval = interval
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        host.on_record(self._on_record)

    def _on_record(self, _name: str, _record: VersionRecord) -> None:
        self._changed.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="$sys feed")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._changed.wait()
            self._changed.clear()
            if not self._hub.has_system_subscribers():
                continue
            try:
                status = await self._view.dashboard()
                self._hub.broadcast_system(STATUS_TOPIC, json.dumps(status).encode("utf-8"))
            except Exception:  # the feed must outlive a bad snapshot; say so once a tick
                log.exception("the $sys status feed failed to build a snapshot")
