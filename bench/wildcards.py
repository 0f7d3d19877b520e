"""The event-loop stall while many wildcard WebSocket subscribers close (issue #16, item 14).

For each size N: a real server (``tinywasm`` with ``TINYWASM_SERVER=wasi``, no modules)
runs in its own process on 127.0.0.1. A client process opens N WebSockets, each
subscribed to its own wildcard pattern ``room.<i>.*`` (N wildcard entries in the hub's
`TopicIndex`), and then closes them all at once. Meanwhile this process asks
``/healthz`` over one keep-alive connection, back to back, until the server reports
0 clients. The worst of those answers is the stall: the time the event loop spent
removing subscriptions, among other things, instead of answering.

``--checkout DIR`` runs the server from another checkout of the project (with that
checkout's ``.venv`` if it has one), so an old version and this one can be measured
back to back, interleaved, on the same busy machine.

The first two figures time the hub's `TopicIndex` alone in a fresh process of that
checkout: one match against N wildcard entries, and removing all N one by one (what
closing N clients does); ``--index-only`` skips the server.

    python -m bench.wildcards [--sizes 3200,6400] [--rounds 1] [--checkout DIR] [--index-only]
                              [--smoke] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

import aiohttp

from bench.common import (
    CheckoutServer,
    Children,
    Machine,
    add_common_flags,
    command_line,
    fail_on,
    percentile,
    record,
)

ROOT = Path(__file__).resolve().parent.parent
OPEN_BATCH = 200  # connections opened at once by the client process
CLOSE_TIMEOUT = 300.0  # seconds for every client to be gone


async def hold_and_close(port: int, count: int, opened: Event, go: Event) -> dict[str, float]:
    """In the client process: open `count` wildcard subscribers, then close them all at once."""
    url = f"http://127.0.0.1:{port}/ws"
    begun = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        for first in range(0, count, OPEN_BATCH):
            batch = range(first, min(count, first + OPEN_BATCH))
            sockets += await asyncio.gather(
                *(session.ws_connect(url, params={"topic": f"room.{i}.*"}) for i in batch)
            )
        opened_s = time.perf_counter() - begun
        opened.set()
        while not go.is_set():
            await asyncio.sleep(0.01)
        begun = time.perf_counter()
        await asyncio.gather(*(ws.close() for ws in sockets))
        return {"open_s": opened_s, "close_s": time.perf_counter() - begun}


@dataclass(frozen=True, slots=True)
class Result:
    size: int
    idle_p50_ms: float
    worst_ms: float
    drained_s: float  # from "close" until the server reports 0 clients


def probe(port: int, seconds: float) -> list[float]:
    """Latencies in ms of back-to-back /healthz for `seconds`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        CheckoutServer.healthz(conn)
        out.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return out


def measure(checkout: Path, size: int) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="bench-wildcards-") as tmp,
        CheckoutServer(checkout, Path(tmp)) as server,
        Children(join_timeout=CLOSE_TIMEOUT) as children,
    ):
        opened, go = children.ctx.Event(), children.ctx.Event()
        children.start(hold_and_close, server.port, size, opened, go, name="subscribers")
        if not opened.wait(CLOSE_TIMEOUT):
            raise TimeoutError(f"{size} subscribers did not connect")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLOSE_TIMEOUT)
        clients = CheckoutServer.healthz(conn)
        if clients != size:
            raise RuntimeError(f"the server counts {clients} clients, not {size}")
        idle = sorted(probe(server.port, 1.0))
        worst = 0.0
        go.set()
        begun = time.monotonic()
        while time.monotonic() - begun < CLOSE_TIMEOUT:
            t0 = time.perf_counter()
            clients = CheckoutServer.healthz(conn)
            worst = max(worst, (time.perf_counter() - t0) * 1000)
            if clients == 0:
                break
        drained = time.monotonic() - begun
        conn.close()
        children.results(CLOSE_TIMEOUT)
    return Result(size, percentile(idle, 0.5), worst, drained)


INDEX_PROBE = """
import sys, time
from bus.topics import TopicIndex
n = int(sys.argv[1])
index = TopicIndex()
values = [object() for _ in range(n)]
for i, v in enumerate(values):
    index.add(f"room.{i}.*", v)
t0 = time.perf_counter()
for _ in range(200):
    index.match("room.7.x")
match_us = (time.perf_counter() - t0) / 200 * 1e6
t0 = time.perf_counter()
for i, v in enumerate(values):
    index.remove(f"room.{i}.*", v)
print(match_us, (time.perf_counter() - t0) * 1000)
"""


def index_cost(checkout: Path, size: int) -> tuple[float, float]:
    """(µs per match, ms to remove every entry) of `checkout`'s TopicIndex, N wildcards."""
    venv_python = checkout / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.is_file() else sys.executable
    done = subprocess.run(
        [python, "-c", INDEX_PROBE, str(size)],
        env={**os.environ, "PYTHONPATH": str(checkout)},
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
        timeout=CLOSE_TIMEOUT,
    )
    match_us, remove_ms = (float(x) for x in done.stdout.split())
    return match_us, remove_ms


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.wildcards", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", default="3200,6400", help="comma-separated subscriber counts")
    parser.add_argument("--rounds", type=int, default=1, help="times each size is measured")
    parser.add_argument(
        "--checkout",
        type=Path,
        action="append",
        help="run the server from this checkout (repeat to compare; default: this one)",
    )
    parser.add_argument(
        "--index-only", action="store_true", help="only the TopicIndex figures, no server"
    )
    add_common_flags(parser)
    args = parser.parse_args()
    sizes = [200] if args.smoke else [int(s) for s in args.sizes.split(",")]
    checkouts = [c.resolve() for c in args.checkout or [ROOT]]
    machine = Machine.detect()
    rows = []
    problems = []
    # Interleaved: every checkout once per size and round, so load on the machine hits all.
    for size in sizes:
        for round_ in range(args.rounds):
            for checkout in checkouts:
                try:
                    match_us, remove_ms = index_cost(checkout, size)
                    result = None if args.index_only else measure(checkout, size)
                except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                    problems.append(f"{checkout.name}, {size} subscribers: {exc}")
                    continue
                row = [
                    checkout.name,
                    str(size),
                    str(round_ + 1),
                    f"{match_us:.1f}",
                    f"{remove_ms:.1f}",
                    "-" if result is None else f"{result.idle_p50_ms:.2f}",
                    "-" if result is None else f"{result.worst_ms:.0f}",
                    "-" if result is None else f"{result.drained_s:.2f}",
                ]
                rows.append(row)
                print(" | ".join(row), flush=True)
    fail_on(problems, "bench.wildcards")
    header = [
        "server",
        "wildcard subscribers",
        "round",
        "TopicIndex match (µs)",
        "TopicIndex remove all (ms)",
        "/healthz p50 idle (ms)",
        "worst /healthz while they close (ms)",
        "until 0 clients (s)",
    ]
    if args.record:
        record(
            "wildcard subscribers closing",
            command_line("bench.wildcards"),
            rows,
            machine=machine,
            header=header,
        )


if __name__ == "__main__":
    main()
