"""A ``replicas = "all"`` module in two real workers gets each bus message once.

The chat example is declared ``replicas = "all"``, so both workers run it, as a
NATS queue group. A message is handled by exactly one replica wherever it was
published: a browser's by the replica in its own worker (local first), a bare NATS
client's (a process without a replica) by the one replica NATS picks. Summed over
the workers, the replicas' ``delivered`` counters count each message once.
"""

from __future__ import annotations

import json

import aiohttp
import nats
import pytest

from tests.scenarios.cluster import (
    NEEDS_NATS,
    ClusterFactory,
    answers_by_worker,
    chat_data,
    chat_on_each_worker,
    chat_works,
    http,
    receive,
    serving,
    start_cluster,
)
from tests.support import eventually

__all__ = ["http", "start_cluster"]  # fixtures, used by name

pytestmark = [
    pytest.mark.timeout(300),
    NEEDS_NATS,
]

CHAT_EVERYWHERE = '[echo_http]\nreplicas = "all"\n[chat]\nreplicas = "all"\n'
BARE = 40  # messages a bare NATS client publishes


async def handled_by_worker(http: aiohttp.ClientSession, base: str) -> dict[str, int]:
    """worker -> the messages its chat replica handled."""
    seen = {}
    for worker, (_status, text) in (await answers_by_worker(http, f"{base}/api/modules")).items():
        (chat,) = [m for m in json.loads(text)["modules"] if m["name"] == "chat"]
        seen[worker] = chat["counters"]["delivered"]
    return seen


async def test_a_replicated_module_gets_each_message_once_across_workers(
    start_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = start_cluster(limits=CHAT_EVERYWHERE)
    base = await serving(cluster, 2)
    sockets = await chat_on_each_worker(http, base)
    expected = 0

    async def handled(total: int) -> bool:
        return sum((await handled_by_worker(http, base)).values()) == total

    # Published by a browser: the replica in its own worker handles it, and no other.
    await chat_works(sockets, "from a browser")
    expected += len(sockets)
    await eventually(lambda: handled(expected), "each browser message handled", timeout=30)
    assert set((await handled_by_worker(http, base)).values()) == {1}, "each its own"

    # Published by a process with no replica (a bare NATS client): by one replica each.
    url = cluster.find(r"embedded nats-server on (\S+)")[0].group(1)
    sent = [f"bare {i}".encode() for i in range(BARE)]
    client = await nats.connect(url)
    try:
        for payload in sent:
            await client.publish("tw.t.chat", payload)
        await client.flush()
    finally:
        await client.close()
    for worker, ws in sockets.items():
        got = [chat_data(await receive(ws)) for _ in sent]
        assert sorted(got) == sorted(sent), worker  # each once (the replicas run side by side)
    expected += BARE
    await eventually(lambda: handled(expected), "each bare message handled once", timeout=30)

    # Nothing else was on its way: the browsers' next messages come next, each once.
    await chat_works(sockets, "after")
    expected += len(sockets)
    await eventually(lambda: handled(expected), "the last ones handled", timeout=30)
    assert sum((await handled_by_worker(http, base)).values()) == expected
