"""The aiohttp application and its life cycle; the two servers that run it.

`create_app(config)` builds the whole WasiServer as one `web.Application`:

- `cleanup_ctx`, in order: the bus and wasmtime runtime (closed last), the
  modules (loaded at start-up), the folder watcher;
- `on_shutdown`, in order: stop the watcher, drain every module (their last
  broadcasts still reach connected browsers), close WebSocket clients with 1001.

aiohttp runs these around `serve()`: stop accepting connections, shutdown
hooks, wait for handlers, cleanup contexts in reverse. Shared objects sit on
the app under typed `web.AppKey`s, so tests can use `aiohttp_client(create_app(config))`.

`WasiServer` and `DefaultServer` are the two servers the CLI starts: `start()`
and `stop()` (idempotent; logs "closing" and "closed") around one `serve()`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client.registry import Collector

from bus import Bus
from bus.nats import NatsLink
from bus.remote import BROADCAST_PREFIX, TOPIC_PREFIX
from tinywasm_wasi import logsafe
from tinywasm_wasi.build.devloop import BUILD_TOPIC, BuildReport, SourceWatcher
from tinywasm_wasi.config import Config
from tinywasm_wasi.policy.history import Trigger, VersionRecord
from tinywasm_wasi.policy.limits import Limits
from tinywasm_wasi.policy.placement import Placement, worker_name
from tinywasm_wasi.policy.rules import RuleError, parse_file_name
from tinywasm_wasi.policy.tokens import TokenVerifier
from tinywasm_wasi.policy.topic_history import MemoryHistory, parse_history_rule
from tinywasm_wasi.runtime.bridge import LoopBridge
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.runtime.workers import configure as configure_workers
from tinywasm_wasi.supervisor.fleet import Fleet
from tinywasm_wasi.supervisor.health import HealthChecker
from tinywasm_wasi.supervisor.host import ModuleHost
from tinywasm_wasi.supervisor.state_dir import StateDir
from tinywasm_wasi.supervisor.watcher import ModuleChange, ModuleWatcher
from tinywasm_wasi.web import client_errors
from tinywasm_wasi.web.admin import AdminGuard, is_local_host
from tinywasm_wasi.web.connections import (
    DEFAULT_HEADER_TIMEOUT,
    AcceptErrorFilter,
    ConnectionGuard,
    GuardedRunner,
    connection_budget,
)
from tinywasm_wasi.web.dispatch import Dispatcher, add_dispatch_routes
from tinywasm_wasi.web.forward import NatsForwarder
from tinywasm_wasi.web.handover import READY_SUBJECT, HandoverService
from tinywasm_wasi.web.hub import Hub
from tinywasm_wasi.web.metrics import (
    FleetCollector,
    HttpStats,
    NatsCollector,
    ServerCollector,
    access_counter,
    metrics_handler,
    new_registry,
)
from tinywasm_wasi.web.relay import RELAY_ACTIONS, AdminRelay
from tinywasm_wasi.web.release import add_release_routes
from tinywasm_wasi.web.reload import Reloader, read_inbound_file, read_public_key
from tinywasm_wasi.web.routes import add_api_fallback, add_module_routes, add_static_routes
from tinywasm_wasi.web.sysfeed import SystemFeed

__all__ = [
    "BUS",
    "CONFIG",
    "FLEET",
    "HOST",
    "HUB",
    "NATS",
    "STATE",
    "DefaultServer",
    "Served",
    "Server",
    "WasiServer",
    "create_app",
    "create_static_app",
    "run_until_signalled",
    "serve",
]

log = logging.getLogger("tinywasm.server")

CONFIG = web.AppKey("config", Config)
BUS = web.AppKey("bus", Bus)
HOST = web.AppKey("host", ModuleHost)
HUB = web.AppKey("hub", Hub)
RUNTIME = web.AppKey("runtime", Runtime)
STATE = web.AppKey("state", StateDir)
NATS = web.AppKey("nats", NatsLink)
FLEET = web.AppKey("fleet", Fleet)
_BRIDGE = web.AppKey("bridge", LoopBridge)
_FORWARDER = web.AppKey("forwarder", NatsForwarder)
_RELAY = web.AppKey("relay", AdminRelay)
_DISPATCHER = web.AppKey("dispatcher", Dispatcher)
HANDOVER = web.AppKey("handover", HandoverService)
ARRIVAL_TIMEOUT = 60.0  # seconds a restarting worker waits for its modules to come back
STARTUP_SUBSCRIBE_TIMEOUT = 5.0  # seconds start-up waits for the modules' NATS subscriptions
WORKER_HEADER = "X-Tinywasm-Worker"  # with --workers N: which worker answered
_WATCHER = web.AppKey("watcher", ModuleWatcher)
SOURCES = web.AppKey("sources", SourceWatcher)
HTTP_STATS = web.AppKey("http_stats", HttpStats)
_FEED = web.AppKey("feed", SystemFeed)

# Seconds aiohttp waits for request handlers after the shutdown hooks ran (the hub has
# closed every WebSocket by then, so this bounds only a plain request still running).
HANDLER_GRACE = 1.0


def create_app(config: Config) -> web.Application:
    """The WasiServer as an aiohttp application: modules, bus, hub and every route."""
    http_stats = HttpStats()
    app = web.Application()
    app[HTTP_STATS] = http_stats
    # The connection's name says which worker it is in nats-server's monitoring (/connz).
    worker = None if config.worker_index is None else worker_name(config.worker_index, config.node)
    name = f"tinywasm {worker}" if worker else "tinywasm"
    link = NatsLink(config.nats, buffer=config.nats_buffer, name=name) if config.nats else None
    # With NATS, the bus and the hub each get a channel: bus topics under tw.t.,
    # broadcasts under tw.b. (bus/remote.py); what other processes send comes back
    # through deliver_remote. Without it they are this process's alone, as before.
    # Bus messages are stamped (publisher, sequence): a module moving between workers
    # is handed every message exactly once (web/handover.py). A replicas = "all"
    # module's replicas are a group: NATS gives each message to one of them, through
    # deliver_group, unless a replica got it where it was published. Each bus message
    # carries its sender across (bus/remote.py, "Senders").
    bus: Bus  # made below, once its remote side is: the callbacks find it then
    hub: Hub
    topics = (
        link.channel(
            TOPIC_PREFIX,
            lambda *m: bus.deliver_remote(*m),
            stamped=True,
            deliver_group=lambda *m: bus.deliver_group(*m),
        )
        if link
        else None
    )
    bus = Bus(remote=topics)
    broadcasts = link.channel(BROADCAST_PREFIX, lambda *m: hub.deliver_remote(*m)) if link else None
    admin = AdminGuard(config.admin_token, listen_host=config.host)
    hub = Hub(
        remote=broadcasts,
        remote_ready=broadcasts.ready if broadcasts is not None else None,
        # The $sys feed shows what /api/modules shows, behind the same guard.
        system_guard=admin.check if config.status_private else None,
        publish=bus.publish,
        inbound=(
            config.ws_inbound
            if config.ws_inbound_file is None
            else read_inbound_file(config.ws_inbound_file)
        ),
        queue_size=config.ws_queue_size,
        queue_bytes=config.ws_queue_bytes,
        max_frame=config.ws_max_frame,
        rate_limit=config.ws_rate_limit,
        origins=config.ws_origins,
        auth=token_verifier(config),
        history=topic_history(config),
    )
    runtime = Runtime(cache_dir=config.cache_dir, workers=configure_workers(config.module_threads))
    state = StateDir(config.state_path, create_parents=config.state_dir is not None)
    # One of several workers: each module runs on its owner (policy/placement.py),
    # chosen over the live workers (supervisor/fleet.py keeps the placement current).
    placement = (
        Placement.of(config.worker_index, config.workers, config.node)
        if config.worker_index is not None and config.workers > 1
        else None
    )
    bridge = LoopBridge(None, hub.broadcast)  # bound to the loop at start-up
    host = ModuleHost(
        runtime,
        bus,
        bridge.submit,
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
        state=state,
        placement=placement,
        environment=config.environment,
    )
    app[CONFIG], app[BUS], app[HUB], app[RUNTIME], app[HOST] = config, bus, hub, runtime, host
    app[_BRIDGE] = bridge
    app[STATE] = state
    if link is not None:
        app[NATS] = link
    fleet = relay = None
    if placement is not None and link is not None:
        fleet = Fleet(
            link, host, placement.me, expected=frozenset(placement.workers), channel=topics
        )
        app[FLEET] = fleet
        host.deployer.written = fleet.file_written  # a deployed file is this worker's at once
        relay = app[_RELAY] = AdminRelay(link, placement.me)

    if config.admin_token is None and not is_local_host(config.host):
        log.warning(
            "no admin token is set and the server listens on %s, not only on loopback: "
            "reload and rollback answer only loopback clients, but a reverse proxy on this "
            "machine makes every client look local. Set TINYWASM_ADMIN_TOKEN",
            config.host,
        )
    app.cleanup_ctx.extend(
        (_bus_and_runtime, _modules, _health, _watcher, _sources, _feed, _frozen)
    )
    app.on_shutdown.extend(
        (
            _leave_fleet,
            _stop_sources,
            _stop_watcher,
            _stop_feed,
            _hand_over,
            _stop_modules,
            _left_fleet,
        )
    )
    app.on_shutdown.append(_close_hub)

    app.router.add_get("/ws", hub.handle)
    view = add_module_routes(
        app,
        host,
        hub,
        nats=link,
        fleet=(lambda: _fleet_view(app)) if fleet is not None else None,
        relay=relay,
        admin=admin,
        status_private=config.status_private,
    )
    add_release_routes(app, host, admin, relay)
    add_api_fallback(app)  # after every /api/ route
    app[_FEED] = SystemFeed(host, hub, view)
    forwarder = None
    if placement is not None and link is not None and topics is not None:
        handover = HandoverService(
            link,
            topics,
            bus,
            host,
            placement.me,
            drain_timeout=config.drain_timeout,
            mailbox_size=config.mailbox_size,
        )
        app[HANDOVER] = handover
        if fleet is not None:  # a module whose owner comes back goes to it with its state
            fleet.hand_over = handover.give
            handover.announce = fleet.announce
            fleet.on_dead = handover.worker_gone  # a move with a dead worker stops waiting
        forwarder = NatsForwarder(
            link,
            placement.me,
            lambda name: host.limits_for(name).call_timeout,
            host.remote_owner,
            handover,
            fleet.gone_from if fleet is not None else None,
        )
        app[_FORWARDER] = forwarder
        app.on_response_prepare.append(_worker_header(placement.me))
    dispatcher = add_dispatch_routes(app, host.view, config, forwarder)
    app[_DISPATCHER] = dispatcher
    collectors: list[Collector] = [ServerCollector(host.view, bus, hub, dispatcher, http_stats)]
    if link is not None:
        collectors.append(NatsCollector(link))
    if fleet is not None:
        collectors.append(FleetCollector(fleet, forwarder, app.get(HANDOVER)))
    metrics = metrics_handler(new_registry(*collectors))
    app.router.add_get("/metrics", admin(metrics) if config.status_private else metrics)
    add_static_routes(app, config.web_dir)
    return app


def _worker_header(
    me: str,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def add(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = me

    return add


def topic_history(config: Config) -> MemoryHistory | None:
    """The browsers' topic history the config asks for, or None (no rules).

    Epochs are random, so a restart (which loses the history) starts new ones.

    Raises:
        ValueError: a rule is not ``pattern:size:ttl``.
    """
    if not config.history:
        return None
    return MemoryHistory(
        [parse_history_rule(rule) for rule in config.history],
        new_epoch=lambda: secrets.token_hex(4),
        max_topics=config.history_max_topics,
        max_bytes=config.history_max_bytes,
    )


def token_verifier(config: Config) -> TokenVerifier | None:
    """The /ws token verifier the config asks for, or None (no token auth).

    Raises:
        ValueError: the public key file cannot be read or holds no usable key, or the
            secret is too short.
    """
    if config.auth_secret is not None:
        return TokenVerifier(secret=config.auth_secret)
    if config.auth_public_key is None:
        return None
    return read_public_key(config.auth_public_key)


async def _bus_and_runtime(app: web.Application) -> AsyncIterator[None]:
    link = app.get(NATS)
    if link is not None:
        await link.connect()  # before the modules load: their subscriptions want subjects
        fleet = app.get(FLEET)
        if fleet is not None:
            # Its files decide what it may own; a module handed over to it may arrive
            # before the folder is loaded: it is staged from the folder (web/handover.py).
            app[HOST].loader.directory = app[CONFIG].modules_dir
            await fleet.claim()  # before anything answers under this worker's name
        forwarder = app.get(_FORWARDER)
        if forwarder is not None:
            await forwarder.serve(app[_DISPATCHER].relay)
        handover = app.get(HANDOVER)
        if handover is not None:
            await handover.start()
        relay = app.get(_RELAY)
        if relay is not None:
            await relay.serve(app[RELAY_ACTIONS])
    try:
        yield
    finally:
        handover = app.get(HANDOVER)
        if handover is not None:
            await handover.close()
        app[BUS].close()
        if link is not None:
            await link.close()  # after the modules' last publishes and broadcasts
        app[RUNTIME].close()


async def _modules(app: web.Application) -> AsyncIterator[None]:
    app[_BRIDGE].bind(asyncio.get_running_loop())
    host = app[HOST]
    fleet = app.get(FLEET)
    if fleet is not None:
        await fleet.join()  # which workers are live decides which modules load here
    await host.load_dir(app[CONFIG].modules_dir)
    if fleet is not None:
        fleet.start()
    link = app.get(NATS)
    if link is not None:
        # The modules' subscriptions reach the NATS server before the port opens.
        await link.subscribed(STARTUP_SUBSCRIBE_TIMEOUT)
    try:
        yield
    finally:
        await host.stop()  # already done by _stop_modules unless start-up failed


async def _health(app: web.Application) -> AsyncIterator[None]:
    checker = HealthChecker(app[HOST].live, app[CONFIG].health_interval)
    checker.start()
    try:
        yield
    finally:
        await checker.close()


async def _watcher(app: web.Application) -> AsyncIterator[None]:
    config, host = app[CONFIG], app[HOST]
    if config.watch and config.modules_dir.is_dir():

        async def on_change(change: ModuleChange) -> None:
            try:
                name = parse_file_name(change.path.name).name
            except RuleError as exc:
                log.error("ignoring module file %s: %s", change.path.name, exc)
                return
            fleet = app.get(FLEET)
            if fleet is not None:
                fleet.rescan()  # which files this worker has decides what it may own
            await host.schedule_admitted(name, Trigger.WATCHER)

        watcher = ModuleWatcher(config.modules_dir, on_change, debounce=config.watch_debounce)
        await watcher.start()
        app[_WATCHER] = watcher
    try:
        yield
    finally:
        await _stop_watcher(app)


async def _sources(app: web.Application) -> AsyncIterator[None]:
    """`tinywasm dev`: rebuild module folders on save; builds go to browsers on $sys.build."""
    config, hub = app[CONFIG], app[HUB]
    if config.watch_sources:

        def on_result(report: BuildReport) -> None:
            hub.broadcast_system(BUILD_TOPIC, json.dumps(report.to_json()).encode("utf-8"))

        sources = SourceWatcher(
            config.watch_sources,
            config.modules_dir,
            on_result,
            debounce=config.watch_debounce,
            cache_dir=config.cache_dir,
        )
        await sources.start()
        app[SOURCES] = sources
    try:
        yield
    finally:
        await _stop_sources(app)


async def _stop_sources(app: web.Application) -> None:
    sources = app.get(SOURCES)
    if sources is not None:
        await sources.close()


async def _feed(app: web.Application) -> AsyncIterator[None]:
    app[_FEED].start()
    try:
        yield
    finally:
        await app[_FEED].close()


async def _stop_feed(app: web.Application) -> None:
    await app[_FEED].close()


async def _frozen(_app: web.Application) -> AsyncIterator[None]:
    # What start-up made (modules, aiohttp, wasmtime bindings) lives as long as the
    # server: keep it out of the collector's full passes, which otherwise walk it
    # all and stall the event loop for tens of milliseconds (fan-out p99 spikes).
    gc.freeze()
    yield
    gc.unfreeze()  # what was frozen at start is collectable again


async def _stop_watcher(app: web.Application) -> None:
    watcher = app.get(_WATCHER)
    if watcher is not None:
        await watcher.close()


def _fleet_view(app: web.Application) -> dict[str, object]:
    """/api/modules' ``fleet``: who is live and runs what, and the requests lost in flight."""
    view = app[FLEET].view()
    forwarder = app.get(_FORWARDER)
    if forwarder is not None:
        view["forwarded"] = forwarder.forwarded
        view["lost_forwards"] = forwarder.lost  # sent to a worker that never answered
    handover = app.get(HANDOVER)
    if handover is not None:
        view["handovers"] = handover.stats()  # modules moved in and out, live
    return view


async def _leave_fleet(app: web.Application) -> None:
    fleet = app.get(FLEET)
    if fleet is not None:
        await fleet.leave()


async def _left_fleet(app: web.Application) -> None:
    fleet = app.get(FLEET)
    if fleet is not None:
        await fleet.close()  # its last beat lists nothing: the new owners start them


async def _hand_over(app: web.Application) -> None:
    """One of several workers stopping: its modules move to the others, with their state."""
    handover = app.get(HANDOVER)
    if handover is not None:
        await handover.leave()


async def _stop_modules(app: web.Application) -> None:
    await app[HOST].stop()
    await asyncio.sleep(0)  # let the bridge hand over the last broadcasts


async def _close_hub(app: web.Application) -> None:
    await app[HUB].close()


def create_static_app(config: Config) -> web.Application:
    """The default server's application: the web folder and /healthz, no modules."""
    app = web.Application()
    app[CONFIG] = config
    add_static_routes(app, config.web_dir)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "modules": "off"})

    app.router.add_get("/healthz", healthz)
    return app


@dataclass(frozen=True, slots=True)
class Served:
    runner: web.AppRunner
    port: int
    guard: ConnectionGuard


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
) -> Served:
    """Start `app` (its start-up hooks, then listening on host:port); `port` 0 picks one.

    Stop it with `Served.runner.cleanup()`, which stops listening, runs the
    shutdown hooks and then the cleanup contexts.
    """
    client_errors.install()  # before the escaping: it reads aiohttp's record as made
    logsafe.install()
    AcceptErrorFilter.install()
    guard = ConnectionGuard(max_connections=connection_budget(), header_timeout=header_timeout)
    app.middlewares.append(guard.middleware)
    stats = app.get(HTTP_STATS)
    counting = {} if stats is None else {"access_log_class": access_counter(stats)}
    runner = GuardedRunner(
        app,
        guard,
        handle_signals=False,
        # With metrics, aiohttp's access-log hook counts requests (it logs nothing).
        access_log=None if stats is None else log,
        shutdown_timeout=HANDLER_GRACE,
        **counting,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return Served(runner, int(runner.addresses[0][1]), guard)


class Server(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def reload_settings(self) -> None: ...
    @property
    def url(self) -> str: ...


class _AppServer:
    """`start()`/`stop()` around one `serve()`; `stop()` is safe to call twice."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._served: Served | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        if self._served is None:
            raise RuntimeError("the server is not started: await start() first")
        return self._served.port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def connections(self) -> ConnectionGuard:
        """The header deadline, connection cap and reserve, with their counters."""
        if self._served is None:
            raise RuntimeError("the server is not started: await start() first")
        return self._served.guard

    async def _start(self, app: web.Application) -> None:
        # Workers share the supervisor's port (SO_REUSEPORT): the kernel spreads connections.
        reuse = self.config.is_worker
        self._served = await serve(
            app,
            self.config.host,
            self.config.port,
            reuse_port=reuse,
            header_timeout=self.config.header_timeout,
        )

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("closing")
        if self._served is not None:
            await self._served.runner.cleanup()
        log.info("closed")


class DefaultServer(_AppServer):
    """Serves the static web folder only; modules are off."""

    async def start(self) -> None:
        log.info(
            "modules are off: this is the static default server; set TINYWASM_SERVER=wasi "
            "to load the WebAssembly modules in %s",
            self.config.modules_dir,
        )
        await self._start(create_static_app(self.config))
        log.info("serving %s on %s", self.config.web_dir, self.url)

    def reload_settings(self) -> None:
        log.info("SIGHUP: the static server has nothing to reload")


class WasiServer(_AppServer):
    """Hosts every module in `config.modules_dir` on a bus, with a WebSocket hub at /ws."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.app = create_app(config)
        self.bus = self.app[BUS]
        self.hub = self.app[HUB]
        self.runtime = self.app[RUNTIME]
        self._host = self.app[HOST]
        self.reloader = Reloader(
            self.hub, inbound_file=config.ws_inbound_file, public_key=config.auth_public_key
        )

    @property
    def host(self) -> ModuleHost:
        if self._served is None:
            raise RuntimeError("the server is not started: await start() first")
        return self._host

    async def start(self) -> None:
        """Load the modules, then listen. A module that fails to load is logged and skipped."""
        await self._start(self.app)
        fleet = self.app.get(FLEET)
        if fleet is not None:
            # The supervisor's rolling restart waits for this before it stops the next one.
            deadline = time.monotonic() + ARRIVAL_TIMEOUT
            while fleet.missing() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            missing = fleet.missing()
            if missing:
                log.warning(
                    "%s not running here %.0f s after start: ready anyway",
                    ", ".join(sorted(missing)),
                    ARRIVAL_TIMEOUT,
                )
            await self.app[NATS].publish_now(READY_SUBJECT, fleet.me.encode())
        log.info(
            "serving %d module(s) on %s (WebSocket: %s/ws?topic=...)",
            len(self._host.modules),
            self.url,
            self.url.replace("http", "ws", 1),
        )

    def reload_settings(self) -> None:
        """SIGHUP: read the inbound file and the auth public key again (web/reload.py)."""
        self.reloader.reload()

    async def reload(self, name: str, trigger: str = "api") -> VersionRecord | None:
        """Swap module `name` to the current bytes of its file (unload if it is gone).

        Returns the record of the attempt, or None when nothing changed or the
        request was folded into a swap already running.
        """
        return await self.host.swap(name, trigger)


async def run_until_signalled(server: Server) -> None:
    """Start `server`, wait for SIGINT or SIGTERM, stop it; SIGHUP reloads its settings."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_settings)
    try:
        await server.start()
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.stop()
