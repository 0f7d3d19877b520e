"""The cost of topic history: fan-out with history on and off, and a reconnect storm.

**Fan-out, history on vs off.** `bench.fanout`'s tinywasm run (a relay module
broadcasting on ``fan.out`` to C envelope clients in separate processes), once
without history and once with ``--history fan.out:1000:60s``, alternating,
``--repeat`` times each on the same machine in the same run. Server CPU per
delivered frame is the bench process's CPU (publisher thread included) over
messages times clients. The target: history adds at most 15%.

**Reconnect storm.** The server keeps ``feed`` history and has broadcast M
messages. N clients (in a separate process) then connect at once, each with
``since=0:<epoch>``, while the server broadcasts L more at 100/s. Each must get
its ``recovered: true`` frame, then every offset 1..M+L exactly once and in
order, then nothing more. Reported: time from the first connect until the last
client held everything published before it joined, its percentiles per client,
and the counts of recovered clients, gaps, duplicates and extra frames.

    python -m bench.history [--clients 100] [--storm 1000] [--missed 100] [--live 200]
                            [--repeat 3] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cbor2

from bench.common import (
    Children,
    Machine,
    add_common_flags,
    command_line,
    fail_on,
    percentile,
    record,
)
from bench.fanout import RELAY_WAT, Settings, run_tinywasm
from tests.wat import write
from tinywasm_wasi.config import Config
from tinywasm_wasi.server import WasiServer

TARGET = 0.15  # history may add at most this much server CPU per frame
STORM_TIMEOUT = 120.0  # seconds for a reconnect storm
STORM_PROCS = 2  # client processes the storm's clients are spread over


LIVE_RATE = 100.0  # messages/s broadcast on the feed while the storm connects
EXTRA_WAIT = 0.3  # seconds each client listens after its last message for one too many


async def storm_clients(url: str, count: int, final: int) -> dict[str, Any]:
    """Connect `count` clients at once; each checks its position frame and every offset.

    A client must see ``recovered: true``, then offsets 1..`final` each exactly once
    and in order (a payload is its offset as text), then nothing more for
    EXTRA_WAIT. Its catch-up time is when it held everything published before it
    joined (the position frame's offset); `seam` counts clients that joined while
    live messages were flowing (so recovery had to meet the live stream).
    """
    problems: list[str] = []
    caught_up: list[float] = []  # wall-clock times: the parent compares processes
    counts = {"recovered": 0, "gaps": 0, "duplicates": 0, "extra": 0, "complete": 0, "seam": 0}
    begun = time.time()

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(url, heartbeat=None) as ws:
            first = cbor2.loads((await ws.receive(timeout=60)).data)
            if first.get("type") != 1 or first.get("recovered") is not True:
                problems.append(f"first frame {first!r}")
                return
            counts["recovered"] += 1
            top = int(first["offset"])
            if top < final:
                counts["seam"] += 1
            if top == 0:
                caught_up.append(time.time())
            expected = 1
            while expected <= final:
                frame = cbor2.loads((await ws.receive(timeout=60)).data)
                offset = frame["offset"]
                if offset != expected or frame["payload"] != str(offset).encode():
                    counts["gaps" if offset > expected else "duplicates"] += 1
                    problems.append(f"expected offset {expected}, got {frame!r}")
                    return
                if offset == top:
                    caught_up.append(time.time())
                expected += 1
            try:
                extra = await ws.receive(timeout=EXTRA_WAIT)
            except TimeoutError:
                counts["complete"] += 1
            else:
                counts["extra"] += 1
                problems.append(f"a frame after offset {final}: {extra.data!r}")

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(
            *(one(session) for _ in range(count)), return_exceptions=True
        )
    problems += [repr(r) for r in results if isinstance(r, BaseException)][:5]
    return {"begun": begun, "caught_up": caught_up, "counts": counts, "problems": problems[:5]}


@dataclass(frozen=True, slots=True)
class Storm:
    caught_up: list[float]  # seconds from the first connect, one per client, sorted
    counts: dict[str, int]
    problems: list[str]
    server_cpu_s: float  # the server's CPU from the storm's start until all were done


async def storm(count: int, missed: int, live: int, tmp: Path) -> Storm:
    """`missed` messages kept, then `count` clients at once while `live` more are broadcast."""
    final = missed + live
    wasi = WasiServer(
        Config(
            host="127.0.0.1",
            port=0,
            modules_dir=tmp / "none",
            watch=False,
            log_level="WARNING",
            history=(f"feed:{final}:60s",),
        )
    )
    (tmp / "none").mkdir(exist_ok=True)
    await wasi.start()
    try:
        for i in range(1, missed + 1):
            wasi.hub.broadcast("feed", str(i).encode())
        read = wasi.hub.read_history("feed", None, 1)
        assert read is not None
        epoch = read[1].epoch
        url = f"{wasi.url}/ws?topic=feed&envelope=cbor&since=0:{epoch}"

        async def broadcast_live() -> None:
            # From the moment a tenth have joined: the rest meet the live stream.
            while wasi.hub.clients < max(1, count // 10):
                await asyncio.sleep(0.005)
            for i in range(missed + 1, final + 1):
                await asyncio.sleep(1 / LIVE_RATE)
                wasi.hub.broadcast("feed", str(i).encode())

        shares = [count // STORM_PROCS + (i < count % STORM_PROCS) for i in range(STORM_PROCS)]
        cpu_begun = time.process_time()
        with Children() as children:
            for i, share in enumerate(n for n in shares if n):
                children.start(storm_clients, url, share, final, name=f"storm clients {i}")
            loop = asyncio.get_running_loop()
            results, _ = await asyncio.gather(
                loop.run_in_executor(None, children.results, STORM_TIMEOUT), broadcast_live()
            )
        server_cpu = time.process_time() - cpu_begun
        first = min(r["begun"] for r in results)
        caught_up = sorted(t - first for r in results for t in r["caught_up"])
        counts = {k: sum(r["counts"][k] for r in results) for k in results[0]["counts"]}
        problems = [p for r in results for p in r["problems"]][:5]
        if len(caught_up) != count and not problems:
            problems.append(f"{count - len(caught_up)} clients did not catch up")
        return Storm(caught_up, counts, problems, server_cpu)
    finally:
        await wasi.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.history", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=100, help="fan-out clients (100)")
    parser.add_argument("--messages", type=int, default=2000, help="fan-out messages (2000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="fan-out messages/s (1000)")
    parser.add_argument("--storm", type=int, default=1000, help="clients reconnecting (1000)")
    parser.add_argument("--missed", type=int, default=100, help="messages each missed (100)")
    parser.add_argument(
        "--live", type=int, default=200, help="messages broadcast during the storm (200)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="fan-out runs per mode (3)")
    add_common_flags(parser)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.messages, args.storm, args.missed, args.repeat = 4, 100, 20, 10, 1
        args.live = 20
    machine = Machine.detect()
    print(f"# {machine.describe()}")
    problems: list[str] = []
    per_frame: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        write(Path(tmp), "relay", RELAY_WAT)
        s = Settings(
            clients=args.clients,
            messages=args.messages,
            rate=args.rate,
            size=64,
            procs=2 if args.clients > 1 else 1,
            queue_size=1000,
            timeout=120.0,
        )
        for i in range(args.repeat):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                rules = ("fan.out:1000:60s",) if mode == "on" else ()
                outcome = asyncio.run(
                    asyncio.wait_for(
                        run_tinywasm(s, Path(tmp), "asyncio", envelope=True, history=rules),
                        s.timeout,
                    )
                )
                frames = len(outcome.latencies_ms)
                if frames != s.messages * s.clients or outcome.out_of_order:
                    problems.append(
                        f"history {mode}: {frames} of {s.messages * s.clients} frames, "
                        f"{outcome.out_of_order} out of order, "
                        f"{outcome.slow_disconnects} slow consumers disconnected"
                    )
                per_frame[mode].append(outcome.server_cpu_s / max(1, frames) * 1e6)
                print(f"history {mode}: {per_frame[mode][-1]:.2f} µs server CPU per frame")
        result = asyncio.run(storm(args.storm, args.missed, args.live, Path(tmp)))
    problems += result.problems
    off = statistics.median(per_frame["off"])
    on = statistics.median(per_frame["on"])
    paired = [b / a - 1 for a, b in zip(per_frame["off"], per_frame["on"], strict=True)]
    extra = statistics.median(paired)
    if extra > TARGET and not args.smoke:  # a smoke run's 4 clients measure nothing
        problems.append(f"history added {extra:+.1%} server CPU per frame (target ≤ {TARGET:.0%})")
    done = result.caught_up
    c = result.counts
    rows = [
        ["server CPU per frame, history off (median)", f"{off:.2f} µs"],
        ["server CPU per frame, history on (median)", f"{on:.2f} µs"],
        ["history's extra CPU per frame (median of the paired runs)",
         f"{extra:+.1%} (target ≤ {TARGET:.0%})"],
        ["runs, off/on µs (paired, interleaved)",
         ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(per_frame["off"], per_frame["on"],
                                                     strict=True))],
        [f"{args.storm} clients reconnecting at once with since=, {args.missed} missed, "
         f"{args.live} broadcast meanwhile: all caught up",
         f"{done[-1] * 1000:.0f} ms" if done else "-"],
        ["per client caught up: p50 / p99",
         f"{percentile(done, 0.5) * 1000:.0f} / {percentile(done, 0.99) * 1000:.0f} ms"
         if done else "-"],
        ["recovered: true / every offset once and in order / nothing after the last",
         f"{c['recovered']} / {c['complete']} of {args.storm}"],
        ["gaps / duplicates / extra frames", f"{c['gaps']} / {c['duplicates']} / {c['extra']}"],
        ["server CPU for the whole storm, per client",
         f"{result.server_cpu_s * 1000:.0f} ms, {result.server_cpu_s / args.storm * 1e6:.0f} µs"],
        ["clients that joined while live messages flowed (recovery met the live stream)",
         f"{c['seam']}"],
    ]  # fmt: skip
    for name, value in rows:
        print(f"{name}: {value}")
    if args.record and not args.smoke:
        record(
            "history",
            command_line("bench.history"),
            rows,
            machine=machine,
            notes=f"Fan-out: {args.clients} envelope clients, {args.messages} messages at "
            f"{args.rate:g}/s, history off and on alternating, {args.repeat} runs each.",
        )
    fail_on(problems, "bench.history")


if __name__ == "__main__":
    main()
