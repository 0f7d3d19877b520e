"""A worker that dies in the middle of a live handover: the module still runs exactly once.

Real processes on loopback: a nats-server of the test's own, the supervisor with
``--workers 3`` joined to it. The module is a WAT *ticker*: it counts the messages on
``tick``, publishes each new count on ``tick.count`` (8 bytes, little-endian) and
hands the count over (``save_state``). A ``spin`` message makes it loop until its
call deadline (3 s) traps it: while it spins, the worker giving it away waits for
it to drain, so the test can kill a worker between the taker's prepare and the
giver's commit, every time.

The supervisor is paused (SIGSTOP) meanwhile, so that nobody is restarted and the
survivors alone decide; when it resumes, the workers come back and the module goes
home with its (new) count.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.nats import STAMP_PREFIX
from tests.scenarios.cluster import (
    NEEDS_NATS,
    START,
    Cluster,
    ClusterFactory,
    answers_by_worker,
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

__all__ = ["http", "start_cluster"]  # fixtures, used by name

pytestmark = [
    pytest.mark.timeout(300),
    NEEDS_NATS,
]

WORKERS = workers_of(3)
NAME = "ticker"
MOVE = 60.0  # seconds for a move or a restart on a busy machine
# Well under the 40 s a taker waits for a commit from a giver that is alive: a dead
# giver is noticed by the heartbeats (1 s) instead.
NOTICED = 20.0

TICKER = """
  (global $count (mut i64) (i64.const 0))
  (func (export "init") (call $subscribe {tick} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (if (i32.and (i32.eq (local.get $n) (i32.const 4))
                 (i32.eq (i32.load (local.get $p)) (i32.const 0x6e697073)))  ;; "spin"
      (then (call $publish {spinning} {spinning})
            (loop $forever (br $forever))))
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (i64.store (i32.const 512) (global.get $count))
    (call $publish {count} (i32.const 512) (i32.const 8)))
  (func (export "save_state") (result i64)
    (i64.store (i32.const 448) (global.get $count))
    (i64.or (i64.shl (i64.const 448) (i64.const 32)) (i64.const 8)))
  (func (export "restore_state") (param $p i32) (param $n i32) (result i32)
    (if (i32.eq (local.get $n) (i32.const 8))
      (then (global.set $count (i64.load (local.get $p))) (return (i32.const 0))))
    (i32.const 1))
"""


class Ticks:
    """The test's NATS client: stamped ticks out, counts and spin notices in."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.counts: list[int] = []
        self.spinning = 0
        self.sent = 0

    async def on_count(self, msg: Msg) -> None:
        self.counts.append(int.from_bytes(msg.data, "little"))

    async def on_spinning(self, _msg: Msg) -> None:
        self.spinning += 1

    async def send(self, payload: bytes = b"+1", count: int = 1) -> None:
        for _ in range(count):
            self.sent += 1
            await self.nc.publish("tw.t.tick", payload, reply=f"{STAMP_PREFIX}test.{self.sent}")
        await self.nc.flush()

    async def counted(self, values: list[int]) -> None:
        """The next counts seen are exactly `values` (nothing before them is left)."""
        await eventually(lambda: len(self.counts) >= len(values), f"counts {values}", timeout=MOVE)
        got, self.counts = self.counts, []
        assert got == values, got


@pytest.fixture
def nats_server() -> Iterator[NatsServerProcess]:
    with NatsServerProcess(name="handover-faults") as server:
        yield server


@pytest.fixture
async def ticks(nats_server: NatsServerProcess) -> AsyncIterator[Ticks]:
    nc = await nats.connect(nats_server.url)
    client = Ticks(nc)
    await nc.subscribe("tw.t.tick.count", cb=client.on_count)
    await nc.subscribe("tw.t.spinning", cb=client.on_spinning)
    await nc.flush()
    yield client
    await nc.close()


async def fleet_of(http: aiohttp.ClientSession, base: str, workers: int) -> dict[str, Any]:
    answers = await answers_by_worker(http, f"{base}/api/modules", workers=workers)
    return {w: json.loads(text)["fleet"] for w, (_status, text) in answers.items()}


async def runs_once_on(
    http: aiohttp.ClientSession, base: str, where: str, live: tuple[str, ...]
) -> bool:
    """Every live worker sees the ticker on `where` and nowhere else."""
    for fleet in (await fleet_of(http, base, len(live))).values():
        if fleet["live"] != list(live):
            return False
        on = [w for w, row in fleet["workers"].items() if NAME in row["owned"]]
        if on != [where]:
            return False
    return True


async def home_again(
    cluster: Cluster, http: aiohttp.ClientSession, base: str, giver: str, *restarted: str
) -> None:
    """The supervisor restarted the workers that stopped; the ticker is home, once."""
    for worker in (giver, *restarted):
        await eventually(
            cluster.logged(rf"\[{worker}\] serving", times=2), f"{worker} back", timeout=START
        )
    await eventually(
        lambda: runs_once_on(http, base, giver, WORKERS), "the ticker home again", timeout=MOVE
    )


async def moving(
    start_cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    nats_server: NatsServerProcess,
    ticks: Ticks,
) -> tuple[Cluster, str, str, str, str]:
    """Three workers; the ticker counted to 10 on its owner, then spinning there, the
    supervisor paused, SIGTERM to the owner, and the taker staged: the move is half
    done. Returns the cluster, its URL, the giver, the taker and the third worker."""
    giver = owner(NAME, WORKERS)
    others = tuple(w for w in WORKERS if w != giver)
    taker = owner(NAME, others)
    third = next(w for w in others if w != taker)
    cluster = start_cluster(
        "--nats",
        nats_server.url,
        "--drain-timeout",
        "10",
        workers=3,
        modules={
            NAME: binary(
                guest(TICKER, {"tick": "tick", "count": "tick.count", "spinning": "spinning"})
            )
        },
        limits=f"[{NAME}]\ncall_timeout = 3.0\n",
    )
    base = await serving(cluster, 3)
    await eventually(lambda: runs_once_on(http, base, giver, WORKERS), "the ticker on its owner")
    await ticks.send(count=10)
    await ticks.counted(list(range(1, 11)))
    await ticks.send(b"spin")
    await eventually(lambda: ticks.spinning == 1, "the ticker to spin", timeout=MOVE)
    os.kill(cluster.proc.pid, signal.SIGSTOP)
    os.kill(cluster.pid_of(giver), signal.SIGTERM)
    await eventually(
        cluster.logged(rf"\[{taker}\] .*module {NAME}: staged here for its move from {giver}"),
        "the taker to stage the ticker",
        timeout=MOVE,
    )
    return cluster, base, giver, taker, third


async def test_the_taker_dies_in_the_middle_of_a_move(
    start_cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    nats_server: NatsServerProcess,
    ticks: Ticks,
) -> None:
    cluster, base, giver, taker, third = await moving(start_cluster, http, nats_server, ticks)
    try:
        os.kill(cluster.pid_of(taker), signal.SIGKILL)
        # The giver's commit finds nobody: it says what is lost, and stops its copy.
        await eventually(
            cluster.logged(
                rf"\[{giver}\] .*module {NAME}: the move to {taker} failed after the cut-over"
                r".*lost are its state \(8 bytes\) and 0 message\(s\)",
            ),
            "the giver to log the failed move",
            timeout=MOVE,
        )
        # The third worker, alone now, owns it and starts it from its file: once.
        await eventually(
            lambda: runs_once_on(http, base, third, (third,)),
            "the ticker on the third worker",
            timeout=MOVE,
        )
        await ticks.send(count=5)
        await ticks.counted([1, 2, 3, 4, 5])  # its state was lost with the move: counted again
        metrics = (await metrics_of_each_worker(http, base, workers=1))[third]
        assert metrics[sample_key("tinywasm_fleet_placements_total", action="started")] == 1
    finally:
        os.kill(cluster.proc.pid, signal.SIGCONT)
    # The supervisor restarts both; the ticker goes home with the count it has now.
    await home_again(cluster, http, base, giver, taker)
    await ticks.send(count=2)
    await ticks.counted([6, 7])
    assert cluster.count(r"died with signal 9") == 1, cluster.log()


async def test_the_giver_dies_in_the_middle_of_a_move(
    start_cluster: ClusterFactory,
    http: aiohttp.ClientSession,
    nats_server: NatsServerProcess,
    ticks: Ticks,
) -> None:
    cluster, base, giver, taker, third = await moving(start_cluster, http, nats_server, ticks)
    try:
        await ticks.send(count=3)  # kept aside by the taker's fence
        os.kill(cluster.pid_of(giver), signal.SIGKILL)
        # The taker does not wait out its 40 s commit timeout: the heartbeats say the
        # giver is dead, and it opens the ticker without its state, with what it kept.
        await eventually(
            cluster.logged(
                rf"\[{taker}\] .*module {NAME}: {giver} died before its commit: it starts "
                r"here without its state, with the 3 message\(s\) kept aside",
            ),
            "the taker to open the ticker",
            timeout=NOTICED,
        )
        await ticks.counted([1, 2, 3])
        live = tuple(sorted((taker, third)))
        await eventually(lambda: runs_once_on(http, base, taker, live), "the ticker on the taker")
        await ticks.send(count=2)
        await ticks.counted([4, 5])
        metrics = await metrics_of_each_worker(http, base, workers=2)
        failed = sample_key("tinywasm_fleet_failed_handovers_total", direction="in")
        assert {w: m[failed] for w, m in metrics.items()} == {taker: 1, third: 0}
    finally:
        os.kill(cluster.proc.pid, signal.SIGCONT)
    await home_again(cluster, http, base, giver)
    await ticks.send(count=2)
    await ticks.counted([6, 7])
