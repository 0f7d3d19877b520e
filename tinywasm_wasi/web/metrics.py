"""Prometheus metrics at ``GET /metrics``, read from the counters the server already keeps.

Nothing here runs per message. `ServerCollector` is a prometheus-client
`Collector`: at scrape time it reads each module's `ModuleCounters`, mailbox,
trap codes and call-duration histograms, the registry's swap outcomes and swap
durations, the hub's and the bus's counters, the dispatcher's middleware
short-circuits and `HttpStats` (the one thing counted per request, by the
`access_counter` aiohttp calls after each response: a dict lookup and a
bucket increment). The
process, platform and garbage-collector collectors are prometheus-client's own.

Per-module counters belong to the running version: a swap starts them again
from zero, which Prometheus' `rate()` and `increase()` read as a counter reset.
Each app has its own `CollectorRegistry`, so several servers in one process
(the tests) do not collide.

With NATS (``--nats``, ``--workers``), `NatsCollector` adds the link's state and
counters; with several workers, `FleetCollector` adds this worker's view of the
fleet: what ``/api/modules`` shows in its ``fleet`` section, from the same objects,
including the bus messages lost while their module ran nowhere (supervisor/fleet.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_urldispatcher import AbstractRoute
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bus import Bus
from bus.nats import NatsLink
from tinywasm_wasi.policy.histogram import REQUEST_BUCKETS, Histogram
from tinywasm_wasi.policy.membership import MemberState
from tinywasm_wasi.supervisor.fleet import Fleet
from tinywasm_wasi.supervisor.registry import RegistryView
from tinywasm_wasi.web.admin import Handler
from tinywasm_wasi.web.dispatch import Dispatcher
from tinywasm_wasi.web.forward import NatsForwarder
from tinywasm_wasi.web.handover import HandoverService
from tinywasm_wasi.web.hub import Hub

__all__ = [
    "FleetCollector",
    "HttpStats",
    "NatsCollector",
    "ServerCollector",
    "access_counter",
    "metrics_handler",
    "new_registry",
]

UNMATCHED = "unmatched"  # the route label of a request no route took (a 404)


class HttpStats:
    """Requests and their latency by (route, status), counted on the event loop.

    One histogram per (route, status): its count is the request count, so a
    request costs one dict lookup and one observe. Keyed by aiohttp's route object
    (hashing it is cheaper than building its pattern text per request);
    `requests()` and `seconds()` name the routes and add up at scrape time.
    """

    def __init__(self) -> None:
        self.histograms: dict[tuple[AbstractRoute | None, int], Histogram] = {}

    def requests(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for (route, status), histogram in list(self.histograms.items()):
            key = (_route_name(route), status)
            out[key] = out.get(key, 0) + histogram.count
        return out

    def seconds(self) -> list[tuple[str, Histogram]]:
        """Latency by route; a WebSocket's (status 101) is its connection's life: left out."""
        out: dict[str, Histogram] = {}
        for (route, status), histogram in list(self.histograms.items()):
            if status == 101:
                continue
            name = _route_name(route)
            out[name] = out[name].merged(histogram) if name in out else histogram
        return list(out.items())


def _route_name(route: AbstractRoute | None) -> str:
    resource = None if route is None else route.resource
    return UNMATCHED if resource is None else resource.canonical


def access_counter(stats: HttpStats) -> type[AbstractAccessLogger]:
    """An aiohttp access-log class that counts each request into `stats` and logs nothing.

    aiohttp times every request anyway and calls the access logger once the response
    is sent, so counting there adds no handler layer to the request path (an aiohttp
    middleware cost about 25 µs of server CPU per request in bench.http; this costs
    about 2 µs on the same machine).
    """

    histograms = stats.histograms

    class AccessCounter(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return True

        def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
            # No match info: a request aiohttp refused before routing (a malformed one);
            # the public `match_info` asserts there is one, so read the attribute.
            info = getattr(request, "_match_info", None)
            route = None if info is None else info.route
            if route is not None and route.resource is None:
                route = None  # a 404 or 405: aiohttp makes a new route object for each
            key = (route, response.status)
            histogram = histograms.get(key)
            if histogram is None:
                histogram = histograms[key] = Histogram(REQUEST_BUCKETS)
            histogram.observe(time)

    return AccessCounter


def _histogram(
    name: str, doc: str, labels: list[str], series: Iterator[tuple[list[str], Histogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, histogram in series:
        family.add_metric(values, histogram.cumulative(), histogram.total)
    return family


class ServerCollector(Collector):
    """Every tinywasm metric, built from the live counters at each scrape."""

    def __init__(
        self,
        registry: RegistryView,
        bus: Bus,
        hub: Hub,
        dispatcher: Dispatcher | None,
        http: HttpStats,
    ) -> None:
        self._registry = registry
        self._bus = bus
        self._hub = hub
        self._dispatcher = dispatcher
        self._http = http

    def collect(self) -> Iterator[Metric]:
        yield from self._modules()
        yield from self._swaps()
        yield from self._hub_metrics()
        yield from self._bus_metrics()
        yield from self._http_metrics()

    def _modules(self) -> Iterator[Metric]:
        reg = self._registry
        modules = list(reg.modules.values())
        counter = {
            "delivered": "Messages a module's handler ran for without trapping.",
            "failed": "Messages and requests whose guest call trapped.",
            "refused": "Guest calls the host refused (bad pointer, size over a cap).",
            "published": "Messages a module published on the bus.",
            "broadcast": "Frames a module broadcast to WebSocket clients.",
            "requests": "HTTP requests a module answered.",
        }
        for field, doc in counter.items():
            family = CounterMetricFamily(f"tinywasm_module_{field}", doc, labels=["module"])
            for m in modules:
                family.add_metric([m.name], getattr(m.counters, field))
            yield family
        dropped = CounterMetricFamily(
            "tinywasm_module_dropped",
            "Messages refused because the module's mailbox was full.",
            labels=["module"],
        )
        traps = CounterMetricFamily(
            "tinywasm_module_traps",
            "Guest calls that trapped, by trap code.",
            labels=["module", "code"],
        )
        depth = GaugeMetricFamily(
            "tinywasm_module_mailbox_depth",
            "Items queued in a module's mailbox.",
            labels=["module"],
        )
        queued = GaugeMetricFamily(
            "tinywasm_module_mailbox_bytes",
            "Bytes queued in a module's mailbox.",
            labels=["module"],
        )
        up = GaugeMetricFamily(
            "tinywasm_module_up",
            "1 for each module version by state (starting, live, draining, closed).",
            labels=["module", "state"],
        )
        memory = GaugeMetricFamily(
            "tinywasm_module_memory_bytes", "A module's linear memory size.", labels=["module"]
        )
        for m in modules:
            dropped.add_metric([m.name], m.mailbox.dropped)
            for code, count in list(m.traps_by_code.items()):
                traps.add_metric([m.name, code], count)
            depth.add_metric([m.name], m.mailbox.depth)
            queued.add_metric([m.name], m.mailbox.queued_bytes)
            up.add_metric([m.name, m.state.value], 1)
            memory.add_metric([m.name], m.snapshot()["memory_bytes"])
        quarantined = GaugeMetricFamily(
            "tinywasm_module_quarantined",
            "1 while a module is quarantined (out of service until its retry).",
            labels=["module"],
        )
        for name in sorted({*reg.modules, *reg.quarantined}):
            quarantined.add_metric([name], 1 if name in reg.quarantined else 0)
        refused = GaugeMetricFamily(
            "tinywasm_module_file_refused",
            "1 while a module's latest file is refused (the module keeps its old version).",
            labels=["module"],
        )
        for name in reg.refused:
            refused.add_metric([name], 1)
        yield from (dropped, traps, depth, queued, up, memory, quarantined, refused)
        yield _histogram(
            "tinywasm_guest_call_duration_seconds",
            "Guest call durations by module and export (message handler or HTTP export).",
            ["module", "export"],
            (([m.name, export], h) for m in modules for export, h in m.call_seconds.items()),
        )

    def _swaps(self) -> Iterator[Metric]:
        reg = self._registry
        swaps = CounterMetricFamily(
            "tinywasm_module_swaps",
            "Load, swap and unload attempts by result (loaded, swapped, refused, rolled back...).",
            labels=["module", "result"],
        )
        for (name, outcome), count in list(reg.outcomes.items()):
            swaps.add_metric([name, outcome.value.replace(" ", "_")], count)
        yield swaps
        yield _histogram(
            "tinywasm_module_swap_duration_seconds",
            "Time from staging a new version until it served (swaps and rollbacks).",
            ["module"],
            (([name], h) for name, h in list(reg.swap_seconds.items())),
        )

    def _hub_metrics(self) -> Iterator[Metric]:
        stats = self._hub.stats()
        yield GaugeMetricFamily(
            "tinywasm_hub_clients", "WebSocket connections open.", value=stats.clients
        )
        yield CounterMetricFamily(
            "tinywasm_hub_frames_sent",
            "Frames handed to WebSocket clients (written or queued).",
            value=stats.frames_queued,
        )
        yield CounterMetricFamily(
            "tinywasm_hub_sent_bytes",
            "Payload bytes handed to WebSocket clients (written or queued).",
            value=stats.bytes_queued,
        )
        slow = CounterMetricFamily(
            "tinywasm_hub_slow_consumer_closes",
            "Clients closed with 1013 as slow consumers, by the limit they hit.",
            labels=["reason"],
        )
        slow.add_metric(["frames"], stats.slow_frames)
        slow.add_metric(["bytes"], stats.slow_bytes)
        yield slow
        inbound = CounterMetricFamily(
            "tinywasm_hub_inbound_frames",
            "Frames browsers sent, by what became of them.",
            labels=["result"],
        )
        inbound.add_metric(["published"], stats.inbound_published)
        inbound.add_metric(["refused"], stats.inbound_refused)
        inbound.add_metric(["throttled"], stats.inbound_throttled)
        yield inbound
        yield CounterMetricFamily(
            "tinywasm_hub_origins_refused",
            "WebSocket handshakes refused (403) for their Origin.",
            value=stats.origins_refused,
        )
        presence = self._hub.presence_stats()
        for field, doc in (
            ("topics", "Topics with at least one WebSocket connection subscribed by name."),
            ("members", "(topic, connection) pairs: connections on each topic, added up."),
            ("watchers", "(topic, connection) pairs that get join/leave frames (presence=1)."),
        ):
            yield GaugeMetricFamily(
                f"tinywasm_presence_{field}", doc, value=getattr(presence, field)
            )

    def _bus_metrics(self) -> Iterator[Metric]:
        stats = self._bus.stats()
        for field, doc in (
            ("published", "Messages published on the bus."),
            ("delivered", "Messages put into subscribers' mailboxes."),
            ("dropped", "Messages a subscriber refused (its mailbox was full)."),
        ):
            yield CounterMetricFamily(f"tinywasm_bus_{field}", doc, value=getattr(stats, field))
        yield GaugeMetricFamily(
            "tinywasm_bus_subscriptions", "Subscriptions on the bus.", value=stats.subscriptions
        )

    def _http_metrics(self) -> Iterator[Metric]:
        http = self._http
        requests = CounterMetricFamily(
            "tinywasm_http_requests",
            "HTTP requests by route pattern and status.",
            labels=["route", "status"],
        )
        for (route, status), count in http.requests().items():
            requests.add_metric([route, str(status)], count)
        yield requests
        yield _histogram(
            "tinywasm_http_request_duration_seconds",
            "HTTP request latency by route pattern, until the handler returned.",
            ["route"],
            (([route], h) for route, h in http.seconds()),
        )
        short = CounterMetricFamily(
            "tinywasm_http_middleware_short_circuits",
            "Requests a middleware answered itself, so the target module never ran.",
            labels=["middleware"],
        )
        if self._dispatcher is not None:
            for name, count in list(self._dispatcher.short_circuits.items()):
                short.add_metric([name], count)
        yield short


class NatsCollector(Collector):
    """The NATS link: connected or not, and its counters (``/api/modules``' ``nats``)."""

    def __init__(self, link: NatsLink) -> None:
        self._link = link

    def collect(self) -> Iterator[Metric]:
        stats = self._link.stats()
        yield GaugeMetricFamily(
            "tinywasm_nats_connected",
            "1 while the NATS connection is up; 0 while it is away (/healthz says degraded).",
            value=1 if stats.connected else 0,
        )
        for field, doc in (
            ("forwarded", "Messages handed to NATS for other processes."),
            ("received", "Messages received from other processes over NATS."),
            ("dropped", "Messages dropped while NATS was away and the buffer was full."),
            ("disconnects", "Times the NATS connection was lost."),
        ):
            yield CounterMetricFamily(f"tinywasm_nats_{field}", doc, value=getattr(stats, field))
        yield GaugeMetricFamily(
            "tinywasm_nats_held",
            "Messages held for NATS to come back (at most --nats-buffer).",
            value=stats.held,
        )
        yield GaugeMetricFamily(
            "tinywasm_nats_subjects", "NATS subjects subscribed to now.", value=stats.subjects
        )


class FleetCollector(Collector):
    """One worker's view of the fleet, as ``/api/modules``' ``fleet`` section shows it."""

    def __init__(
        self,
        fleet: Fleet,
        forwarder: NatsForwarder | None = None,
        handover: HandoverService | None = None,
    ) -> None:
        self._fleet = fleet
        self._forwarder = forwarder
        self._handover = handover

    def collect(self) -> Iterator[Metric]:
        fleet = self._fleet
        mine = fleet.beat()
        info = GaugeMetricFamily(
            "tinywasm_fleet_worker",
            "1, labelled with this worker's name (join on it to name a scrape's worker).",
            labels=["worker"],
        )
        info.add_metric([fleet.me], 1)
        yield info
        yield GaugeMetricFamily(
            "tinywasm_fleet_live_workers",
            "Workers this one hears (itself included) that are not leaving.",
            value=len(fleet.table.live()),
        )
        states = {state: 0 for state in MemberState}
        states[MemberState.LEAVING if mine.leaving else MemberState.LIVE] += 1
        for member in list(fleet.table.members.values()):
            states[member.state] += 1
        workers = GaugeMetricFamily(
            "tinywasm_fleet_workers",
            "Workers this one hears (itself included), by state.",
            labels=["state"],
        )
        for state, count in states.items():
            workers.add_metric([state.value], count)
        yield workers
        yield GaugeMetricFamily(
            "tinywasm_fleet_owned_modules",
            "Single-owner modules this worker runs (it is their owner).",
            value=len(mine.owned),
        )
        yield GaugeMetricFamily(
            "tinywasm_fleet_replica_modules",
            'Modules this worker runs as every worker does (replicas = "all", middlewares).',
            value=len(mine.replicas),
        )
        placed = CounterMetricFamily(
            "tinywasm_fleet_placements",
            "Modules started here because their owner died or left (started), and stopped "
            "or handed back here because their owner came back (stopped).",
            labels=["action"],
        )
        placed.add_metric(["started"], fleet.taken_over)
        placed.add_metric(["stopped"], fleet.released)
        yield placed
        yield from self._forwards()
        yield from self._handovers()
        lost = CounterMetricFamily(
            "tinywasm_fleet_lost_messages",
            "Bus messages published in this worker for a module while no worker ran it "
            "(its worker died, no other had started it yet): lost.",
            labels=["module"],
        )
        for name, count in sorted(fleet.lost().items()):
            lost.add_metric([name], count)
        yield lost

    def _forwards(self) -> Iterator[Metric]:
        forwarder = self._forwarder
        yield CounterMetricFamily(
            "tinywasm_fleet_forwarded_requests",
            "HTTP requests sent to the worker that runs the module.",
            value=0 if forwarder is None else forwarder.forwarded,
        )
        yield CounterMetricFamily(
            "tinywasm_fleet_lost_forwards",
            "Forwarded HTTP requests that got no answer in time (lost with their worker).",
            value=0 if forwarder is None else forwarder.lost,
        )

    def _handovers(self) -> Iterator[Metric]:
        handover = self._handover
        moves = CounterMetricFamily(
            "tinywasm_fleet_handovers",
            "Live moves of a module with its state, into this worker (in) and out of it (out).",
            labels=["direction"],
        )
        moves.add_metric(["in"], 0 if handover is None else handover.moved_in)
        moves.add_metric(["out"], 0 if handover is None else handover.moved_out)
        yield moves
        failed = CounterMetricFamily(
            "tinywasm_fleet_failed_handovers",
            "Moves that lost the module's state: its commit failed after the cut-over here "
            "(out), or the giver died or went silent before committing (in).",
            labels=["direction"],
        )
        failed.add_metric(["in"], 0 if handover is None else handover.abandoned_in)
        failed.add_metric(["out"], 0 if handover is None else handover.failed_out)
        yield failed
        yield CounterMetricFamily(
            "tinywasm_fleet_handover_lost_messages",
            "Messages lost in moves: queued on a module whose commit failed, or past the "
            "bound of what a taker keeps aside.",
            value=0 if handover is None else handover.lost_messages,
        )


def new_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry with our collectors and prometheus-client's process, platform and GC ones."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """The ``GET /metrics`` handler: Prometheus' text format."""

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
