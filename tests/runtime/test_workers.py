"""Every module's mailbox on a few shared worker threads, with real modules in wasmtime.

An idle module costs no thread; a module's items still run in order and one at a
time; a slow module holds one worker for one item at a time, so it delays the others
by at most its call deadline; loading many modules starts a bounded number of tasks
and threads.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus import Bus
from tests.conftest import Broadcasts, HostFactory
from tests.support import eventually
from tests.wat import guest, write
from tinywasm_wasi.policy.limits import Limits
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.runtime.workers import WorkerPool
from tinywasm_wasi.supervisor.host import ModuleHost

pytestmark = pytest.mark.timeout(180)

RELAY = """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
"""
# Spins until its call deadline interrupts it.
SPIN = """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (loop $forever (br $forever)))
"""


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(3, name="test-worker")
    yield workers
    workers.close(timeout=5)


def relays(directory: Path, count: int) -> None:
    for i in range(count):
        write(directory, f"r{i}", guest(RELAY, {"t": f"in.{i}", "out": f"out.{i}"}))


async def test_each_module_gets_its_messages_in_order_while_many_run_at_once(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts, pool: WorkerPool
) -> None:
    modules, messages = 30, 200
    relays(tmp_path, modules)
    host = await make_host(tmp_path, runtime=Runtime(workers=pool))
    assert len(host.modules) == modules

    def publish(first: int) -> None:  # two publishers, interleaving modules
        for n in range(messages):
            for i in range(first, modules, 2):
                host.bus.publish(f"in.{i}", str(n).encode())

    await asyncio.gather(*(asyncio.to_thread(publish, first) for first in (0, 1)))
    for i in range(modules):
        got = await broadcasts.wait_for(f"out.{i}", messages, timeout=60)
        assert [int(p) for p in got] == list(range(messages)), f"module r{i} out of order"
    assert pool.threads <= pool.size


async def test_slow_modules_delay_a_fast_one_by_at_most_one_call_each(
    tmp_path: Path, pool: WorkerPool
) -> None:
    """Two modules spin to their deadline on every message, three messages each, on a pool
    of two threads; a fast module's message comes in behind them. Modules take turns one
    item at a time, so the fast one runs before either slow one starts its second call."""
    two = WorkerPool(2, name="test-pair")
    for i in range(2):
        write(tmp_path, f"slow{i}", guest(SPIN, {"t": f"slow.{i}"}))
    write(tmp_path, "fast", guest(RELAY, {"t": "fast", "out": "fast.out"}))
    seen: list[tuple[int, int]] = []  # slow modules' finished calls when the fast one answered
    done = threading.Event()
    host: ModuleHost | None = None

    def broadcast(topic: str, _payload: bytes) -> None:  # on a worker, in the fast module's call
        assert host is not None
        slow = [host.modules[f"slow{i}"].counters.interrupted for i in range(2)]
        seen.append((slow[0], slow[1]))
        done.set()

    host = ModuleHost(
        Runtime(workers=two),
        Bus(),
        broadcast,
        mailbox_size=100,
        drain_timeout=1.0,
        limits=Limits(call_timeout=0.3),
    )
    try:
        await host.load_dir(tmp_path)
        for _ in range(3):
            for i in range(2):
                host.bus.publish(f"slow.{i}", b"spin")
        host.bus.publish("fast", b"hello")
        assert await asyncio.to_thread(done.wait, 30), "the fast module never answered"
        assert seen[0][0] <= 1 and seen[0][1] <= 1, (
            f"calls the slow modules finished before the fast one ran: {seen[0]}"
        )
        slow = [host.modules[f"slow{i}"] for i in range(2)]
        await eventually(
            lambda: all(m.counters.interrupted == 3 for m in slow),
            "each slow call to be interrupted at its deadline",
            timeout=30,
        )
        assert two.threads <= 2
    finally:
        await host.stop()
        two.close(timeout=5)


async def test_hundreds_of_modules_use_a_bounded_number_of_threads_and_tasks(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts, pool: WorkerPool
) -> None:
    modules = 300
    relays(tmp_path, modules)
    threads_before = threading.active_count()
    tasks_before = len(asyncio.all_tasks())
    peak = {"threads": 0, "tasks": 0}
    loading = True

    async def sample() -> None:
        while loading:
            peak["threads"] = max(peak["threads"], threading.active_count())
            peak["tasks"] = max(peak["tasks"], len(asyncio.all_tasks()))
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        host = await make_host(tmp_path, runtime=Runtime(workers=pool))
    finally:
        loading = False
        await sampler
    assert len(host.modules) == modules
    # Compiling runs in asyncio's default executor, which has its own bound.
    executor = min(32, (os.cpu_count() or 1) + 4)
    assert peak["threads"] <= threads_before + pool.size + executor + 2, peak
    # Starters, not a task per file (the sampler is one of them).
    assert peak["tasks"] <= tasks_before + host.load_concurrency + 2, peak
    for i in range(modules):
        host.bus.publish(f"in.{i}", b"x")
    await eventually(
        lambda: all(broadcasts.on(f"out.{i}") for i in range(modules)),
        "every module to answer",
        timeout=60,
    )
    # Idle, loaded and answering: the pool's threads, not one per module.
    assert threading.active_count() <= threads_before + pool.size + executor
    assert pool.threads <= pool.size


async def test_a_closed_pool_ends_its_threads_and_starts_again_on_new_work(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    own = WorkerPool(2, name="test-restart")
    relays(tmp_path, 3)
    host = await make_host(tmp_path, runtime=Runtime(workers=own))
    host.bus.publish("in.0", b"a")
    await broadcasts.wait_for("out.0", 1)
    own.close(timeout=5)
    await eventually(lambda: own.threads == 0, "the pool's threads to end")
    host.bus.publish("in.1", b"b")
    await broadcasts.wait_for("out.1", 1)
    assert 1 <= own.threads <= 2
    own.close(timeout=5)
