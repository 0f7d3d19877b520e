"""Membership from heartbeats: real workers, one killed with SIGKILL.

The supervisor is paused (SIGSTOP) while the worker dies, so it cannot restart it:
the survivors alone must notice the silence and start its modules from their own
files. Then the supervisor resumes, restarts the worker, and its modules move back.
Times are measured in bench/workers.py, not asserted here. What is published for
a module while it runs nowhere is lost and counted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.scenarios.cluster import (
    EXAMPLES,
    NEEDS_NATS,
    PICK_TRIES,
    START,
    ClusterFactory,
    answers_by_worker,
    chat_on_each_worker,
    chat_works,
    http,
    metrics_of_each_worker,
    sample_key,
    serving,
    start_cluster,
    workers_of,
)
from tests.support import eventually
from tinywasm_wasi.policy.placement import owner
from tinywasm_wasi.server import WORKER_HEADER

__all__ = ["http", "start_cluster"]  # fixtures, used by name

pytestmark = [
    pytest.mark.timeout(300),
    NEEDS_NATS,
]

WORKERS = workers_of(3)
SINGLE = ("chat", "echo")  # the single-owner example modules (echo_http runs everywhere)


async def fleets(http: aiohttp.ClientSession, base: str, workers: int) -> dict[str, Any]:
    """The ``fleet`` of /api/modules, as each of `workers` workers answers it."""
    answers = await answers_by_worker(http, f"{base}/api/modules", workers=workers)
    return {worker: json.loads(text)["fleet"] for worker, (_status, text) in answers.items()}


async def fleet_of(http: aiohttp.ClientSession, base: str, worker: str) -> dict[str, Any]:
    """The ``fleet`` of /api/modules as `worker` answers it (new connections until it does)."""
    for _ in range(PICK_TRIES):
        async with http.get(f"{base}/api/modules") as response:
            if response.headers[WORKER_HEADER] == worker:
                fleet: dict[str, Any] = json.loads(await response.text())["fleet"]
                return fleet
    raise AssertionError(f"{PICK_TRIES} requests, none answered by {worker}")


def runs(fleet: dict[str, Any]) -> dict[str, list[str]]:
    """module -> the workers that say they run it alone."""
    where: dict[str, list[str]] = {}
    for worker, row in fleet["workers"].items():
        for name in row["owned"]:
            where.setdefault(name, []).append(worker)
    return where


async def test_a_killed_workers_modules_start_on_the_survivors_and_come_back(
    start_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = start_cluster(workers=3)
    base = await serving(cluster, 3)
    victim = owner("echo", WORKERS)
    survivors = tuple(w for w in WORKERS if w != victim)
    placed = {name: owner(name, WORKERS) for name in SINGLE}
    moved = {name: owner(name, survivors) for name in SINGLE if placed[name] == victim}

    # /api/modules on any worker shows the whole fleet: who is live and who runs what.
    async def fleet_as_placed() -> bool:
        seen = await fleets(http, base, 3)
        return all(
            f["live"] == list(WORKERS) and runs(f) == {n: [w] for n, w in placed.items()}
            for f in seen.values()
        )

    await eventually(fleet_as_placed, "every worker to show the same fleet", timeout=30)
    sockets = await chat_on_each_worker(http, base, workers=3)

    # The supervisor is paused: only the survivors can bring the modules back.
    supervisor = cluster.proc.pid
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(cluster.pid_of(victim), signal.SIGKILL)
        for name, heir in moved.items():
            await eventually(
                cluster.logged(rf"\[{heir}\] .*loaded module {name}\b"),
                f"{heir} to start {name}",
                timeout=60,
            )
        # Both survivors agree: the victim is gone, and who runs what now.
        expected = {n: [moved.get(n, w)] for n, w in placed.items()}

        async def survivors_agree() -> bool:
            seen = await fleets(http, base, 2)
            return all(f["live"] == list(survivors) and runs(f) == expected for f in seen.values())

        await eventually(survivors_agree, "the survivors to agree on the fleet", timeout=30)
        for survivor in survivors:
            assert cluster.count(rf"\[{survivor}\] .*worker\(s\) [\w, -]*\b{victim}\b") >= 1
        # It answers from the survivors, and their browsers never noticed.
        for worker, (status, text) in (
            await answers_by_worker(http, f"{base}/m/echo", workers=2)
        ).items():
            assert (status, text) == (200, "echo: GET /m/echo\n"), worker
        live = {w: sockets[w] for w in survivors}
        assert not any(ws.closed for ws in live.values())
        await chat_works(live, "while it is gone")
        # Each survivor's /metrics says the same as its /api/modules fleet section.
        metrics = await metrics_of_each_worker(http, base, workers=2)
        for survivor, m in metrics.items():
            owned = [n for n, w in expected.items() if w == [survivor]]
            assert m[sample_key("tinywasm_fleet_worker", worker=survivor)] == 1
            assert m[sample_key("tinywasm_fleet_live_workers")] == 2, survivor
            assert m[sample_key("tinywasm_fleet_workers", state="live")] == 2, survivor
            assert m[sample_key("tinywasm_fleet_workers", state="leaving")] == 0, survivor
            assert m[sample_key("tinywasm_fleet_owned_modules")] == len(owned), survivor
            assert m[sample_key("tinywasm_fleet_replica_modules")] == 1, survivor  # echo_http
            # (a start-up race between the workers may have placed one more)
            started = sum(1 for heir in moved.values() if heir == survivor)
            starts = sample_key("tinywasm_fleet_placements_total", action="started")
            assert m[starts] >= started, survivor
            assert m[sample_key("tinywasm_nats_connected")] == 1, survivor
            # /m/echo was answered through the survivor that does not run it.
            forwarded = m[sample_key("tinywasm_fleet_forwarded_requests_total")]
            assert (forwarded >= 1) is ("echo" not in owned), (survivor, forwarded)
            assert m[sample_key("tinywasm_fleet_lost_forwards_total")] == 0, survivor
    finally:
        os.kill(supervisor, signal.SIGCONT)

    # The supervisor restarts it; its modules return to it, each stopped on the heir first.
    await eventually(
        lambda: cluster.count(rf"\[{victim}\] serving") >= 2, "the restart", timeout=START
    )
    for name, heir in moved.items():
        await eventually(
            cluster.logged(rf"\[{heir}\] .*module {name}: stopping it here"),
            f"{heir} to hand {name} back",
            timeout=60,
        )
    await eventually(fleet_as_placed, "the fleet as placed again", timeout=60)
    await sockets[victim].close()


async def test_what_is_published_for_a_module_that_runs_nowhere_is_counted(
    start_cluster: ClusterFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # chat's file is deleted after start-up (the cluster runs with --no-watch): when
    # its worker dies, the survivor cannot start it, so chat runs nowhere, and what the
    # survivor's browser publishes on chat is lost: counted in the fleet's lost_unowned.
    cluster = start_cluster(workers=2)
    base = await serving(cluster, 2)
    names = workers_of(2)
    victim = owner("chat", names)
    (survivor,) = [w for w in names if w != victim]
    sockets = await chat_on_each_worker(http, base)
    await chat_works(sockets, "before")

    async def survivor_fleet() -> dict[str, Any]:
        return await fleet_of(http, base, survivor)

    async def heard_chat_patterns() -> bool:  # the victim's beat, with chat's patterns
        return "chat" in (await survivor_fleet())["workers"][victim]["owned"]

    await eventually(heard_chat_patterns, "the survivor to hear chat's owner", timeout=30)
    chat_file = tmp_path / "modules" / "chat.wasm"
    chat_file.unlink()
    supervisor = cluster.proc.pid
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(cluster.pid_of(victim), signal.SIGKILL)

        async def chat_unowned() -> bool:
            fleet = await survivor_fleet()
            return fleet["live"] == [survivor] and fleet["unowned"] == ["chat"]

        await eventually(chat_unowned, "chat to run nowhere", timeout=60)
        for i in range(5):
            await sockets[survivor].send_bytes(f"lost {i}".encode())

        async def five_lost() -> bool:
            return dict((await survivor_fleet())["lost_unowned"]) == {"chat": 5}

        await eventually(five_lost, "5 messages counted", timeout=30)
        async with http.get(f"{base}/metrics") as response:  # a survivor answers
            assert 'tinywasm_fleet_lost_messages_total{module="chat"} 5.0' in (
                await response.text()
            )
        # The file comes back before the worker: chat runs again, on its owner.
        shutil.copy(EXAMPLES / "chat.wasm", chat_file)
    finally:
        os.kill(supervisor, signal.SIGCONT)
    await eventually(
        cluster.logged(rf"\[{survivor}\] .*module chat runs again; 5 message\(s\)"),
        "the loss to be logged when chat runs again",
        timeout=START,
    )
    fleet = await survivor_fleet()
    assert fleet["unowned"] == [] and fleet["lost_unowned"] == {"chat": 5}
