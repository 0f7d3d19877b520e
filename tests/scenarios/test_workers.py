"""``--workers 2`` as a user runs it: a supervisor, two worker processes, an embedded nats-server.

Real processes on loopback: the example modules (chat, echo, echo_http) in a folder of
their own, ``echo_http`` declared ``replicas = "all"``. The kernel spreads connections
over the workers (SO_REUSEPORT); each answer names its worker in ``X-Tinywasm-Worker``,
so the test opens connections until it has one on each.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import aiohttp
import pytest

from tests.scenarios.cluster import (
    EXAMPLES,
    NEEDS_NATS,
    PICK_TRIES,
    START,
    Cluster,
    answers_by_worker,
    chat_on_each_worker,
    chat_works,
    cluster,
    http,
    serving,
    start_cluster,
    workers_of,
)
from tests.support import eventually
from tinywasm_wasi.policy.placement import owner
from tinywasm_wasi.server import WORKER_HEADER
from tinywasm_wasi.web.relay import OWNER_HEADER

__all__ = ["cluster", "http", "start_cluster"]  # fixtures, used by name

pytestmark = [
    pytest.mark.timeout(300),
    NEEDS_NATS,
]


async def admin_by_worker(
    http: aiohttp.ClientSession, url: str, method: str = "POST", data: bytes | None = None
) -> dict[str, tuple[int, str | None, str]]:
    """`method` `url` on new connections until both workers answered: status, owner, body."""
    seen: dict[str, tuple[int, str | None, str]] = {}
    for _ in range(PICK_TRIES):
        async with http.request(method, url, data=data) as response:
            owner_header = response.headers.get(OWNER_HEADER)
            seen[response.headers[WORKER_HEADER]] = (
                response.status,
                owner_header,
                await response.text(),
            )
        if len(seen) == 2:
            return seen
    raise AssertionError(f"{PICK_TRIES} requests all went to {list(seen)}")


async def test_two_workers_share_the_port_the_chat_and_the_modules(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    base = await serving(cluster, 2)
    names = workers_of(2)
    chat_owner, echo_owner = owner("chat", names), owner("echo", names)

    # Browsers on different workers see each other's chat: the chat module runs on
    # its owner only; the other worker's browser publishes and receives over NATS.
    sockets = await chat_on_each_worker(http, base)
    await chat_works(sockets, "hello")

    # echo runs on its owner only and answers through either worker, same status and body.
    for worker, (status, text) in (await answers_by_worker(http, f"{base}/m/echo")).items():
        assert (status, text) == (200, "echo: GET /m/echo\n"), worker
    # echo_http (replicas = "all") runs in both and answers where the request landed.
    for worker, (status, _text) in (await answers_by_worker(http, f"{base}/m/echo_http")).items():
        assert status == 200, worker
    for worker, (status, text) in (await answers_by_worker(http, f"{base}/api/modules")).items():
        assert status == 200
        loaded = set(re.findall(r'"name": "(\w+)"', text))
        assert "echo_http" in loaded, worker
        assert ("echo" in loaded) is (worker == echo_owner), (worker, loaded)
        assert ("chat" in loaded) is (worker == chat_owner), (worker, loaded)

    # A worker that does not run a module says who does, not that its file is amiss.
    for worker, (status, text) in (
        await answers_by_worker(http, f"{base}/api/modules/echo")
    ).items():
        record = json.loads(text)
        assert status == 200 and record["runs_on"] == (None if worker == echo_owner else echo_owner)
        if worker != echo_owner:
            assert record["why"].startswith(f"runs on worker {echo_owner}"), record["why"]

    # Reload and rollback are the owner's: another worker relays them to it over NATS
    # and sends its answer on, naming it in X-Tinywasm-Owner.
    for action, expected in (("reload", 200), ("rollback", 409)):
        relayed = await admin_by_worker(http, f"{base}/api/modules/echo/{action}")
        for worker, (status, ran_on, text) in relayed.items():
            assert status == expected, (action, worker, text)
            assert ran_on == (None if worker == echo_owner else echo_owner), (action, worker)
        if action == "rollback":
            assert all("no previous good version" in t for _s, _o, t in relayed.values())

    # A deploy is the owner's too: a PUT on either worker is carried out where the module
    # runs (a worker that did not run it used to write the file and answer 409).
    wasm = (EXAMPLES / "echo.wasm").read_bytes()
    deployed = await admin_by_worker(http, f"{base}/api/modules/echo2", "PUT", wasm)
    echo2_owner = owner("echo2", names)
    for worker, (status, ran_on, text) in deployed.items():
        assert status == 200, (worker, text)
        assert ran_on == (None if worker == echo2_owner else echo2_owner), worker
        assert json.loads(text)["outcome"] in ("loaded", "unchanged"), worker
    for worker, (status, text) in (await answers_by_worker(http, f"{base}/m/echo2")).items():
        assert (status, text) == (200, "echo: GET /m/echo2\n"), worker

    # kill -9 the chat owner: the supervisor restarts it; the other worker's browser
    # stays connected and gets the chat again once the owner is back.
    pid = int(cluster.find(rf"worker {chat_owner} started \(pid (\d+)\)")[-1].group(1))
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    await eventually(
        lambda: cluster.count(rf"\[{chat_owner}\] serving") >= 2, "the restart", timeout=START
    )
    back_in = time.monotonic() - killed

    async def chat_back_on_its_owner() -> bool:  # the survivor ran it meanwhile
        answers = await answers_by_worker(http, f"{base}/api/modules")
        return all(
            json.loads(text)["fleet"]["workers"][chat_owner]["owned"].count("chat") == 1
            and "chat" not in json.loads(text)["fleet"]["workers"][other]["owned"]
            for other in names
            if other != chat_owner
            for _status, text in answers.values()
        )

    await eventually(chat_back_on_its_owner, "chat back on its owner", timeout=60)
    assert cluster.count(rf"worker {chat_owner} \(pid {pid}\) died with signal 9") == 1
    survivor_name = next(w for w in names if w != chat_owner)
    survivor = sockets[survivor_name]
    assert not survivor.closed
    await sockets[chat_owner].close()
    fresh = await chat_on_each_worker(http, base)
    await fresh[survivor_name].close()
    sockets = {survivor_name: survivor, chat_owner: fresh[chat_owner]}
    await chat_works(sockets, "again")
    print(f"chat owner back {back_in:.2f} s after kill -9")

    # SIGTERM: every worker drains and closes its browsers with 1001, then all exit.
    cluster.proc.send_signal(signal.SIGTERM)
    for ws in sockets.values():
        async with asyncio.timeout(30):
            msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
    await asyncio.to_thread(cluster.proc.wait, 30)
    assert cluster.proc.returncode == 0, cluster.log()
    log = cluster.log()
    assert log.count("] closed") == 2 and log.rstrip().endswith("tinywasm.supervisor: closed")
