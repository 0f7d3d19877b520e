"""`bench.scale --drop`: N module files dropped at once into a running server's folder.

A real server (``python -m cmd.tinywasm``, its own process, watching an empty folder,
a fresh compiled-module cache) is started; N copies of ``modules/dist/receiver.wasm``
are written to a staging folder and renamed into the watched folder in one burst, as
a deploy tool would. Meanwhile this process sends back-to-back ``/healthz`` requests
and records each latency, until ``/healthz`` reports N modules. Then, with the
server idle: its threads, open fds and RSS (from /proc).

- RSS per module: (RSS idle after loading - RSS idle before the drop) / N.
- "worst" and "p99" are the /healthz latencies while the modules load.
- ``--checkout DIR`` (repeatable) runs the server from another checkout of the project,
  interleaved with the others, so a before and an after share the machine's load.

Targets (issue #16, item 17): 10,000 idle modules at ≤ 64 KiB each, /healthz p99 ≤ 50 ms
while 2,000 load.
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import CheckoutServer, percentile, process_rss_kib
from tinywasm_wasi.config import DEFAULT_MODULES_DIR

__all__ = ["ROOT", "DropResult", "problems", "run", "table", "verdicts"]

ROOT = Path(__file__).resolve().parent.parent
MODULE = DEFAULT_MODULES_DIR / "receiver.wasm"
START_TIMEOUT = 120.0
TARGET_P99_MS = 50.0  # /healthz while 2,000 load
TARGET_KIB = 64.0  # per idle module, at 10,000


def _proc_count(pid: int, what: str) -> int:
    """`Threads:` from /proc/<pid>/status, or the number of open fds; -1 without /proc."""
    try:
        if what == "fds":
            return len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _modules(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"/healthz answered {resp.status}")
    return int(json.loads(body)["modules"])


@dataclass(frozen=True, slots=True)
class DropResult:
    checkout: str
    count: int
    loaded: int
    load_s: float
    threads_before: int
    threads_after: int
    fds_after: int
    rss_before_kib: int
    rss_after_kib: int
    probes: int
    p50_ms: float
    p99_ms: float
    worst_ms: float

    @property
    def kib_per_module(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.count


def _settle(pid: int) -> int:
    """RSS in KiB once it stops moving (two reads 0.5 s apart within 64 KiB)."""
    last = process_rss_kib(pid)
    for _ in range(20):
        time.sleep(0.5)
        now = process_rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


def drop(checkout: Path, count: int, timeout: float) -> DropResult:
    """Start a server from `checkout`, drop `count` module files into its folder, measure."""
    with tempfile.TemporaryDirectory(prefix="bench-drop-") as tmp:
        root = Path(tmp)
        staging, modules, cache = root / "staging", root / "modules", root / "cache"
        for folder in (staging, modules, cache):
            folder.mkdir()
        wasm = MODULE.read_bytes()
        for i in range(count):
            (staging / f"m{i:05d}.wasm").write_bytes(wasm)
        with CheckoutServer(
            checkout, modules, watch=True, cache_dir=cache, start_timeout=START_TIMEOUT
        ) as server:
            assert server.proc is not None
            pid = server.proc.pid
            threads_before = _proc_count(pid, "threads")
            rss_before = _settle(pid)
            latencies: list[float] = []
            loaded = 0
            done = threading.Event()

            def probe() -> None:
                nonlocal loaded
                conn = server.connect()
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    begun = time.perf_counter()
                    loaded = _modules(conn)
                    latencies.append((time.perf_counter() - begun) * 1000)
                    if loaded >= count:
                        break
                conn.close()
                done.set()

            prober = threading.Thread(target=probe, daemon=True)
            begun = time.perf_counter()
            prober.start()
            for path in sorted(staging.iterdir()):  # one burst of renames
                path.rename(modules / path.name)
            done.wait(timeout + 60)
            load_s = time.perf_counter() - begun
            rss_after = _settle(pid)
            ordered = sorted(latencies)
            return DropResult(
                checkout=checkout.name,
                count=count,
                loaded=loaded,
                load_s=load_s,
                threads_before=threads_before,
                threads_after=_proc_count(pid, "threads"),
                fds_after=_proc_count(pid, "fds"),
                rss_before_kib=rss_before,
                rss_after_kib=rss_after,
                probes=len(latencies),
                p50_ms=percentile(ordered, 0.5),
                p99_ms=percentile(ordered, 0.99),
                worst_ms=ordered[-1] if ordered else float("nan"),
            )


def table(results: list[DropResult]) -> tuple[list[str], list[list[str]]]:
    header = [
        "checkout",
        "modules",
        "loaded",
        "load s",
        "threads before → after",
        "fds after",
        "RSS before MiB",
        "RSS after MiB",
        "KiB/module",
        "/healthz probes",
        "p50 ms",
        "p99 ms",
        "worst ms",
    ]
    rows = [
        [
            r.checkout,
            f"{r.count}",
            f"{r.loaded}",
            f"{r.load_s:.1f}",
            f"{r.threads_before} → {r.threads_after}",
            f"{r.fds_after}",
            f"{r.rss_before_kib / 1024:.1f}",
            f"{r.rss_after_kib / 1024:.1f}",
            f"{r.kib_per_module:.1f}",
            f"{r.probes}",
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"{r.worst_ms:.1f}",
        ]
        for r in results
    ]
    return header, rows


def verdicts(results: list[DropResult]) -> list[str]:
    lines = []
    for r in results:
        if r.count == 2000:
            ok = "meets" if r.p99_ms <= TARGET_P99_MS else "misses"
            lines.append(
                f"- {r.checkout}, 2,000 dropped: /healthz p99 {r.p99_ms:.1f} ms, worst "
                f"{r.worst_ms:.1f} ms ({ok} the ≤ {TARGET_P99_MS:.0f} ms p99 target)."
            )
        if r.count == 10_000:
            ok = "meets" if r.kib_per_module <= TARGET_KIB else "misses"
            lines.append(
                f"- {r.checkout}, 10,000 idle: {r.kib_per_module:.1f} KiB per module, "
                f"{r.threads_after} threads ({ok} the ≤ {TARGET_KIB:.0f} KiB target)."
            )
    return lines


def problems(results: list[DropResult]) -> list[str]:
    return [
        f"{r.checkout}, {r.count} dropped: only {r.loaded} loaded"
        for r in results
        if r.loaded != r.count
    ]


def run(checkouts: list[Path], sizes: list[int], rounds: int) -> list[DropResult]:
    """Every checkout at every size, interleaved, `rounds` times."""
    results = []
    for _ in range(rounds):
        for count in sizes:
            for checkout in checkouts:
                print(f"# {checkout.name}: {count} modules dropped ...", flush=True)
                timeout = max(60.0, count * 0.1)
                result = drop(checkout, count, timeout)
                results.append(result)
                print("# " + " | ".join(table([result])[1][0]), flush=True)
    return results
