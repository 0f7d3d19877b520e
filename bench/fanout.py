"""One module's `ws_broadcast` fanned out to C WebSocket clients held by other processes.

A real `WasiServer` on 127.0.0.1 loads a WAT "relay" module that subscribes to
``fan.in`` and broadcasts each payload on ``fan.out``. C clients connect to
``/ws?topic=fan.out`` from P separate processes, so the load generator does not
share the server's GIL. The server process then publishes M messages on
``fan.in`` at a fixed rate; each payload carries a sequence number and its send
time on ``time.monotonic_ns()`` (CLOCK_MONOTONIC, system-wide on Linux), and
clients record one latency per frame received.

    python -m bench.fanout [--clients C] [--messages M] [--rate R] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.sharedctypes
import struct
import tempfile
import time
import traceback
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Machine,
    Row,
    add_common_flags,
    command_line,
    markdown_table,
    percentile,
    record,
    rss_kib,
)
from tests.wat import guest, write
from tinywasm_wasi.config import Config
from tinywasm_wasi.server import WasiServer

HEAD = struct.Struct("<QQ")  # sequence number, send time (monotonic ns)
IN_TOPIC, OUT_TOPIC = "fan.in", "fan.out"
CONNECT_TIMEOUT = 20.0  # seconds for every client to be connected
STALL_TIMEOUT = 5.0  # seconds without a new frame anywhere before giving up
CONNECT_CONCURRENCY = 50  # handshakes in flight per client process
# Per client process, in its shared-array slot: connected, frames received, clients finished.
CONNECTED, RECEIVED, FINISHED, SLOTS = 0, 1, 2, 3

RELAY_WAT = guest(
    """
  (func (export "init") (call $subscribe {src} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {dst} (local.get $p) (local.get $n)))
""",
    {"src": IN_TOPIC, "dst": OUT_TOPIC},
)


# -- client processes -----------------------------------------------------------------------


def client_process(
    url: str, clients: int, expected: int, slot: int, shared: Any, stop: Any, conn: Connection
) -> None:
    """Entry point of one load-generating process; sends its results down `conn`."""
    try:
        result = asyncio.run(_clients(url, clients, expected, slot * SLOTS, shared, stop))
        conn.send(("ok", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


async def _clients(
    url: str, count: int, expected: int, base: int, shared: Any, stop: Any
) -> dict[str, Any]:
    latencies = array("q")
    closes: dict[str, int] = {}
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    state = {"out_of_order": 0, "last_ns": 0, "cpu_begun": 0.0}
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def client(session: aiohttp.ClientSession) -> None:
        async with limit, asyncio.timeout(CONNECT_TIMEOUT):
            ws = await session.ws_connect(url, autoclose=True, heartbeat=None)
        sockets.append(ws)
        if len(sockets) == count:
            state["cpu_begun"] = time.process_time()
        shared[base + CONNECTED] += 1
        received, last_seq = 0, -1
        try:
            async for msg in ws:  # reading starts at once: no frame waits for the others
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    continue
                now = time.monotonic_ns()
                seq, sent = HEAD.unpack_from(msg.data)
                latencies.append(now - sent)
                state["last_ns"] = now
                if seq <= last_seq:
                    state["out_of_order"] += 1
                last_seq = seq
                received += 1
                shared[base + RECEIVED] += 1
                if received >= expected:
                    return
            code = str(ws.close_code)
            closes[code] = closes.get(code, 0) + 1
        finally:
            shared[base + FINISHED] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = {asyncio.create_task(client(session)) for _ in range(count)}
        pending = tasks
        try:
            while pending and not stop.is_set():
                done, pending = await asyncio.wait(pending, timeout=0.05)
                for task in done:
                    task.result()  # a failed connection fails the whole run, with its reason
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            cpu = time.process_time() - state["cpu_begun"]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {
        "latencies": latencies.tobytes(),
        "out_of_order": state["out_of_order"],
        "last_ns": state["last_ns"],
        "closed_by_server": closes,
        "cpu": cpu,
    }


# -- the server process -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    clients: int
    messages: int
    rate: float
    size: int
    procs: int
    queue_size: int
    timeout: float


@dataclass(frozen=True, slots=True)
class Outcome:
    connect_s: float
    first_ns: int
    publish_s: float
    # Not in repr: asyncio.run may repr the main task's result, 200k floats long.
    latencies_ms: list[float] = field(repr=False)
    last_ns: int
    out_of_order: int
    closed_by_server: dict[str, int]
    rss_idle_kib: int
    rss_connected_kib: int
    rss_after_kib: int
    slow_disconnects: int
    frames_queued: int
    server_cpu_s: float
    clients_cpu_s: float


def _publish_all(server: WasiServer, s: Settings) -> tuple[int, int]:
    """Publish `s.messages` on fan.in, paced to `s.rate` (0 = flat out); runs in a thread."""
    pad = b"\0" * max(0, s.size - HEAD.size)
    begun = time.monotonic_ns()
    interval = 1e9 / s.rate if s.rate > 0 else 0.0
    for seq in range(s.messages):
        if interval:
            ahead = begun + seq * interval - time.monotonic_ns()
            if ahead > 0:
                time.sleep(ahead / 1e9)
        server.bus.publish(IN_TOPIC, HEAD.pack(seq, time.monotonic_ns()) + pad)
    return begun, time.monotonic_ns()


async def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def run(s: Settings, modules_dir: Path) -> Outcome:
    """Start the server and the client processes, publish, collect; clean up whatever happens."""
    server = WasiServer(
        Config(
            host="127.0.0.1",
            port=0,
            modules_dir=modules_dir,
            ws_queue_size=s.queue_size,
            mailbox_size=max(10_000, s.messages + 1),
            log_level="WARNING",
        )
    )
    ctx = multiprocessing.get_context("spawn")  # never fork a process running wasmtime threads
    shared = multiprocessing.sharedctypes.RawArray("q", SLOTS * s.procs)
    stop = ctx.Event()
    procs: list[Any] = []
    conns: list[Connection] = []
    try:
        await server.start()
        if list(server.host.modules) != ["relay"]:
            raise RuntimeError(f"the relay module did not load: {server.host.refused}")
        rss_idle = rss_kib()
        url = f"{server.url}/ws?topic={OUT_TOPIC}"
        shares = [s.clients // s.procs + (i < s.clients % s.procs) for i in range(s.procs)]
        connect_begun = time.perf_counter()
        for slot, share in enumerate(shares):
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=client_process,
                args=(url, share, s.messages, slot, shared, stop, child),
                name=f"bench-fanout-clients-{slot}",
            )
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)

        def total(field: int) -> int:
            return sum(shared[i * SLOTS + field] for i in range(s.procs))

        def failed() -> bool:
            return any(not p.is_alive() for p in procs)

        await _wait_for(
            lambda: server.hub.clients >= s.clients or failed(),
            CONNECT_TIMEOUT + 10,  # spawning a process and importing takes a while
            f"{s.clients} WebSocket clients",
        )
        if failed():
            raise RuntimeError(f"a client process ended early: {_results(conns, 1.0)}")
        connect_s = time.perf_counter() - connect_begun
        rss_connected = rss_kib()

        cpu_begun = time.process_time()
        first_ns, last_pub_ns = await asyncio.to_thread(_publish_all, server, s)
        last_progress, seen = time.monotonic(), total(RECEIVED)
        while total(FINISHED) < s.clients and not failed():
            await asyncio.sleep(0.02)
            now_seen = total(RECEIVED)
            if now_seen != seen:
                last_progress, seen = time.monotonic(), now_seen
            elif time.monotonic() - last_progress > STALL_TIMEOUT:
                break
        server_cpu = time.process_time() - cpu_begun
        rss_after = rss_kib()
        stats = server.hub.stats()
        stop.set()
        results = _results(conns, 15.0)
    finally:
        stop.set()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        for conn in conns:
            conn.close()
        await server.stop()

    latencies: list[float] = []
    out_of_order, last_ns = 0, first_ns
    closed: dict[str, int] = {}
    for result in results:
        values = array("q")
        values.frombytes(result["latencies"])
        latencies.extend(v / 1e6 for v in values)
        out_of_order += result["out_of_order"]
        last_ns = max(last_ns, result["last_ns"])
        for code, n in result["closed_by_server"].items():
            closed[code] = closed.get(code, 0) + n
    latencies.sort()
    return Outcome(
        connect_s=connect_s,
        first_ns=first_ns,
        publish_s=(last_pub_ns - first_ns) / 1e9,
        latencies_ms=latencies,
        last_ns=last_ns,
        out_of_order=out_of_order,
        closed_by_server=closed,
        rss_idle_kib=rss_idle,
        rss_connected_kib=rss_connected,
        rss_after_kib=rss_after,
        slow_disconnects=stats.slow_disconnects,
        frames_queued=stats.frames_queued,
        server_cpu_s=server_cpu,
        clients_cpu_s=sum(r["cpu"] for r in results),
    )


def _results(conns: list[Connection], timeout: float) -> list[dict[str, Any]]:
    """Each client process's result; raises with the child's traceback if one failed."""
    results = []
    deadline = time.monotonic() + timeout
    for conn in conns:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            raise TimeoutError("a client process sent no results")
        status, value = conn.recv()
        if status != "ok":
            raise RuntimeError(f"a client process failed:\n{value}")
        results.append(value)
    return results


def rows(s: Settings, o: Outcome) -> list[Row]:
    expected = s.clients * s.messages
    delivered = len(o.latencies_ms)
    span = max(1, o.last_ns - o.first_ns) / 1e9
    lat = o.latencies_ms
    closed = ", ".join(f"{n}x {code}" for code, n in sorted(o.closed_by_server.items())) or "none"
    return [
        ("clients / client processes", f"{s.clients} / {s.procs}"),
        ("messages x payload bytes", f"{s.messages:,} x {s.size}"),
        ("publish rate asked / achieved", f"{_rate(s.rate)} / {s.messages / o.publish_s:,.0f}/s"),
        ("all clients connected in", f"{o.connect_s:.2f} s"),
        ("frames delivered / expected", f"{delivered:,} / {expected:,}"),
        ("delivered fraction", f"{delivered / expected:.2%}"),
        ("frames/s delivered", f"{delivered / span:,.0f}"),
        ("first publish → last frame", f"{span:.2f} s"),
        (
            "latency p50 / p99 / max",
            f"{percentile(lat, 0.5):.1f} / {percentile(lat, 0.99):.1f} / "
            f"{lat[-1] if lat else float('nan'):.1f} ms",
        ),
        (
            "server CPU, all threads",
            f"{o.server_cpu_s:.2f} s "
            f"({o.server_cpu_s / max(1, o.frames_queued) * 1e6:.1f} µs per frame queued)",
        ),
        ("client processes' CPU", f"{o.clients_cpu_s:.2f} s"),
        ("slow-consumer disconnects", f"{o.slow_disconnects}"),
        ("clients closed by the server", closed),
        ("out-of-order frames", f"{o.out_of_order}"),
        (
            "server RSS idle / connected / after",
            f"{o.rss_idle_kib / 1024:.1f} / "
            f"{o.rss_connected_kib / 1024:.1f} / {o.rss_after_kib / 1024:.1f} MiB",
        ),
    ]


def _rate(rate: float) -> str:
    return "unpaced" if rate <= 0 else f"{rate:,.0f}/s"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=100, help="WebSocket clients (100)")
    parser.add_argument("--messages", type=int, default=2_000, help="messages published (2000)")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="messages per second, 0 = unpaced (1000)"
    )
    parser.add_argument("--size", type=int, default=64, help="payload bytes, at least 16 (64)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (2)")
    parser.add_argument(
        "--queue-size", type=int, default=1_000, help="server ws_queue_size per client (1000)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="overall limit, s (60)")
    add_common_flags(parser)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.messages, args.procs = 4, 100, 2
    s = Settings(
        clients=args.clients,
        messages=args.messages,
        rate=args.rate,
        size=max(HEAD.size, args.size),
        procs=max(1, min(args.procs, args.clients)),
        queue_size=args.queue_size,
        timeout=args.timeout,
    )
    if not 1 <= s.clients <= 10_000 or not 1 <= s.messages <= 1_000_000:
        parser.error("--clients must be 1..10000 and --messages 1..1000000")
    if not 1 <= s.timeout <= 600:
        parser.error("--timeout must be 1..600 seconds")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # One warning per disconnected client would bury the table; the table counts them.
    logging.getLogger("tinywasm.hub").setLevel(logging.ERROR)
    machine = Machine.detect()
    print(f"# {machine.describe()}")
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        write(Path(tmp), "relay", RELAY_WAT)
        outcome = asyncio.run(asyncio.wait_for(run(s, Path(tmp)), s.timeout))
    table = rows(s, outcome)
    print(markdown_table(table))
    problems = _problems(s, outcome)
    for problem in problems:
        print(f"warning: {problem}")
    if args.record:
        record(
            f"fanout: one module to {s.clients} WebSocket clients, {_rate(s.rate)}",
            command_line("bench.fanout"),
            table,
            machine=machine,
            notes="\n".join(f"Warning: {p}." for p in problems),
        )


def _problems(s: Settings, o: Outcome) -> list[str]:
    problems = []
    missing = s.clients * s.messages - len(o.latencies_ms)
    if o.slow_disconnects:
        problems.append(
            f"{o.slow_disconnects} client(s) disconnected as slow consumers "
            f"(--queue-size {s.queue_size}); the frames queued for them were discarded"
        )
    if missing:
        problems.append(f"{missing:,} frame(s) not delivered")
    return problems


if __name__ == "__main__":
    main()
