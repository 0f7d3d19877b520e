"""`NatsLink` request-reply on a real nats-server (loopback): what happens while it closes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from bus.nats import LinkError, NatsLink
from tests.support import eventually
from tinywasm_wasi.cluster.nats_server import NatsServerProcess, find_nats_server

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(find_nats_server() is None, reason="nats-server is not installed"),
]


@pytest.fixture
def nats_url() -> Iterator[str]:
    with NatsServerProcess(name="link-test") as server:
        yield server.url


@pytest.fixture
async def links(nats_url: str) -> AsyncIterator[tuple[NatsLink, NatsLink]]:
    a, b = NatsLink((nats_url,)), NatsLink((nats_url,))
    await a.connect()
    await b.connect()
    yield a, b
    await a.close()
    await b.close()


async def test_a_request_being_answered_when_the_link_closes_is_still_answered(
    links: tuple[NatsLink, NatsLink],
) -> None:
    # A worker that stops may be answering a request another one forwarded to it, and
    # may need the link for that (it relays the request on): close() lets it finish.
    a, b = links
    started, release = asyncio.Event(), asyncio.Event()

    async def on_b(data: bytes) -> bytes:
        return b"b saw " + data

    async def on_a(data: bytes) -> bytes:
        started.set()
        await release.wait()
        return await a.request("relay.b", data, timeout=5)  # uses the closing link

    await b.serve("relay.b", on_b)
    await a.serve("serve.a", on_a)
    await a.sync()
    await b.sync()
    asking = asyncio.create_task(b.request("serve.a", b"ping", timeout=10))
    await eventually(started.is_set, "a to be answering")
    closing = asyncio.create_task(a.close())
    await asyncio.sleep(0)  # close() has begun: it waits for the answer under way
    assert not closing.done()
    release.set()
    assert await asyncio.wait_for(asking, 10) == b"b saw ping"
    await asyncio.wait_for(closing, 10)
    # Closed now: nobody serves a's subject any more.
    with pytest.raises(LinkError):
        await b.request("serve.a", b"again", timeout=5)
