"""Traffic across workers while the fleet changes: hot swaps, and a NATS server that restarts.

Real processes on loopback: the supervisor with ``--workers 2``, a real nats-server,
real WebSocket clients. The module is a WAT *tally*: it counts the messages on its
input topic and broadcasts each one on its output topic behind the count (8 bytes,
little-endian), and hands the count to its next version (``save_state``). Each
browser numbers what it sends (``label:i``), so a watcher sees, per publisher, every
number once and in order, and the counts 1..N in order, only if nothing was lost,
handled twice or reordered, and the count moved with every swap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.scenarios.cluster import (
    NEEDS_NATS,
    PICK_TRIES,
    ClusterFactory,
    health_of_each_worker,
    http,
    metrics_of_each_worker,
    sample_key,
    serving,
    start_cluster,
    workers_of,
)
from tests.support import eventually
from tests.wat import binary, guest
from tinywasm_wasi.cluster.nats_server import NatsServerProcess
from tinywasm_wasi.policy.placement import owner
from tinywasm_wasi.server import WORKER_HEADER

__all__ = ["http", "start_cluster"]  # fixtures, used by name

pytestmark = [
    pytest.mark.timeout(300),
    NEEDS_NATS,
]

WORKERS = workers_of(2)
FLOW = 60.0  # seconds for the traffic to drain through a busy machine
PACE = 0.004  # seconds between two sends of one publisher: a steady stream, not a flood

TALLY = """
  (global $count (mut i64) (i64.const 0))
  (func (export "init") (call $subscribe {src} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (i64.store (i32.const 512) (global.get $count))
    (memory.copy (i32.const 520) (local.get $p) (local.get $n))
    (call $ws_broadcast {dst} (i32.const 512) (i32.add (local.get $n) (i32.const 8))))
  (func (export "save_state") (result i64)
    (i64.store (i32.const 448) (global.get $count))
    (i64.or (i64.shl (i64.const 448) (i64.const 32)) (i64.const 8)))
  (func (export "restore_state") (param $p i32) (param $n i32) (result i32)
    (if (i32.eq (local.get $n) (i32.const 8))
      (then (global.set $count (i64.load (local.get $p))) (return (i32.const 0))))
    (i32.const 1))
  (func (export "version") (result i32) (i32.const VERSION))
"""
# Publishes every message on its input topic to `dst`: a module as a publisher.
PUMP = """
  (func (export "init") (call $subscribe {src} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $publish {dst} (local.get $p) (local.get $n)))
"""


def tally(src: str, dst: str, version: int = 0) -> bytes:
    return binary(guest(TALLY.replace("VERSION", str(version)), {"src": src, "dst": dst}))


def pump(src: str, dst: str) -> bytes:
    return binary(guest(PUMP, {"src": src, "dst": dst}))


def named_for(worker: str, stem: str) -> str:
    """A module name (`stem`, `stem1`, ...) whose owner among both workers is `worker`."""
    return next(
        n for n in (stem, *(f"{stem}{i}" for i in range(1, 50))) if owner(n, WORKERS) == worker
    )


@dataclass
class Watcher:
    """A browser on a tally's output topic: what it got, as (count, label, number)."""

    ws: aiohttp.ClientWebSocketResponse
    got: list[tuple[int, str, int]] = field(default_factory=list)

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.BINARY:
                break
            data = bytes(msg.data)
            label, _, number = data[8:].decode().partition(":")
            self.got.append((int.from_bytes(data[:8], "little"), label, int(number)))

    def numbers(self, label: str) -> list[int]:
        return [n for _c, lab, n in self.got if lab == label]

    def last(self, label: str) -> int:
        numbers = self.numbers(label)
        return numbers[-1] if numbers else -1


@dataclass
class Publisher:
    """A browser sending ``label:0``, ``label:1``, ... at a steady pace until stopped."""

    ws: aiohttp.ClientWebSocketResponse
    label: str
    limit: int
    sent: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and self.sent < self.limit:
            await self.ws.send_bytes(f"{self.label}:{self.sent}".encode())
            self.sent += 1
            await asyncio.sleep(PACE)  # pacing the stream, not waiting for an event


async def socket_on(
    http: aiohttp.ClientSession, url: str, worker: str
) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket to `url` that the kernel gave to `worker` (the others are closed)."""
    for _ in range(PICK_TRIES):
        ws = await http.ws_connect(url)
        if ws._response.headers[WORKER_HEADER] == worker:
            return ws
        await ws.close()
    raise AssertionError(f"{PICK_TRIES} connections to {url}, none on {worker}")


@contextlib.asynccontextmanager
async def reading(*watchers: Watcher) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(w.read()) for w in watchers]
    try:
        yield
    finally:
        for w in watchers:
            await w.ws.close()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def streaming(*publishers: Publisher) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The publishers send until the yielded `stop()` returns (or the block ends)."""
    done = asyncio.Event()
    tasks = [asyncio.create_task(p.run(done)) for p in publishers]

    async def stop() -> None:
        done.set()
        await asyncio.gather(*tasks)  # a publisher that failed fails the test here

    try:
        yield stop
    finally:
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)


def exactly_once_in_order(watcher: Watcher, publishers: list[Publisher], where: str) -> None:
    """Every number of every publisher once, in order; the counts 1..N in order."""
    for p in publishers:
        assert watcher.numbers(p.label) == list(range(p.sent)), (where, p.label, p.sent)
    counts = [c for c, _l, _n in watcher.got]
    assert counts == list(range(1, len(counts) + 1)), (where, counts[:50])


@pytest.fixture
def nats_server() -> Iterator[NatsServerProcess]:
    with NatsServerProcess(name="fleet-traffic") as server:
        yield server


async def test_thirty_swaps_of_a_module_fed_from_the_other_worker_lose_nothing(
    start_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # tally runs on `home`; everything that feeds it comes from `away`: two browsers
    # there, and a pump module there that a third browser ticks.
    home = owner("tally", WORKERS)
    away = next(w for w in WORKERS if w != home)
    pump_name = named_for(away, "pump")
    cluster = start_cluster(
        "--ws-inbound",
        "tally.in,pump.tick",
        "--swap-probation",
        "0.01",
        modules={"tally": tally("tally.in", "tally.out"), pump_name: pump("pump.tick", "tally.in")},
        limits="",
    )
    base = await serving(cluster, 2)
    ws_base = base.replace("http", "ws", 1)
    watchers = [Watcher(await socket_on(http, f"{ws_base}/ws?topic=tally.out", w)) for w in WORKERS]
    publishers = [
        Publisher(await socket_on(http, f"{ws_base}/ws?topic=tally.in", away), "b1", 4000),
        Publisher(await socket_on(http, f"{ws_base}/ws?topic=tally.in", away), "b2", 4000),
        Publisher(await socket_on(http, f"{ws_base}/ws?topic=pump.tick", away), "pump", 4000),
    ]
    assert cluster.folder is not None
    folder = cluster.folder
    async with reading(*watchers), streaming(*publishers) as stop:
        await eventually(
            lambda: all(w.last("pump") >= 10 for w in watchers),
            "traffic before the swaps",
            timeout=FLOW,
        )
        outcomes = []
        for i in range(30):
            (folder / "tally.wasm").write_bytes(tally("tally.in", "tally.out", version=(i + 1) % 2))
            # Any worker takes the reload: the other relays it to the owner over NATS.
            async with http.post(f"{base}/api/modules/tally/reload") as response:
                assert response.status == 200, await response.text()
                outcomes.append(((await response.json())["result"] or {}).get("outcome"))
        await stop()
        for w in watchers:
            await eventually(
                lambda w=w: len(w.got) >= sum(p.sent for p in publishers),
                "every message through the tally",
                timeout=FLOW,
            )
    assert outcomes == ["swapped"] * 30, outcomes
    for worker, w in zip(WORKERS, watchers, strict=True):
        exactly_once_in_order(w, publishers, worker)
    assert min(p.sent for p in publishers) > 30, [p.sent for p in publishers]
    swaps = sample_key("tinywasm_module_swaps_total", module="tally", result="swapped")
    metrics = await metrics_of_each_worker(http, base)
    assert metrics[home][swaps] == 30, metrics[home].get(swaps)
    assert swaps not in metrics[away]


async def test_nats_server_restart_under_load_keeps_local_delivery_and_resumes_remote(
    start_cluster: ClusterFactory, http: aiohttp.ClientSession, nats_server: NatsServerProcess
) -> None:
    # A tally on each worker, each fed by a browser on its own worker (local delivery)
    # and `x`'s also by a browser on the other worker (remote delivery, over NATS).
    x, y = WORKERS
    x_name, y_name = named_for(x, "tally"), named_for(y, "tally")
    cluster = start_cluster(
        "--nats",
        nats_server.url,
        "--ws-inbound",
        "x.in,y.in",
        modules={x_name: tally("x.in", "x.out"), y_name: tally("y.in", "y.out")},
        limits="",
    )
    base = await serving(cluster, 2)
    assert cluster.count("embedded nats-server") == 0  # --nats joins ours
    ws_base = base.replace("http", "ws", 1)
    on_x = Watcher(await socket_on(http, f"{ws_base}/ws?topic=x.out", x))
    on_y = Watcher(await socket_on(http, f"{ws_base}/ws?topic=y.out", y))
    remote = Watcher(await socket_on(http, f"{ws_base}/ws?topic=x.out", y))  # x's, on y
    local_x = Publisher(await socket_on(http, f"{ws_base}/ws?topic=x.in", x), "lx", 20_000)
    local_y = Publisher(await socket_on(http, f"{ws_base}/ws?topic=y.in", y), "ly", 20_000)
    crossing = Publisher(await socket_on(http, f"{ws_base}/ws?topic=x.in", y), "rx", 20_000)

    async def all_say(word: str) -> bool:
        return all(f'"{word}"' in t for t in (await health_of_each_worker(http, base)).values())

    connected = sample_key("tinywasm_nats_connected")
    async with reading(on_x, on_y, remote), streaming(local_x, local_y, crossing) as stop:
        await eventually(lambda: remote.last("rx") >= 20, "remote delivery", timeout=FLOW)
        before = remote.last("rx")  # delivered across before the outage

        nats_server.stop()
        await eventually(lambda: all_say("degraded"), "both workers degraded", timeout=30)
        metrics = await metrics_of_each_worker(http, base)
        assert all(m[connected] == 0 for m in metrics.values()), metrics
        # Local delivery goes on while NATS is away: 100 more messages on each worker.
        sent_x, sent_y = local_x.sent, local_y.sent
        await eventually(
            lambda: on_x.last("lx") >= sent_x + 100 and on_y.last("ly") >= sent_y + 100,
            "local delivery during the outage",
            timeout=FLOW,
        )
        assert not nats_server.running

        nats_server.start()
        await eventually(lambda: all_say("ok"), "both workers ok again", timeout=60)
        resumed = crossing.sent
        await eventually(
            lambda: remote.last("rx") >= resumed + 20, "remote delivery again", timeout=FLOW
        )
        await stop()
        await eventually(
            lambda: (
                on_x.last("lx") == local_x.sent - 1
                and on_y.last("ly") == local_y.sent - 1
                and remote.last("rx") == crossing.sent - 1
            ),
            "the last messages",
            timeout=FLOW,
        )
    # Local streams: every message once, in order, through the outage.
    assert on_x.numbers("lx") == list(range(local_x.sent))
    assert on_y.numbers("ly") == list(range(local_y.sent))
    # Across: in order and never twice; what crossed before the outage and after it
    # resumed all arrived (what was held or in flight meanwhile may be lost: counted).
    numbers = remote.numbers("rx")
    assert numbers == sorted(set(numbers)), numbers
    assert set(range(before + 1)) <= set(numbers)
    assert set(range(resumed, crossing.sent)) <= set(numbers)
    metrics = await metrics_of_each_worker(http, base)
    for worker, m in metrics.items():
        assert m[connected] == 1, worker
        assert m[sample_key("tinywasm_nats_disconnects_total")] >= 1, worker
    print(
        f"sent lx {local_x.sent}, ly {local_y.sent}, rx {crossing.sent}; "
        f"rx delivered {len(numbers)}, lost {crossing.sent - len(numbers)}"
    )
