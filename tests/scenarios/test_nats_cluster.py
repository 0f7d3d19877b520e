"""A 3-node NATS cluster on loopback, with one node killed: the workers reconnect to the others.

Three real nats-server processes are routed into one cluster. ``--workers 2`` is
given all three URLs. The node the workers' connections are on (nats-server's
/connz, which names each connection ``tinywasm <worker>``) is killed with SIGKILL.
The workers reconnect to the survivors by themselves: cross-worker chat and HTTP
forwarding work again with no worker restarted, and /healthz is ok again.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.scenarios.cluster import (
    NEEDS_NATS,
    ClusterFactory,
    answers_by_worker,
    chat_on_each_worker,
    chat_works,
    health_of_each_worker,
    http,
    serving,
    start_cluster,
    workers_of,
)
from tests.support import eventually
from tinywasm_wasi.cluster.nats_server import NatsServerProcess, free_port

__all__ = ["http", "start_cluster"]  # fixtures, used by name

pytestmark = [
    pytest.mark.timeout(300),
    NEEDS_NATS,
]

NODES = 3
WORKERS = workers_of(2)


@dataclass
class Node:
    """One nats-server of the cluster, with its monitoring port."""

    server: NatsServerProcess
    monitor: int

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.monitor}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    def clients(self) -> list[str]:
        """The names of the tinywasm workers connected to this node."""
        connz = self.get("/connz?limit=1000")
        names = [str(c.get("name", "")) for c in connz.get("connections") or []]
        return sorted(n.removeprefix("tinywasm ") for n in names if n.startswith("tinywasm "))

    def routes(self) -> int:
        return int(self.get("/routez")["num_routes"])


@pytest.fixture
def nats_cluster() -> Iterator[list[Node]]:
    """Three nats-servers on loopback, routed to each other as one cluster."""
    cluster_ports = [free_port() for _ in range(NODES)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
    nodes = []
    for i, cluster_port in enumerate(cluster_ports):
        monitor = free_port()
        cluster = ("--cluster", f"nats://127.0.0.1:{cluster_port}", "--cluster_name", "tw")
        extra = (*cluster, "--routes", routes, "-m", str(monitor))
        nodes.append(Node(NatsServerProcess(name=f"node{i}", extra_args=extra), monitor))
    try:
        for node in nodes:
            node.server.start()
        yield nodes
    finally:
        for node in nodes:
            node.server.stop()


async def test_workers_reconnect_to_the_other_nodes_when_theirs_is_killed(
    nats_cluster: list[Node], start_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # Every node routes to the two others before anyone connects.
    await eventually(
        lambda: all(node.routes() >= NODES - 1 for node in nats_cluster), "the routes", timeout=30
    )
    urls = ",".join(node.server.url for node in nats_cluster)
    cluster = start_cluster("--nats", urls)
    base = await serving(cluster, 2)
    sockets = await chat_on_each_worker(http, base)
    await chat_works(sockets, "before")
    for worker, (status, text) in (await answers_by_worker(http, f"{base}/m/echo")).items():
        assert (status, text) == (200, "echo: GET /m/echo\n"), worker

    # Kill -9 the node that most of the workers are connected to.
    where = {i: node.clients() for i, node in enumerate(nats_cluster)}
    assert sorted(w for names in where.values() for w in names) == list(WORKERS), where
    victim = max(where, key=lambda i: len(where[i]))
    moved = where[victim]
    nats_cluster[victim].server.kill()
    survivors = [node for i, node in enumerate(nats_cluster) if i != victim]

    # The workers reconnect to the survivors by themselves.
    def reconnected() -> bool:
        return sorted(w for node in survivors for w in node.clients()) == list(WORKERS)

    await eventually(reconnected, f"{', '.join(moved)} to reconnect", timeout=30)

    async def healthy() -> bool:
        health = await health_of_each_worker(http, base)
        return all(json.loads(text)["status"] == "ok" for text in health.values())

    await eventually(healthy, "/healthz ok on both workers", timeout=30)

    # Cross-worker chat (same browsers) and HTTP forwarding work again; nothing restarted.
    await chat_works(sockets, "after")
    for worker, (status, text) in (await answers_by_worker(http, f"{base}/m/echo")).items():
        assert (status, text) == (200, "echo: GET /m/echo\n"), worker
    for worker in WORKERS:
        assert cluster.count(rf"worker {worker} started") == 1, cluster.log()
    assert not cluster.find(r"died with"), cluster.log()
    assert all(not ws.closed for ws in sockets.values())
