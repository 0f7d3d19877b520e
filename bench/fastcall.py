"""Cost of one guest call and one host callback, fast path against wasmtime's public API.

Both `tinywasm_wasi.runtime.fastcall` backends run the same operations on one WAT guest:

- guest call: Python calls an export (4 i32 arguments and no result; 1 argument and
  an i32 result);
- host callback: the guest calls a host function N times in a loop (a no-op with
  4 i32 arguments; one that reads a 5-byte topic and a 64-byte payload from guest
  memory like ``publish``, with the memory bound and looked up by export);
- memory: `GuestMemory.write` then `read` of 64 bytes, from Python.

Each figure is the best of a few timed runs, each sized to take about `--budget`
seconds; on a shared machine the best run is the one least disturbed.

    python -m bench.fastcall [--budget S] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

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
from tinywasm_wasi.runtime import fastcall
from tinywasm_wasi.runtime.fastcall import Backend, HostCaller

I32 = wasmtime.ValType.i32()
TOPIC, PAYLOAD = 16, 64  # where the guest's data segments put them

WAT = """
(module
  (import "env" "noop" (func $noop (param i32 i32 i32 i32)))
  (import "env" "publish" (func $publish (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "topic")
  (func (export "noop4") (param i32 i32 i32 i32))
  (func (export "id") (param i32) (result i32) (local.get 0))
  (func (export "loop_noop") (param $n i32)
    (loop $l
      (call $noop (i32.const 1) (i32.const 2) (i32.const 3) (i32.const 4))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
  (func (export "loop_publish") (param $n i32)
    (loop $l
      (call $publish (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 64))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
)
"""

Batch = Callable[[int], object]  # runs the operation n times


def best_us(batch: Batch, budget: float, repeats: int) -> float:
    """Best time per operation in µs, over `repeats` runs of about `budget` seconds each."""
    n = 16
    while True:  # size a run to the budget
        started = time.perf_counter()
        batch(n)
        elapsed = time.perf_counter() - started
        if elapsed >= budget / 4 or n >= 1 << 24:
            break
        n *= 2
    n = max(1, int(n * budget / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        batch(n)
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def _publish(caller: HostCaller, tp: int, tl: int, pp: int, pl: int) -> None:
    caller.read(tp, tl)
    caller.read(pp, pl)


def _instance(
    backend: Backend, engine: wasmtime.Engine, module: wasmtime.Module, *, bound: bool
) -> tuple[Callable[[str], fastcall.GuestFunc], fastcall.GuestMemory]:
    """The guest's exports as GuestFuncs (by name) and its memory, on a new store."""
    linker = wasmtime.Linker(engine)
    host = backend.host(linker)
    host.define("env", "noop", wasmtime.FuncType([I32] * 4, []), lambda c, a, b, d, e: None)
    host.define("env", "publish", wasmtime.FuncType([I32] * 4, []), _publish)
    store = wasmtime.Store(engine)
    exports = linker.instantiate(store, module).exports(store)
    memory = exports["memory"]
    assert isinstance(memory, wasmtime.Memory)
    if bound:
        host.bind(store, memory)

    def func(name: str) -> fastcall.GuestFunc:
        export = exports[name]
        assert isinstance(export, wasmtime.Func)
        return backend.func(store, export)

    return func, backend.memory(store, memory)


def measure(backend: Backend, budget: float, repeats: int) -> dict[str, float]:
    """µs per operation for one backend, by operation name."""
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, WAT)
    func, mem = _instance(backend, engine, module, bound=True)
    noop4, ident, data = func("noop4"), func("id"), bytes(64)

    def calls(n: int) -> None:
        for _ in range(n):
            noop4(1, 2, 3, 4)

    def calls_result(n: int) -> None:
        for _ in range(n):
            ident(7)

    def memory_io(n: int) -> None:
        for _ in range(n):
            mem.write(4096, data)
            mem.read(4096, 64)

    by_export, _ = _instance(backend, engine, module, bound=False)
    return {
        "guest call: 4 i32 args, no result": best_us(calls, budget, repeats),
        "guest call: 1 i32 arg, i32 result": best_us(calls_result, budget, repeats),
        "host callback: no-op, 4 i32 args": best_us(func("loop_noop"), budget, repeats),
        "host callback: publish, memory bound": best_us(func("loop_publish"), budget, repeats),
        "host callback: publish, memory by export": best_us(
            by_export("loop_publish"), budget, repeats
        ),
        "memory: write + read 64 B from Python": best_us(memory_io, budget, repeats),
    }


def rows(fast: dict[str, float] | None, public: dict[str, float]) -> list[Row]:
    table: list[Row] = []
    for name, slow in public.items():
        if fast is not None:
            table.append((f"{name} (fast)", f"{fast[name]:.2f} µs"))
        table.append((f"{name} (public)", f"{slow:.2f} µs"))
        if fast is not None:
            table.append((f"{name}: speed-up", f"{slow / fast[name]:.1f}x"))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fastcall", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--budget", type=float, default=0.3, help="seconds per timed run (default 0.3)"
    )
    add_common_flags(parser)
    args = parser.parse_args()
    budget, repeats = (0.01, 2) if args.smoke else (args.budget, 5)
    if not 0 < budget <= 10:
        parser.error("--budget must be more than 0 and at most 10 seconds")

    machine = Machine.detect()
    print(f"# {machine.describe()}")
    fast = None if fastcall.FAST is None else measure(fastcall.FAST, budget, repeats)
    public = measure(fastcall.PUBLIC, budget, repeats)
    table = rows(fast, public)
    print(markdown_table(table))
    if fast is None:
        note = "this wasmtime has no unchecked C API; only the public API was measured"
        fail_on([], "bench.fastcall", warnings=[note])
    if args.record:
        record(
            "fastcall: guest calls and host callbacks, fast path against the public API",
            command_line("bench.fastcall"),
            table,
            machine=machine,
            notes="Best of 5 runs per figure; a host callback's figure includes its share of "
            "the guest loop that calls it.",
        )


if __name__ == "__main__":
    main()
