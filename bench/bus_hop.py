"""Module → module throughput through the real stack, against the cost of the guest calls alone.

Two WAT guests on a real `Bus`, loaded by `ModuleHost`: "pump" publishes an
N-byte payload on ``hop`` for every message on ``go``; "sink" subscribes to
``hop`` and only counts. Python publishes ``go`` K times and waits until both
mailboxes are idle; a hop is one delivery to the sink.

"The floor" makes the same guest calls in one Python loop straight through
wasmtime, with no bus, mailbox or thread: per delivery a memory write into a
block taken once from ``malloc`` (as the server keeps one) + ``on_message``;
per hop, a pump delivery whose ``publish``
host function reads topic and payload, then a sink delivery. It is measured
twice: through wasmtime's unchecked C API (the fastest way Python can make
those calls, and the floor the ratio uses) and through wasmtime-py's public
API. The ratio says how much the server adds on top of the guest calls it must
make.
The stack runs pump and sink on two threads (wasmtime releases the GIL in guest
code), so its wall time per hop can beat the single-threaded floor; its CPU
time per hop (all threads) is the fair comparison.

    python -m bench.bus_hop [--count K] [--size N] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from bench.common import (
    Machine,
    Row,
    add_common_flags,
    command_line,
    fail_on,
    markdown_table,
    record,
)
from bus import Bus
from tests.wat import guest, write
from tinywasm_wasi.runtime import fastcall
from tinywasm_wasi.runtime.abi import HOST_IMPORTS, HOST_MODULE
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.supervisor.host import ModuleHost

PAYLOAD_AT = 4096  # the pump's payload lives here; the bump heap starts at 65536
MAX_SIZE = 65536 - PAYLOAD_AT
SETTLE_TIMEOUT = 60.0  # seconds the stack may take to go idle after the last publish
FLOOR_TIME_LIMIT = 20.0  # seconds the floor loop may run, whatever the count


def pump_wat(size: int) -> str:
    return guest(
        f"""
  (func (export "init") (call $subscribe {{go}} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $publish {{hop}} (i32.const {PAYLOAD_AT}) (i32.const {size})))
""",
        {"go": "go", "hop": "hop"},
    )


def sink_wat() -> str:
    return guest(
        """
  (global $count (export "count") (mut i32) (i32.const 0))
  (func (export "init") (call $subscribe {hop} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1))))
""",
        {"hop": "hop"},
    )


@dataclass(frozen=True, slots=True)
class StackResult:
    hops: int
    elapsed: float
    cpu: float  # process CPU time, all threads
    publish_elapsed: float
    settled: bool
    dropped: int
    failed: int


@dataclass(frozen=True, slots=True)
class FloorResult:
    iterations: int
    per_delivery: float  # seconds
    per_hop: float  # seconds


async def run_stack(directory: Path, count: int) -> StackResult:
    """Publish `go` `count` times through the real host and wait for the sink to catch up."""
    bus = Bus()
    host = ModuleHost(
        Runtime(),
        bus,
        lambda _topic, _payload: None,
        # Large enough that the burst of `go` messages is queued, not dropped.
        mailbox_size=max(10_000, count + 1),
        drain_timeout=5.0,
    )
    await host.load_dir(directory)
    try:
        if sorted(host.modules) != ["pump", "sink"]:
            raise RuntimeError(f"modules did not load: refused {host.refused}")
        sink = host.modules["sink"]
        begun, cpu_begun = time.perf_counter(), time.process_time()
        for _ in range(count):
            bus.publish("go", b"")
        published = time.perf_counter()
        settled = await host.quiesce(SETTLE_TIMEOUT)
        ended, cpu_ended = time.perf_counter(), time.process_time()
        return StackResult(
            hops=sink.counters.delivered,
            elapsed=ended - begun,
            cpu=cpu_ended - cpu_begun,
            publish_elapsed=published - begun,
            settled=settled,
            dropped=bus.stats().dropped,
            failed=sum(m.counters.failed for m in host.modules.values()),
        )
    finally:
        await host.stop()
        bus.close()


def _instantiate(
    engine: wasmtime.Engine, wasm: bytes, published: list[bytes], backend: fastcall.Backend
) -> tuple[wasmtime.Store, fastcall.GuestMemory, dict[str, fastcall.GuestFunc]]:
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    host = backend.host(linker)
    i32 = wasmtime.ValType.i32()

    def publish(c: fastcall.HostCaller, tp: int, tl: int, pp: int, pl: int) -> None:
        c.read(tp, tl)  # the topic, read as the server reads it
        published.append(c.read(pp, pl))

    def ignore(*_args: object) -> None:
        pass

    for name, nparams in HOST_IMPORTS.items():
        ty = wasmtime.FuncType([i32] * nparams, [])
        host.define(HOST_MODULE, name, ty, publish if name == "publish" else ignore)
    # The same engine settings as the server's (epoch interruption on); one far deadline
    # here, where the server sets one per call.
    store.set_epoch_deadline(1 << 40)
    exports = linker.instantiate(store, wasmtime.Module(engine, wasm)).exports(store)
    memory = exports["memory"]
    assert isinstance(memory, wasmtime.Memory)
    host.bind(store, memory)
    funcs = {}
    for name in ("init", "malloc", "on_message", "free"):
        func = exports[name]
        assert isinstance(func, wasmtime.Func)
        funcs[name] = backend.func(store, func)
    funcs["init"]()
    return store, backend.memory(store, memory), funcs


def run_floor(pump: bytes, sink: bytes, count: int, backend: fastcall.Backend) -> FloorResult:
    """The same guest calls, made directly on two instances in one Python loop."""
    runtime = Runtime()
    published: list[bytes] = []
    _ps, _pm, p = _instantiate(runtime.engine, pump, published, backend)
    _ss, s_mem, s = _instantiate(runtime.engine, sink, published, backend)
    s_malloc, s_on = s["malloc"], s["on_message"]
    p_malloc, p_on = p["malloc"], p["on_message"]

    # One block per instance, reused, as the server does for data up to 64 KiB.
    s_block = int(s_malloc(MAX_SIZE) or 0)
    p_block = int(p_malloc(1) or 0)

    def sink_delivery(payload: bytes) -> None:
        if payload:
            s_mem.write(s_block, payload)
        s_on(s_block, len(payload))

    # Per delivery, on the sink alone (the payload the pump would publish).
    p_on(p_block, 0)
    payload = published.pop()
    deadline = time.perf_counter() + FLOOR_TIME_LIMIT / 4
    begun = time.perf_counter()
    done = 0
    while done < count and (done % 256 or time.perf_counter() < deadline):
        sink_delivery(payload)
        done += 1
    per_delivery = (time.perf_counter() - begun) / done

    # Per hop: deliver an empty `go` to the pump, hand what it published to the sink.
    deadline = time.perf_counter() + FLOOR_TIME_LIMIT / 4
    begun = time.perf_counter()
    hops = 0
    while hops < count and (hops % 256 or time.perf_counter() < deadline):
        p_on(p_block, 0)
        sink_delivery(published.pop())
        hops += 1
    per_hop = (time.perf_counter() - begun) / hops
    runtime.close()
    return FloorResult(iterations=min(done, hops), per_delivery=per_delivery, per_hop=per_hop)


def rows(
    count: int, size: int, stack: StackResult, floor: FloorResult, public: FloorResult
) -> list[Row]:
    hops = max(1, stack.hops)
    per_hop, cpu_per_hop = stack.elapsed / hops, stack.cpu / hops
    return [
        ("payload bytes", f"{size}"),
        ("hops delivered / expected", f"{stack.hops:,} / {count:,}"),
        ("stack: elapsed", f"{stack.elapsed:.3f} s"),
        ("stack: hops/s", f"{1 / per_hop:,.0f}"),
        ("stack: µs per hop", f"{per_hop * 1e6:.1f}"),
        ("stack: CPU µs per hop (all threads)", f"{cpu_per_hop * 1e6:.1f}"),
        ("publish `go` from Python: µs each", f"{stack.publish_elapsed / count * 1e6:.1f}"),
        ("floor (C API): µs per delivery (sink)", f"{floor.per_delivery * 1e6:.1f}"),
        ("floor (C API): µs per hop (pump + sink)", f"{floor.per_hop * 1e6:.1f}"),
        ("floor (C API): hops/s", f"{1 / floor.per_hop:,.0f}"),
        ("stack / floor, wall time per hop", f"{per_hop / floor.per_hop:.2f}x"),
        ("stack / floor, CPU time per hop", f"{cpu_per_hop / floor.per_hop:.2f}x"),
        ("floor (public API): µs per hop", f"{public.per_hop * 1e6:.1f}"),
        ("dropped / guest traps", f"{stack.dropped} / {stack.failed}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bus_hop", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--count", type=int, default=20_000, help="`go` messages (default 20000)")
    parser.add_argument(
        "--size", type=int, default=64, help=f"hop payload bytes, 0..{MAX_SIZE} (default 64)"
    )
    add_common_flags(parser)
    args = parser.parse_args()
    count = 500 if args.smoke else args.count
    if not 1 <= count <= 1_000_000:
        parser.error("--count must be 1..1000000")
    if not 0 <= args.size <= MAX_SIZE:
        parser.error(f"--size must be 0..{MAX_SIZE}")

    machine = Machine.detect()
    print(f"# {machine.describe()}")
    with tempfile.TemporaryDirectory(prefix="bench-bus-hop-") as tmp:
        directory = Path(tmp)
        pump = write(directory, "pump", pump_wat(args.size)).read_bytes()
        sink = write(directory, "sink", sink_wat()).read_bytes()
        stack = asyncio.run(run_stack(directory, count))
    floor = run_floor(pump, sink, count, fastcall.FAST or fastcall.PUBLIC)
    public = run_floor(pump, sink, count, fastcall.PUBLIC)

    table = rows(count, args.size, stack, floor, public)
    print(markdown_table(table))
    problems = []
    if not stack.settled:
        problems.append(f"the stack was still busy after {SETTLE_TIMEOUT:.0f} s")
    if stack.hops < count:
        problems.append(f"{count - stack.hops} of {count} hop(s) lost")
    if stack.hops > count:
        problems.append(f"{stack.hops - count} hop(s) delivered twice ({stack.hops} of {count})")
    if stack.dropped or stack.failed:
        problems.append(f"{stack.dropped} message(s) dropped, {stack.failed} guest trap(s)")
    fail_on(problems, "bench.bus_hop")
    if args.record:
        record(
            "bus_hop: module → module through the bus",
            command_line("bench.bus_hop"),
            table,
            machine=machine,
        )


if __name__ == "__main__":
    main()
