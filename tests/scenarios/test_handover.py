"""Live handover between workers: SIGTERM to one worker, and ``tinywasm restart --rolling``.

Real processes on loopback: a nats-server of the test's own, the supervisor with
``--workers 2`` joined to it, the WAT counter (it counts ``counter.inc`` messages,
publishes each new count on ``counter.value``, answers GET /m/counter with the count
and hands the count over in ``save_state``). The test publishes ``counter.inc`` on
NATS with sequence stamps (reply subject ``tw.seq.<publisher>.<n>``, as every tinywasm
process does) and watches
``counter.value``: the counts seen are exactly 1..N, once each, only if every
message was handled exactly once and the count moved with the module.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import nats
import pytest
import wasmtime
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.nats import STAMP_PREFIX
from tests.scenarios.cluster import (
    EXAMPLES,
    NEEDS_NATS,
    ROOT,
    START,
    Cluster,
    metrics_of_each_worker,
    sample_key,
    workers_of,
)
from tests.support import eventually
from tinywasm_wasi.cluster.nats_server import NatsServerProcess
from tinywasm_wasi.policy.placement import owner
from tinywasm_wasi.server import WORKER_HEADER

COUNTER_WAT = ROOT / "examples" / "wat" / "counter" / "counter.wat"
MOVE = 60.0  # seconds for a move or a restarted worker on a busy machine

pytestmark = [
    pytest.mark.timeout(420),
    NEEDS_NATS,
]


class Counts:
    """The test's NATS client: publishes stamped counter.inc, records counter.value."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.values: list[int] = []
        self.by_publisher: dict[str, list[int]] = {}
        self.sent = 0

    async def on_value(self, msg: Msg) -> None:
        value = int(msg.data)
        self.values.append(value)
        publisher = (msg.reply or "?.0").removeprefix(STAMP_PREFIX).rpartition(".")[0]
        self.by_publisher.setdefault(publisher, []).append(value)

    async def inc(self, count: int = 1) -> None:
        for _ in range(count):
            self.sent += 1
            await self.nc.publish(
                "tw.t.counter.inc", b"+1", reply=f"{STAMP_PREFIX}test.{self.sent}"
            )
        await self.nc.flush()

    async def all_counted(self) -> None:
        await eventually(
            lambda: len(self.values) >= self.sent,
            f"{self.sent} counts (seen {len(self.values)})",
            timeout=MOVE,
        )

    def check(self) -> None:
        """Each message counted exactly once; each publisher's counts in order."""
        assert sorted(self.values) == list(range(1, self.sent + 1)), self.values
        for publisher, values in self.by_publisher.items():
            assert values == sorted(values), (publisher, values)


@pytest.fixture
def nats_url() -> Iterator[str]:
    server = NatsServerProcess(name="handover-test")
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
async def counts(nats_url: str) -> AsyncIterator[Counts]:
    nc = await nats.connect(nats_url)
    watcher = Counts(nc)
    await nc.subscribe("tw.t.counter.value", cb=watcher.on_value)
    await nc.flush()
    yield watcher
    await nc.close()


@pytest.fixture
def workers() -> int:
    return 2  # a test asks for more with @pytest.mark.parametrize("workers", ...)


@pytest.fixture
def cluster(tmp_path: Path, nats_url: str, workers: int) -> Iterator[Cluster]:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "counter.wasm").write_bytes(wasmtime.wat2wasm(COUNTER_WAT.read_text()))
    shutil.copy(EXAMPLES / "echo.wasm", modules)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYWASM_")}
    env.update(TINYWASM_SERVER="wasi", TINYWASM_CACHE_DIR=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "cmd.tinywasm", "--workers", str(workers), "--port", "0"]
    command += ["--modules-dir", str(modules), "--no-watch", "--drain-timeout", "2"]
    command += ["--state-dir", str(tmp_path / "state"), "--nats", nats_url]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    running = Cluster(proc, workers)
    yield running
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    running.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def serving(cluster: Cluster) -> str:
    await eventually(
        lambda: (
            cluster.count(r"\] serving \d+ module") >= cluster.workers
            or cluster.proc.poll() is not None
        ),
        "the workers to serve",
        timeout=START,
    )
    assert cluster.proc.poll() is None, cluster.log()
    port = cluster.find(r"supervising \d+ workers on http://127\.0\.0\.1:(\d+)")[0].group(1)
    return f"http://127.0.0.1:{port}"


async def test_sigterm_to_a_worker_hands_its_module_over_with_its_state_and_back(
    cluster: Cluster, counts: Counts, http: aiohttp.ClientSession
) -> None:
    base = await serving(cluster)
    home = owner("counter", workers_of(2))
    heir = next(w for w in workers_of(2) if w != home)
    await counts.inc(10)
    await counts.all_counted()

    # SIGTERM to the counter's worker: the counter moves to the other one with its count,
    # and the stream goes on exactly once while it moves. (A worker that started well
    # before the other may have run the counter first and handed it over already: only
    # moves after this point count.)
    arrived = rf"\[{heir}\] .*module counter taken over from {home}"
    returned = rf"\[{home}\] .*module counter taken over from {heir}"
    before = cluster.count(arrived), cluster.count(returned)
    os.kill(cluster.pid_of(home), signal.SIGTERM)
    await counts.inc(20)
    await eventually(
        lambda: cluster.count(arrived) > before[0], "the counter to arrive", timeout=MOVE
    )
    await counts.inc(10)
    await counts.all_counted()
    async with http.get(f"{base}/m/counter") as response:
        assert response.status == 200, await response.text()
        assert (await response.text()).startswith("40")

    # The supervisor starts the worker again; it takes its counter back, with the count.
    await eventually(
        lambda: cluster.count(returned) > before[1], "the counter to come back", timeout=MOVE
    )
    await counts.inc(10)
    await counts.all_counted()
    counts.check()
    assert counts.values[-1] == 50
    for _ in range(20):  # either worker answers, the owner itself or through it
        async with http.get(f"{base}/m/counter") as response:
            assert response.status == 200
            assert (await response.text()).startswith("50"), cluster.log()
    # /metrics counts the moves: the heir took it in and gave it back; home (a new
    # process since its restart) took it in.
    await eventually(
        lambda: cluster.count(rf"\[{home}\] serving") >= 2, "home to listen again", timeout=MOVE
    )
    metrics = await metrics_of_each_worker(http, base)
    moves = {
        w: (
            m[sample_key("tinywasm_fleet_handovers_total", direction="in")],
            m[sample_key("tinywasm_fleet_handovers_total", direction="out")],
        )
        for w, m in metrics.items()
    }
    assert moves == {home: (1, 0), heir: (1, 1)}, moves

    # SIGHUP to the supervisor: a rolling restart of both; the count goes on from 50.
    cluster.proc.send_signal(signal.SIGHUP)
    await eventually(
        lambda: cluster.count(r"rolling restart done"), "the rolling restart", timeout=2 * MOVE
    )
    await counts.inc(10)
    await counts.all_counted()
    counts.check()
    assert counts.values[-1] == 60
    assert not cluster.find(r"died with"), cluster.log()
    # Every worker stopped cleanly (SIGTERM, then the rolling restart): none is logged
    # as dead, only as left.
    assert not cluster.find(r"silent for [0-9.]+ s: dead"), cluster.log()

    # The supervisor stops every worker: nothing is handed over then.
    moves = cluster.count(r"handed over to")
    cluster.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(cluster.proc.wait, MOVE) == 0
    assert cluster.count(r"handed over to") == moves, cluster.log()


@pytest.mark.parametrize("workers", [2, 3])
async def test_rolling_restart_loses_no_message_and_fails_no_request(
    cluster: Cluster, counts: Counts, http: aiohttp.ClientSession, tmp_path: Path, workers: int
) -> None:
    base = await serving(cluster)
    stop = asyncio.Event()
    answers: list[int] = []
    failures: list[str] = []

    async def publish() -> None:
        while not stop.is_set() and counts.sent < 5000:
            await counts.inc(5)
            await asyncio.sleep(0.01)  # a paced stream (~500/s at most), not a flood

    async def requests() -> None:
        while not stop.is_set() and len(answers) + len(failures) < 5000:
            try:
                async with http.get(f"{base}/m/counter") as response:
                    text = await response.text()
                    if response.status == 200:
                        answers.append(int(re.match(r"\d+", text).group()))  # type: ignore[union-attr]
                    else:
                        worker = response.headers.get(WORKER_HEADER)
                        failures.append(f"{response.status} from {worker}: {text.strip()}")
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))

    tasks = [asyncio.create_task(publish()), asyncio.create_task(requests())]
    await eventually(lambda: len(answers) >= 5, "some answers before the restart")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYWASM_")}
    restart = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cmd.tinywasm",
        "restart",
        "--rolling",
        "--state-dir",
        str(tmp_path / "state"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(restart.communicate(), timeout=300)
    assert restart.returncode == 0, (out, err, cluster.log())
    for worker in workers_of(workers):
        assert f"{worker}: replaced".encode() in out, out
    await counts.inc(5)  # and after it
    stop.set()
    await asyncio.gather(*tasks)
    await counts.all_counted()
    counts.check()
    assert failures == [], failures[:10]
    assert answers, "no HTTP answer at all"
    assert answers == sorted(answers), "the count went back"  # one copy, its state moved
    assert cluster.count(r"module counter taken over") >= 2, cluster.log()
    print(f"{workers} workers: {counts.sent} messages, {len(answers)} HTTP answers")
    assert not cluster.find(r"died with"), cluster.log()
