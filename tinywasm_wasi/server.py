"""The servers: `WasiServer` (modules, bus, WebSocket hub) and `DefaultServer` (static only).

Both run on one aiohttp `AppRunner`/`TCPSite` with `start()` and `stop()`;
`stop()` is idempotent and logs "closing" and "closed". The WasiServer stops
in the order that loses nothing: stop accepting connections, let module
traffic settle and drain every module (their last broadcasts still reach
connected browsers), close WebSocket clients with 1001, then the bus.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Protocol

from aiohttp import web

from bus import Bus
from tinywasm_wasi.config import Config
from tinywasm_wasi.policy.history import VersionRecord
from tinywasm_wasi.policy.limits import Limits
from tinywasm_wasi.policy.rules import RuleError, parse_file_name
from tinywasm_wasi.runtime.bridge import LoopBridge
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.supervisor.host import ModuleHost
from tinywasm_wasi.supervisor.watcher import ModuleChange, ModuleWatcher
from tinywasm_wasi.web.admin import AdminGuard
from tinywasm_wasi.web.dispatch import add_dispatch_routes
from tinywasm_wasi.web.hub import Hub
from tinywasm_wasi.web.routes import add_module_routes, add_static_routes

__all__ = ["DefaultServer", "Server", "WasiServer", "run_until_signalled"]

log = logging.getLogger("tinywasm.server")


class Server(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    @property
    def url(self) -> str: ...


class _HttpServer:
    """AppRunner/TCPSite life cycle shared by both servers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port: int | None = None
        self._stopped = False

    async def _serve(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await self._site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = self._site = None
            raise
        address = self._runner.addresses[0]
        self._port = int(address[1])

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not started: await start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def _stop_accepting(self) -> None:
        if self._site is not None:
            await self._site.stop()

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class DefaultServer(_HttpServer):
    """Serves the static web folder only; modules are off."""

    async def start(self) -> None:
        log.info(
            "modules are off: this is the static default server; set TINYWASM_SERVER=wasi "
            "to load the WebAssembly modules in %s",
            self.config.modules_dir,
        )
        app = web.Application()
        add_static_routes(app, self.config.web_dir)

        async def healthz(_request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "modules": "off"})

        app.router.add_get("/healthz", healthz)
        await self._serve(app)
        log.info("serving %s on %s", self.config.web_dir, self.url)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("closing")
        await self._cleanup()
        log.info("closed")


class WasiServer(_HttpServer):
    """Hosts every module in `config.modules_dir` on a bus, with a WebSocket hub at /ws."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.bus = Bus()
        self.runtime = Runtime(cache_dir=config.cache_dir)
        self.hub = Hub(
            publish=self.bus.publish,
            inbound=config.ws_inbound,
            queue_size=config.ws_queue_size,
            queue_bytes=config.ws_queue_bytes,
            max_frame=config.ws_max_frame,
            rate_limit=config.ws_rate_limit,
            origins=config.ws_origins,
        )
        self.admin = AdminGuard(config.admin_token)
        self._bridge: LoopBridge | None = None
        self._host: ModuleHost | None = None
        self._watcher: ModuleWatcher | None = None

    @property
    def host(self) -> ModuleHost:
        if self._host is None:
            raise RuntimeError("the server is not started: await start() first")
        return self._host

    async def start(self) -> None:
        """Load the modules, then listen. A module that fails to load is logged and skipped."""
        config = self.config
        self._bridge = LoopBridge(asyncio.get_running_loop(), self.hub.broadcast)
        self._host = ModuleHost(
            self.runtime,
            self.bus,
            self._bridge.submit,
            mailbox_size=config.mailbox_size,
            mailbox_bytes=config.mailbox_bytes,
            drain_timeout=config.drain_timeout,
            probation=config.swap_probation,
            limits=Limits(
                memory_limit=config.memory_limit,
                call_timeout=config.call_timeout,
                max_payload=config.max_payload,
            ),
            max_module_size=config.max_module_size,
            quarantine=(config.quarantine_traps, config.quarantine_window),
            quarantine_backoff=config.quarantine_backoff,
        )
        await self._host.load_dir(config.modules_dir)
        if config.watch and config.modules_dir.is_dir():
            self._watcher = ModuleWatcher(
                config.modules_dir, self._on_file_change, debounce=config.watch_debounce
            )
            await self._watcher.start()
        app = web.Application()
        app.router.add_get("/ws", self.hub.handle)
        add_module_routes(
            app,
            self._host,
            lambda: self.hub.clients,
            admin=self.admin,
            status_private=config.status_private,
        )
        add_dispatch_routes(app, self._host, config)
        add_static_routes(app, config.web_dir)
        try:
            await self._serve(app)
        except BaseException:
            if self._watcher is not None:
                await self._watcher.close()
            await self._host.stop()
            raise
        # What start-up made (modules, aiohttp, wasmtime bindings) lives as long as the
        # server: keep it out of the collector's full passes, which otherwise walk it
        # all and stall the event loop for tens of milliseconds (fan-out p99 spikes).
        gc.freeze()
        log.info(
            "serving %d module(s) on %s (WebSocket: %s/ws?topic=...)",
            len(self._host.modules),
            self.url,
            self.url.replace("http", "ws", 1),
        )

    async def stop(self) -> None:
        """Drain and close modules, close clients with 1001, stop. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        log.info("closing")
        await self._stop_accepting()
        if self._watcher is not None:
            await self._watcher.close()
        if self._host is not None:
            await self._host.stop()
        await asyncio.sleep(0)  # let the bridge hand over the last broadcasts
        await self.hub.close()
        await self._cleanup()
        self.bus.close()
        self.runtime.close()
        gc.unfreeze()  # what was frozen at start is collectable again
        log.info("closed")

    async def reload(self, name: str, trigger: str = "api") -> VersionRecord | None:
        """Swap module `name` to the current bytes of its file (unload if it is gone).

        Returns the record of the attempt, or None when nothing changed or the
        request was folded into a swap already running.
        """
        return await self.host.swap(name, trigger)

    def _on_file_change(self, change: ModuleChange) -> None:
        try:
            name = parse_file_name(change.path.name).name
        except RuleError as exc:
            log.error("ignoring module file %s: %s", change.path.name, exc)
            return
        self.host.schedule(name, "watcher")


async def run_until_signalled(server: Server) -> None:
    """Start `server`, wait for SIGINT or SIGTERM, stop it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
