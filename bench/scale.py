"""Start-up time and memory with many modules: 1, 100 and 500, compile cache off, cold and warm.

Each configuration runs in a fresh process (spawned, so its memory is its own):
it builds a `Runtime` and a `ModuleHost` on a real `Bus`, then times
`ModuleHost.load_dir` over a folder of N copies of ``modules/dist/receiver.wasm``
(compile or load from the cache, instantiate, `init()`, one thread per module),
waits until every mailbox is idle and reads its memory.

- "distinct" copies differ by a custom section holding their index, so each has
  its own sha256 and cache entry; "same" copies are byte-identical (one entry).
- cache "off": no cache folder; "cold": an empty one (every module is compiled
  and written); "warm": the folder the cold run filled (every module is loaded).
- RSS per module is (RSS idle after loading - RSS before) / N. The marginal cost
  between the two largest sizes removes fixed costs (wasmtime's code pages
  touched by the first compile, malloc arenas, worker threads).
- /proc/self/smaps, before and after, splits the growth into kinds of mapping
  (thread stacks, compiled code, linear-memory images, ...): the second table.

Targets (issue #6): 100 modules start in ≤ 1 s with a warm cache; an idle small
module costs ≤ 64 KiB of RSS.

``--drop 2000,10000`` measures instead a running server that gets N module files
dropped into its watched folder at once: threads, RSS per module and the /healthz
latency while they load (`bench/scale_drop.py`; ``--checkout DIR`` compares checkouts,
interleaved). ``--smoke`` runs both parts at tiny sizes.

    python -m bench.scale [--sizes 1,100,500] [--record] [--smoke]
    python -m bench.scale --drop 2000,10000 [--checkout DIR]... [--rounds 1] [--record]
"""

from __future__ import annotations

import argparse
import gc
import resource
import shutil
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import scale_drop
from bench.common import (
    Children,
    Machine,
    add_common_flags,
    command_line,
    fail_on,
    markdown_grid,
    record,
    rss_kib,
)
from bus import Bus
from tinywasm_wasi.config import DEFAULT_MODULES_DIR, Config
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.supervisor.host import ModuleHost

MODULE = DEFAULT_MODULES_DIR / "receiver.wasm"
SETTLE_TIMEOUT = 60.0  # seconds for every mailbox to go idle after loading
CHILD_TIMEOUT = 600.0  # seconds one configuration may take
TARGET_START_S = 1.0  # 100 modules, warm cache
TARGET_RSS_KIB = 64.0  # per idle module

# Kinds of memory mapping, in the order the breakdown lists them.
STACKS = "thread stacks"
CODE = "compiled code (anon r-x)"
RODATA = "compiled read-only data (anon r--)"
IMAGES = "linear-memory images (memfd, copy-on-write)"
MALLOC = "malloc heap and arenas"
ANON = "other anonymous rw (Python objects, stores, linear memory)"
FILES = "files (libraries, mapped code)"
OTHER = "other"
KINDS = (STACKS, CODE, RODATA, IMAGES, MALLOC, ANON, FILES, OTHER)
_ARENA_ALIGN = 64 * 1024 * 1024  # glibc's per-thread malloc arenas start 64 MiB-aligned


# -- the folder of modules -----------------------------------------------------------------------


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_custom_section(wasm: bytes, name: str, payload: bytes) -> bytes:
    """`wasm` with a custom section appended: same behaviour, different bytes."""
    encoded = name.encode()
    body = _leb128(len(encoded)) + encoded + payload
    return wasm + b"\x00" + _leb128(len(body)) + body


def write_modules(directory: Path, count: int, *, distinct: bool) -> None:
    directory.mkdir(parents=True)
    wasm = MODULE.read_bytes()
    for i in range(count):
        data = with_custom_section(wasm, "tinywasm-scale", str(i).encode()) if distinct else wasm
        (directory / f"m{i:04d}.wasm").write_bytes(data)


# -- in the child process ------------------------------------------------------------------------


def _stack_kib() -> int:
    """Size of a thread stack's mapping, to recognise them in smaps."""
    size = threading.stack_size()
    if not size:  # 0: glibc's default, the soft RLIMIT_STACK (2 MiB when unlimited)
        soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
        size = soft if soft != resource.RLIM_INFINITY else 2 * 1024 * 1024
    return size // 1024


def smaps_by_kind() -> dict[str, int]:
    """RSS in KiB of this process's mappings, by kind (empty without /proc)."""
    stack_kib = _stack_kib()
    totals: Counter[str] = Counter()
    kind = OTHER
    size_kib = 0
    try:
        with open("/proc/self/smaps", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if not fields:
                    continue
                if not fields[0].endswith(":"):  # a mapping's header line
                    start = int(fields[0].split("-")[0], 16)
                    perms, path = fields[1], fields[5] if len(fields) > 5 else ""
                    kind = _kind(start, perms, path)
                elif fields[0] == "Size:":
                    size_kib = int(fields[1])
                    if kind == ANON and size_kib == stack_kib:
                        kind = STACKS
                elif fields[0] == "Rss:":
                    totals[kind] += int(fields[1])
    except OSError:
        return {}
    return dict(totals)


def _kind(start: int, perms: str, path: str) -> str:
    if path.startswith("/memfd:"):
        return IMAGES
    if path == "[heap]":
        return MALLOC
    if path.startswith("["):
        return OTHER
    if path:
        return FILES
    if "x" in perms:
        return CODE
    if perms.startswith("r--"):
        return RODATA
    if perms.startswith("rw"):
        return MALLOC if start % _ARENA_ALIGN == 0 else ANON
    return OTHER  # reserved, inaccessible: guard pages, address space kept for growth


def _vm_size_kib() -> int:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _idle_snapshot() -> tuple[int, int, dict[str, int]]:
    gc.collect()
    time.sleep(0.2)  # let worker threads finish and park
    return rss_kib(), _vm_size_kib(), smaps_by_kind()


async def measure(directory: str, cache_dir: str | None, trace: bool = False) -> dict[str, Any]:
    """Load `directory` once in this (fresh) process; timings, memory and counts.

    With `trace`, tracemalloc counts the bytes Python allocated while loading (slower:
    only that figure is meaningful then).
    """
    config = Config()
    begun = time.perf_counter()
    runtime = Runtime(cache_dir=Path(cache_dir) if cache_dir else None)
    engine_s = time.perf_counter() - begun
    bus = Bus()
    host = ModuleHost(
        runtime,
        bus,
        lambda _topic, _payload: None,
        mailbox_size=config.mailbox_size,
        drain_timeout=config.drain_timeout,
    )
    threads_before = threading.active_count()
    rss_before, vm_before, smaps_before = _idle_snapshot()
    if trace:
        tracemalloc.start()
    try:
        begun = time.perf_counter()
        await host.load_dir(Path(directory))
        load_s = time.perf_counter() - begun
        settled = await host.quiesce(SETTLE_TIMEOUT)
        rss_after, vm_after, smaps_after = _idle_snapshot()
        python_kib = tracemalloc.get_traced_memory()[0] / 1024 if trace else float("nan")
        tracemalloc.stop()
        loaded = len(host.modules)
        cached = sum(m.compiled.cached for m in host.modules.values())
        threads_after = threading.active_count()
        begun = time.perf_counter()
    finally:
        await host.stop()
        runtime.close()
        bus.close()
    return {
        "engine_s": engine_s,
        "load_s": load_s,
        "stop_s": time.perf_counter() - begun,
        "settled": settled,
        "loaded": loaded,
        "refused": len(host.refused),
        "cached": cached,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "vm_before": vm_before,
        "vm_after": vm_after,
        "smaps": {k: smaps_after.get(k, 0) - smaps_before.get(k, 0) for k in KINDS},
        "threads": threads_after - threads_before,
        "stack_kib": _stack_kib(),
        "python_kib": python_kib,
    }


# -- in the parent ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    count: int
    bytes: str  # "distinct" or "same"
    cache: str  # "off", "cold" or "warm"
    result: dict[str, Any]

    @property
    def rss_delta(self) -> int:
        return int(self.result["rss_after"] - self.result["rss_before"])

    @property
    def per_module_kib(self) -> float:
        return self.rss_delta / self.count


def run_child(
    directory: Path, cache_dir: Path | None, label: str, *, trace: bool = False
) -> dict[str, Any]:
    with Children(join_timeout=30.0) as children:
        cache = str(cache_dir) if cache_dir else None
        children.start(measure, str(directory), cache, trace, name=label)
        (result,) = children.results(CHILD_TIMEOUT)
    return dict(result)


def run_all(root: Path, sizes: list[int]) -> tuple[list[Run], float]:
    """Every configuration; and Python's own allocations per module (largest size, warm)."""
    runs = []
    python_kib = float("nan")
    for count in sizes:
        for kind in ("distinct", "same"):
            folder = root / f"{kind}-{count}"
            write_modules(folder, count, distinct=kind == "distinct")
            cache_dir = root / f"cache-{kind}-{count}"
            modes: list[tuple[str, Path | None]] = [("cold", cache_dir), ("warm", cache_dir)]
            if kind == "distinct":
                modes.insert(0, ("off", None))
            for mode, directory in modes:
                label = f"{count} {kind} modules, cache {mode}"
                print(f"# {label} ...", flush=True)
                runs.append(Run(count, kind, mode, run_child(folder, directory, label)))
            if count == sizes[-1] and kind == "distinct":
                print(f"# {count} {kind} modules, cache warm, tracemalloc ...", flush=True)
                traced = run_child(folder, cache_dir, "tracemalloc", trace=True)
                python_kib = traced["python_kib"] / count
            shutil.rmtree(folder)
    return runs, python_kib


def main_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    header = [
        "modules",
        "bytes",
        "cache",
        "load s",
        "ms/module",
        "cached",
        "RSS before MiB",
        "RSS Δ MiB",
        "KiB/module",
        "virtual MiB/module",
        "threads +",
        "stop s",
    ]
    rows = []
    for run in runs:
        r = run.result
        rows.append(
            [
                f"{run.count}",
                run.bytes,
                run.cache,
                f"{r['load_s']:.3f}",
                f"{r['load_s'] / run.count * 1000:.2f}",
                f"{r['cached']}/{r['loaded']}",
                f"{r['rss_before'] / 1024:.1f}",
                f"{run.rss_delta / 1024:.1f}",
                f"{run.per_module_kib:.0f}",
                f"{(r['vm_after'] - r['vm_before']) / 1024 / run.count:.1f}",
                f"{r['threads']}",
                f"{r['stop_s']:.3f}",
            ]
        )
    return header, rows


def marginal(runs: list[Run], bytes_kind: str, cache: str) -> tuple[Run, Run] | None:
    """The two largest sizes' runs of one configuration, to subtract fixed costs."""
    chosen = sorted(
        (r for r in runs if r.bytes == bytes_kind and r.cache == cache), key=lambda r: r.count
    )
    return (chosen[-2], chosen[-1]) if len(chosen) >= 2 else None


def breakdown(runs: list[Run]) -> tuple[list[str], list[list[str]], dict[str, float]]:
    """KiB per module by kind of mapping: marginal between the two largest sizes, warm cache."""
    header = ["kind of mapping"]
    columns: list[tuple[str, Run, Run]] = []
    for bytes_kind in ("distinct", "same"):
        pair = marginal(runs, bytes_kind, "warm")
        if pair is not None:
            small, large = pair
            header.append(f"KiB/module, {bytes_kind}, warm ({small.count}→{large.count})")
            columns.append((bytes_kind, small, large))
    totals: dict[str, float] = {}
    rows = []
    for kind in (*KINDS, "total (smaps Rss)", "VmRSS"):
        row = [kind]
        for bytes_kind, small, large in columns:
            span = large.count - small.count
            if kind == "VmRSS":
                value = (large.rss_delta - small.rss_delta) / span
            elif kind.startswith("total"):
                value = (
                    sum(large.result["smaps"].values()) - sum(small.result["smaps"].values())
                ) / span
            else:
                value = (large.result["smaps"][kind] - small.result["smaps"][kind]) / span
            row.append(f"{value:.1f}")
            if kind == "VmRSS":
                totals[bytes_kind] = value
        rows.append(row)
    return header, rows, totals


def verdicts(runs: list[Run], marginal_kib: dict[str, float]) -> list[str]:
    lines = []
    warm_100 = [r for r in runs if r.count == 100 and r.cache == "warm" and r.bytes == "distinct"]
    if warm_100:
        load = warm_100[0].result["load_s"]
        ok = "meets" if load <= TARGET_START_S else "misses"
        lines.append(
            f"- 100 distinct modules, warm cache: loaded in {load:.3f} s ({ok} the "
            f"≤ {TARGET_START_S:.0f} s target)."
        )
    for bytes_kind, kib in marginal_kib.items():
        ok = "meets" if kib <= TARGET_RSS_KIB else "misses"
        lines.append(
            f"- Marginal RSS per idle module ({bytes_kind} bytes, warm cache): {kib:.1f} KiB "
            f"({ok} the ≤ {TARGET_RSS_KIB:.0f} KiB target)."
        )
    return lines


def problems(runs: list[Run]) -> list[str]:
    """What makes the run invalid: modules that did not load or settle, or a cache that
    did not serve (or served) what it should have."""
    found = []
    for run in runs:
        r = run.result
        if not r["settled"] or r["refused"] or r["loaded"] != run.count:
            found.append(
                f"{run.count} {run.bytes} modules, cache {run.cache}: "
                f"{r['loaded']} loaded, {r['refused']} refused, settled {r['settled']}"
            )
        # Same bytes, cold: modules compiled after the first entry was written are hits.
        expect = {"warm": run.count, "off": 0, "cold": 0 if run.bytes == "distinct" else None}
        if expect[run.cache] not in (None, r["cached"]):
            found.append(
                f"{run.count} {run.bytes} modules, cache {run.cache}: "
                f"{r['cached']} loaded from the cache, expected {expect[run.cache]}"
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--sizes",
        default="1,100,500",
        help="module counts, comma-separated (default 1,100,500; --smoke: 1,5)",
    )
    parser.add_argument(
        "--drop",
        help="module counts dropped into a running server's folder, e.g. 2000,10000 "
        "(instead of the start-up table)",
    )
    parser.add_argument(
        "--checkout",
        action="append",
        type=Path,
        help="with --drop: run the server from this checkout (repeat to compare; "
        "default: this one)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="with --drop: rounds (default 1)")
    add_common_flags(parser)
    args = parser.parse_args()
    if args.drop:
        try:
            drops = [int(s) for s in args.drop.split(",")]
        except ValueError:
            parser.error("--drop must be whole numbers separated by commas, e.g. 2000,10000")
        if not drops or not all(1 <= n <= 20_000 for n in drops) or args.rounds < 1:
            parser.error("--drop must be 1..20000 and --rounds at least 1")
        main_drop(drops, args.checkout or [scale_drop.ROOT], args.rounds, record_it=args.record)
        return
    try:
        sizes = sorted({int(s) for s in ("1,5" if args.smoke else args.sizes).split(",")})
    except ValueError:
        parser.error("--sizes must be whole numbers separated by commas, e.g. 1,100,500")
    if not sizes or not all(1 <= s <= 5000 for s in sizes):
        parser.error("--sizes must be 1..5000")

    machine = Machine.detect()
    print(f"# {machine.describe()}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        runs, python_kib = run_all(Path(tmp), sizes)

    header, rows = main_table(runs)
    print(markdown_grid(header, rows))
    notes = []
    b_header, b_rows, marginal_kib = breakdown(runs)
    if b_rows and len(b_header) > 1:
        grid = markdown_grid(b_header, b_rows)
        print()
        print(grid)
        stack = runs[0].result["stack_kib"]
        notes += [
            "RSS growth by kind of mapping (`/proc/self/smaps`), per module, between the two "
            f"largest sizes (thread stacks: {stack} KiB each, virtual):",
            "",
            grid,
            "",
        ]
    lines = [
        f"- Python allocations per module ({sizes[-1]} distinct, warm cache, tracemalloc): "
        f"{python_kib:.1f} KiB; the rest of the growth is native (wasmtime, thread stacks).",
        *verdicts(runs, marginal_kib),
    ]
    for line in lines:
        print(line)
    notes += lines
    if args.smoke:
        main_drop([20], [scale_drop.ROOT], 1, record_it=False)
    fail_on(problems(runs), "bench.scale")
    if args.record:
        record(
            "scale: start-up and memory with many modules",
            command_line("bench.scale"),
            rows,
            header=header,
            machine=machine,
            notes="\n".join(notes),
        )


def main_drop(sizes: list[int], checkouts: list[Path], rounds: int, *, record_it: bool) -> None:
    machine = Machine.detect()
    print(f"# {machine.describe()}")
    results = scale_drop.run([c.resolve() for c in checkouts], sizes, rounds)
    header, rows = scale_drop.table(results)
    print(markdown_grid(header, rows))
    lines = scale_drop.verdicts(results)
    for line in lines:
        print(line)
    fail_on(scale_drop.problems(results), "bench.scale --drop")
    if record_it:
        record(
            "scale: module files dropped into a running server's folder",
            command_line("bench.scale"),
            rows,
            header=header,
            machine=machine,
            notes="\n".join(lines),
        )


if __name__ == "__main__":
    main()
