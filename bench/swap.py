"""Hot swap under load: time from a file write to the new version serving, and delivery gaps.

A real `WasiServer` watches a temp folder holding a "relay" guest (``nums`` →
`ws_broadcast` ``out``, and ``GET /m/relay`` answering its version); one real
WebSocket client reads ``out`` while the server publishes numbered messages at a
fixed rate, an HTTP client asks ``/m/relay`` over and over, and the relay is
swapped N times by writing beside the file and renaming into place. A swap is
timed from the rename to the host serving the new sha256, and to the first HTTP
answer from the new version (both also minus the debounce window). The
WebSocket client must get every number once and in order; its longest gap
between frames is the worst delivery pause a swap caused under load. Every HTTP
answer must be a 200.

    python -m bench.swap [--swaps N] [--rate R] [--debounce S] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import wasmtime

from bench.common import (
    Machine,
    Row,
    add_common_flags,
    command_line,
    fail_on,
    markdown_table,
    percentile,
)
from bench.common import record as record_section
from tests.wat import guest
from tinywasm_wasi.config import Config
from tinywasm_wasi.policy.history import Outcome
from tinywasm_wasi.server import WasiServer

RELAY = """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
  (func (export "version") (result i32) (i32.const VERSION))
  (func (export "handle") (param i32 i32) (result i32) {v} drop)
"""
SWAP_TIMEOUT = 10.0  # seconds one swap may take before the run is abandoned
BETWEEN_SWAPS = 0.1  # seconds between a swap serving and the next write
TAIL = 0.2  # seconds the stream keeps running after the last swap
MAX_STREAM = 300.0  # seconds the stream may run, whatever happens
DRAIN_TIMEOUT = 15.0  # seconds the client may take to receive the last message


def relay(version: int) -> bytes:
    strings = {"t": "nums", "out": "out", "v": f"v{version}"}
    wat = guest(RELAY.replace("VERSION", str(version)), strings)
    return bytes(wasmtime.wat2wasm(wat))


@dataclass(slots=True)
class Result:
    swap_ms: list[float] = field(default_factory=list)  # write → serving, per swap
    windows: list[tuple[float, float]] = field(default_factory=list)  # (t_write, t_serving)
    received: list[tuple[float, bytes]] = field(default_factory=list)
    published: int = 0
    elapsed: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    host_ms: list[float] = field(default_factory=list)  # history duration_ms per swap
    answers: list[tuple[float, int, bytes]] = field(default_factory=list)  # HTTP (t, status, body)
    answering_ms: list[float] = field(default_factory=list)  # write → new version answers


async def run(directory: Path, swaps: int, rate: float, debounce: float) -> Result:
    path = directory / "relay.wasm"
    path.write_bytes(relay(0))
    server = WasiServer(
        Config(
            host="127.0.0.1",
            port=0,
            modules_dir=directory,
            watch=True,
            watch_debounce=debounce,
            swap_probation=0.05,
            ws_queue_size=100_000,
            mailbox_size=100_000,
            ws_inbound=(),
            cache_dir=None,  # every swap brings new bytes; keep runs independent
        )
    )
    await server.start()
    # Built up front so the benchmark's own compiling never stalls the stream.
    builds = [(b, hashlib.sha256(b).hexdigest()) for b in map(relay, range(1, swaps + 1))]
    result = Result()
    stop = asyncio.Event()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{server.url}/ws?topic=out", max_msg_size=0) as ws,
        ):
            await asyncio.sleep(0.2)  # the subscription settles before the stream starts

            async def collect() -> None:
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.BINARY:
                        raise RuntimeError(f"unexpected frame {msg!r}")
                    result.received.append((time.perf_counter(), msg.data))

            async def publish() -> None:
                begun = time.perf_counter()
                limit = int(rate * MAX_STREAM)
                while not stop.is_set() and result.published < limit:
                    due = min(limit, int((time.perf_counter() - begun) * rate) + 1)
                    while result.published < due:
                        server.bus.publish("nums", b"%d" % result.published)
                        result.published += 1
                    await asyncio.sleep(0.001)

            async def ask() -> None:
                url = f"{server.url}/m/relay"
                while not stop.is_set():
                    async with http.get(url) as resp:
                        body = await resp.read()
                    result.answers.append((time.perf_counter(), resp.status, body))

            async def swap_all() -> None:
                for n, (data, sha) in enumerate(builds, 1):
                    temp = directory / f".relay.{n}.tmp"
                    temp.write_bytes(data)
                    os.replace(temp, path)
                    t_write = time.perf_counter()
                    async with asyncio.timeout(SWAP_TIMEOUT):
                        while server.host.modules["relay"].compiled.sha256 != sha:
                            await asyncio.sleep(0.001)
                    t_serving = time.perf_counter()
                    result.windows.append((t_write, t_serving))
                    result.swap_ms.append((t_serving - t_write) * 1e3)
                    await asyncio.sleep(BETWEEN_SWAPS)
                await asyncio.sleep(TAIL)
                stop.set()

            collector = asyncio.create_task(collect())
            begun = time.perf_counter()
            try:
                await asyncio.gather(publish(), swap_all(), ask())
            finally:
                stop.set()
            result.elapsed = time.perf_counter() - begun
            deadline = time.perf_counter() + DRAIN_TIMEOUT
            while len(result.received) < result.published and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # catch duplicates arriving after the last expected one
            collector.cancel()
        for n, (t_write, _) in enumerate(result.windows, 1):
            first = next(
                (t for t, status, body in result.answers if t > t_write and body == b"v%d" % n),
                None,
            )
            if first is not None:
                result.answering_ms.append((first - t_write) * 1e3)
        for rec in server.host.histories["relay"].records:
            result.outcomes[rec.outcome.value] = result.outcomes.get(rec.outcome.value, 0) + 1
            if rec.trigger == "watcher":
                result.host_ms.append(rec.duration_ms)
    finally:
        await server.stop()
    return result


def check_order(received: list[tuple[float, bytes]], published: int) -> tuple[int, int, int]:
    """(lost, duplicated, out of order) for the payloads 0..published-1."""
    seen: set[int] = set()
    duplicated = out_of_order = 0
    last = -1
    for _, payload in received:
        n = int(payload)
        if n in seen:
            duplicated += 1
            continue
        seen.add(n)
        if n < last:
            out_of_order += 1
        last = max(last, n)
    return len(set(range(published)) - seen), duplicated, out_of_order


def rows(result: Result, swaps: int, rate: float, debounce: float) -> tuple[list[Row], list[str]]:
    ms = sorted(result.swap_ms)
    after = sorted(m - debounce * 1e3 for m in ms)
    times = [t for t, _ in result.received]
    gaps = sorted((b - a, a) for a, b in itertools.pairwise(times))
    gap_ms = [g * 1e3 for g, _ in gaps]
    longest, at = gaps[-1] if gaps else (float("nan"), 0.0)
    in_swap = any(w - 0.01 <= at <= s + 0.06 for w, s in result.windows)
    lost, duplicated, disordered = check_order(result.received, result.published)
    failed = sum(1 for _, status, _ in result.answers if status != 200)
    table: list[Row] = [
        ("swaps done / asked", f"{len(ms)} / {swaps}"),
        (
            "publish rate (target / achieved)",
            f"{rate:,.0f} / {result.published / result.elapsed:,.0f} msg/s",
        ),
        ("watch debounce", f"{debounce * 1e3:.0f} ms"),
        ("write → serving p50 / p99 / max", "{:.1f} / {:.1f} / {:.1f} ms".format(*_pct(ms))),
        ("… minus debounce p50 / p99 / max", "{:.1f} / {:.1f} / {:.1f} ms".format(*_pct(after))),
        (
            "… of which host swap (stage → cut-over) p50 / max",
            "{0:.1f} / {2:.1f} ms".format(*_pct(sorted(result.host_ms))),
        ),
        (
            "write → new version answers HTTP p50 / p99 / max",
            "{:.1f} / {:.1f} / {:.1f} ms".format(*_pct(sorted(result.answering_ms))),
        ),
        (
            "… minus debounce p50 / p99 / max",
            "{:.1f} / {:.1f} / {:.1f} ms".format(
                *_pct(sorted(m - debounce * 1e3 for m in result.answering_ms))
            ),
        ),
        ("HTTP requests during the run / failed", f"{len(result.answers):,} / {failed:,}"),
        ("messages published / received", f"{result.published:,} / {len(result.received):,}"),
        ("lost / duplicated / out of order", f"{lost} / {duplicated} / {disordered}"),
        (
            "longest delivery gap",
            f"{longest * 1e3:.1f} ms ({'during' if in_swap else 'outside'} a swap)",
        ),
        ("p99 / p50 delivery gap", "{1:.2f} / {0:.2f} ms".format(*_pct(gap_ms))),
        ("relay history", ", ".join(f"{k} {v}" for k, v in result.outcomes.items())),
    ]
    problems = []
    if len(ms) != swaps:
        problems.append(f"only {len(ms)} of {swaps} swaps completed")
    if failed:
        problems.append(f"{failed} HTTP request(s) failed")
    if len(result.answering_ms) != len(ms):
        problems.append("some swaps never answered HTTP with the new version")
    if lost or duplicated or disordered:
        problems.append(f"{lost} lost, {duplicated} duplicated, {disordered} out of order")
    ok = (Outcome.LOADED.value, Outcome.SWAPPED.value)
    bad = {k: v for k, v in result.outcomes.items() if k not in ok}
    if bad:
        problems.append(f"unexpected swap outcomes {bad}")
    return table, problems


def _pct(v: list[float]) -> tuple[float, float, float]:
    return percentile(v, 0.5), percentile(v, 0.99), v[-1] if v else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.swap", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--swaps", type=int, default=30, help="swaps to make (default 30)")
    parser.add_argument(
        "--rate", type=float, default=2000, help="messages/s on nums (default 2000)"
    )
    parser.add_argument(
        "--debounce", type=float, default=0.1, help="watch debounce, s (default 0.1)"
    )
    add_common_flags(parser)
    args = parser.parse_args()
    swaps, rate = (3, 200.0) if args.smoke else (args.swaps, args.rate)
    if not (1 <= swaps <= 10_000 and 1 <= rate <= 100_000 and 0 <= args.debounce <= 10):
        parser.error("need 1 <= --swaps <= 10000, 1 <= --rate <= 100000, 0 <= --debounce <= 10")

    machine = Machine.detect()
    print(f"# {machine.describe()}")
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        result = asyncio.run(run(Path(tmp), swaps, rate, args.debounce))
    table, problems = rows(result, swaps, rate, args.debounce)
    print(markdown_table(table))
    fail_on(problems, "bench.swap")
    if args.record:
        record_section(
            "swap: hot swap under load, write → serving, HTTP answers and delivery gaps",
            command_line("bench.swap"),
            table,
            machine=machine,
        )


if __name__ == "__main__":
    main()
