"""The cost of topic history: fan-out with history on and off, and a reconnect storm.

**Fan-out, history on vs off.** `bench.fanout`'s tinywasm run (a relay module
broadcasting on ``fan.out`` to C envelope clients in separate processes), once
without history and once with ``--history fan.out:1000:60s``, alternating,
``--repeat`` times each on the same machine in the same run. Server CPU per
delivered frame is the bench process's CPU (publisher thread included) over
messages times clients. The target: history adds at most 15%.

**Reconnect storm.** The server keeps ``feed:M:60s`` and has broadcast M
messages. N clients (in a separate process) then connect at once, each with
``since=0:<epoch>``: each must get its ``recovered: true`` frame and all M
messages, in order. Reported: time from the first connect until the last client
has caught up, and its percentiles per client.

    python -m bench.history [--clients 100] [--storm 1000] [--missed 100] [--repeat 3]
                            [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
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


async def storm_clients(url: str, count: int, missed: int) -> dict[str, Any]:
    """Connect `count` clients at once; each reads its position frame and `missed` messages."""
    problems: list[str] = []
    done_at: list[float] = []
    begun = time.perf_counter()

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(url, heartbeat=None) as ws:
            first = cbor2.loads((await ws.receive(timeout=60)).data)
            if first.get("type") != 1 or first.get("recovered") is not True:
                problems.append(f"first frame {first!r}")
                return
            for expected in range(1, missed + 1):
                frame = cbor2.loads((await ws.receive(timeout=60)).data)
                if frame["offset"] != expected or frame["payload"] != str(expected).encode():
                    problems.append(f"expected offset {expected}, got {frame!r}")
                    return
            done_at.append(time.perf_counter() - begun)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(
            *(one(session) for _ in range(count)), return_exceptions=True
        )
    problems += [repr(r) for r in results if isinstance(r, BaseException)][:5]
    return {"done_at": sorted(done_at), "problems": problems[:5]}


async def storm(count: int, missed: int, tmp: Path) -> tuple[list[float], list[str]]:
    wasi = WasiServer(
        Config(
            host="127.0.0.1",
            port=0,
            modules_dir=tmp / "none",
            watch=False,
            log_level="WARNING",
            history=(f"feed:{missed}:60s",),
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
        with Children() as children:
            children.start(storm_clients, url, count, missed, name="storm clients")
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(None, children.results, STORM_TIMEOUT)
        outcome = result[0]
        problems = list(outcome["problems"])
        if len(outcome["done_at"]) != count and not problems:
            problems.append(f"{count - len(outcome['done_at'])} clients did not catch up")
        return outcome["done_at"], problems
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
    parser.add_argument("--repeat", type=int, default=3, help="fan-out runs per mode (3)")
    add_common_flags(parser)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.messages, args.storm, args.missed, args.repeat = 4, 100, 20, 10, 1
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
        for _ in range(args.repeat):
            for mode in ("off", "on"):
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
                        f"{outcome.out_of_order} out of order"
                    )
                per_frame[mode].append(outcome.server_cpu_s / max(1, frames) * 1e6)
                print(f"history {mode}: {per_frame[mode][-1]:.2f} µs server CPU per frame")
        done_at, storm_problems = asyncio.run(storm(args.storm, args.missed, Path(tmp)))
    problems += storm_problems
    off = sorted(per_frame["off"])[len(per_frame["off"]) // 2]
    on = sorted(per_frame["on"])[len(per_frame["on"]) // 2]
    extra = on / off - 1 if off else 0.0
    rows = [
        ["server CPU per frame, history off (median)", f"{off:.2f} µs"],
        ["server CPU per frame, history on (median)", f"{on:.2f} µs"],
        ["history's extra CPU per frame", f"{extra:+.1%} (target ≤ {TARGET:.0%})"],
        ["runs (off, on; interleaved)", ", ".join(f"{a:.2f}/{b:.2f}" for a, b in
                                                   zip(per_frame["off"], per_frame["on"],
                                                       strict=True))],
        [f"{args.storm} clients reconnecting, {args.missed} missed each: all caught up",
         f"{done_at[-1] * 1000:.0f} ms" if done_at else "-"],
        ["per client caught up: p50 / p99",
         f"{percentile(done_at, 0.5) * 1000:.0f} / {percentile(done_at, 0.99) * 1000:.0f} ms"
         if done_at else "-"],
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
