"""Helpers shared by the benchmark scripts: machine description, tables, BENCHMARKS.md.

Every script prints a table of `(metric, value)` rows and, with ``--record``,
appends it to ``BENCHMARKS.md`` at the repository root together with the
machine it ran on and the exact command line, so any number there can be
reproduced. A run that lost, duplicated or reordered a message, or saw a request
fail, exits non-zero (`fail_on`) and records nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import http.client
import json
import multiprocessing
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any, TypeVar

from tinywasm_wasi.eventloop import ASYNCIO, UVLOOP, choose_loop

T = TypeVar("T")

__all__ = [
    "BENCHMARKS",
    "Children",
    "CpuSampler",
    "Machine",
    "add_common_flags",
    "command_line",
    "fail_on",
    "markdown_grid",
    "markdown_table",
    "percentile",
    "process_cpu_s",
    "process_rss_kib",
    "record",
    "rss_kib",
]

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"

HEADER = """\
# Benchmarks

Numbers measured with the scripts in `bench/`. Each section below was appended by
one script run with `--record`; it names the machine, the package versions and the
exact command, so it can be reproduced from the repository root with that command.
Every script also has `--smoke` (a tiny size, a few seconds; CI runs it so the
scripts cannot rot). Treat single runs on a shared 2-core machine as orders of
magnitude: rerun before comparing two versions.

- `python -m bench.all`: every script below, each in its own process; passes
  `--smoke` and `--record` through and lists the failures at the end.
- `python -m bench.bus_hop`: module → module messages through the bus, mailboxes and
  guest calls, against "the floor" (the same guest calls made directly through
  wasmtime's public API).
- `python -m bench.fastcall`: the cost of one guest call and one host callback, on
  the fast path against wasmtime's public API.
- `python -m bench.cache`: our compiled-module cache against wasmtime's
  `Config.cache`: load time cold and warm (the demo modules and a generated 2 MB
  one), entry size, and what a damaged entry does in each.
- `python -m bench.relay`: browser → `/ws` → the demo `chat` module → `ws_broadcast`
  → browser; messages/s flat out and latency at a fixed 1,000 messages/s.
- `python -m bench.fanout`: one module's `ws_broadcast` fanned out to 100 and 1,000
  WebSocket clients held by separate processes, beside a real `nats-server` doing the
  same over its WebSocket listener; delivery, rate, latency, server CPU and memory.
- `python -m bench.dev_loop`: per guest language, edit a module's source → built →
  serving → the new version answering, through a real server watching the sources
  (`tinywasm dev`); also module size, compile time on load and one message's round trip.
- `python -m bench.http`: `GET /m/echo` (a module's HTTP route) at 1 and 50
  connections against a plain aiohttp route of the same server, with `wrk` when it
  is installed; `--middlewares` adds echo behind two pass-through middlewares.
- `python -m bench.swap`: hot swaps under load; time from a file write to the new
  version serving, and the delivery gaps a swap causes.
- `python -m bench.scale`: start-up time and memory with 1, 100 and 500 modules,
  with the compile cache off, cold and warm.
- `python -m bench.fanout_workers`: 1,000 WebSocket clients spread over 1 and 2
  worker processes (the command line with `--workers N`), each worker's share from
  `X-Tinywasm-Worker`; 100 broadcasts/s against the target (100% delivered, p99 ≤
  20 ms), then a bounded ramp for the most frames/s sustained. The broadcasts come
  from the `fan` guest (`bench/httpfan.py`), driven by pipelined HTTP requests to its
  owner worker.
- `python -m bench.reference`: ours beside another server that speaks the reference's
  guest interface (`--reference-command 'CMD {port} {dir}'`, e.g. the Go reference,
  which is not part of this repository), same guests and clients, interleaved
  rounds: `/m/echo` at 50 and 1 connections, fan-out of 100 clients at 1,000/s.
"""

Row = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Machine:
    """Where a benchmark ran."""

    cpu: str
    cores: int
    python: str
    wasmtime: str
    aiohttp: str
    date: str
    load: float  # 1-minute load average when measured: other work skews the numbers

    @classmethod
    def detect(cls) -> Machine:
        return cls(
            cpu=_cpu_model(),
            cores=os.cpu_count() or 0,
            python=platform.python_version(),
            wasmtime=_version("wasmtime"),
            aiohttp=_version("aiohttp"),
            date=time.strftime("%Y-%m-%d %H:%M %Z"),
            load=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        )

    def describe(self) -> str:
        return (
            f"{self.cpu}, {self.cores} cores; Python {self.python}, "
            f"wasmtime {self.wasmtime}, aiohttp {self.aiohttp}; {self.date}; "
            f"load average {self.load:.2f}"
        )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def rss_kib() -> int:
    """This process's resident set size in KiB (VmRSS), 0 where /proc is missing."""
    return process_rss_kib("self")


def process_rss_kib(pid: int | str) -> int:
    """Resident set size in KiB (VmRSS) of process `pid`, 0 where /proc is missing."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_cpu_s(pid: int | str) -> float:
    """User + system CPU seconds process `pid` has used (all threads), NaN without /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # Fields after the parenthesised command name, which may hold spaces.
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """This process's CPU time, sampled on the event loop, so any window can be read later.

    Use it where the window is only known afterwards (e.g. timestamps sent back by a
    client process): ``async with CpuSampler() as cpu: ...`` then
    ``cpu.between(t0_ns, t1_ns)`` with ``time.monotonic_ns()`` values.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self._interval = interval
        self._samples: list[tuple[int, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CpuSampler:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._samples.append((time.monotonic_ns(), time.process_time()))

    async def _sample(self) -> None:
        while True:
            self._samples.append((time.monotonic_ns(), time.process_time()))
            await asyncio.sleep(self._interval)

    def at(self, t_ns: int) -> float:
        """CPU seconds used by `t_ns`, interpolated between the samples around it."""
        samples = self._samples
        if not samples:
            return float("nan")
        i = bisect.bisect_left(samples, (t_ns, -1.0))
        if i == 0:
            return samples[0][1]
        if i == len(samples):
            return samples[-1][1]
        (t0, c0), (t1, c1) = samples[i - 1], samples[i]
        return c0 + (c1 - c0) * (t_ns - t0) / max(1, t1 - t0)

    def between(self, begun_ns: int, ended_ns: int) -> float:
        return self.at(ended_ns) - self.at(begun_ns)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of already-sorted values, nearest rank; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[rank]


def add_loops_flag(parser: argparse.ArgumentParser) -> None:
    """``--loops``: the event loops our server is measured on, one run each, in order."""

    def parse(text: str) -> list[str]:
        loops = [part.strip() for part in text.split(",") if part.strip()]
        if not loops or not set(loops) <= {ASYNCIO, UVLOOP}:
            raise argparse.ArgumentTypeError(
                f"choose from {ASYNCIO} and {UVLOOP}, e.g. asyncio,uvloop"
            )
        return loops

    parser.add_argument(
        "--loops",
        type=parse,
        default=[ASYNCIO, UVLOOP],
        help="our server's event loops, one run each, in this order (asyncio,uvloop)",
    )


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on a new event loop of the kind `loop` names (asyncio or uvloop)."""
    choice = choose_loop(loop == UVLOOP)
    if choice.name != loop:
        main.close()
        raise SystemExit(f"error: {loop} was asked for but {choice.why}")
    with asyncio.Runner(loop_factory=choice.factory) as runner:
        return runner.run(main)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes that run in a few seconds (for CI)"
    )
    parser.add_argument(
        "--record", action="store_true", help=f"append the results to {BENCHMARKS.name}"
    )


class Children:
    """Load-generating processes, started with "spawn" and each sending back one result.

    A child runs ``asyncio.run(target(*args))`` and sends ``("ok", result)`` or
    ``("error", traceback)`` down a pipe; `results` raises with the child's
    traceback. Spawn, never fork: the parent may be running wasmtime threads.
    Use as a context manager: leaving it joins the children, terminating any
    still alive after `join_timeout` seconds.
    """

    def __init__(self, join_timeout: float = 5.0) -> None:
        self.ctx: SpawnContext = multiprocessing.get_context("spawn")
        self.procs: list[SpawnProcess] = []
        self._conns: list[Connection] = []
        self._join_timeout = join_timeout

    def start(self, target: Callable[..., Any], *args: Any, name: str) -> None:
        parent, child = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child_main, args=(child, target, args), name=name)
        proc.start()
        child.close()
        self.procs.append(proc)
        self._conns.append(parent)

    def ended(self) -> bool:
        """True once any child has exited (one that is done sends its result, then exits)."""
        return any(not p.is_alive() for p in self.procs)

    def crashed(self) -> bool:
        """True if a child died without sending a result (killed, or exited non-zero)."""
        return any(p.exitcode not in (None, 0) for p in self.procs)

    def results(self, timeout: float) -> list[Any]:
        """Every child's result, in start order; blocks up to `timeout` seconds in all."""
        results = []
        deadline = time.monotonic() + timeout
        for proc, conn in zip(self.procs, self._conns, strict=True):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{proc.name} sent no result within {timeout:.0f} s")
            try:
                status, value = conn.recv()
            except EOFError:
                raise RuntimeError(f"{proc.name} died (exit code {proc.exitcode})") from None
            if status != "ok":
                raise RuntimeError(f"{proc.name} failed:\n{value}")
            results.append(value)
        return results

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in self.procs:
            proc.join(self._join_timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        for conn in self._conns:
            conn.close()


def _child_main(conn: Connection, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", asyncio.run(target(*args))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def fail_on(problems: Sequence[str], script: str, *, warnings: Sequence[str] = ()) -> None:
    """End the run with exit status 1 if it went wrong; print `warnings` either way.

    `problems` are what makes a run invalid: a message lost, duplicated or out of
    order, a failed request, a module that did not load. They go to stderr, and the
    run exits non-zero before anything is recorded, so neither CI (``--smoke``) nor
    BENCHMARKS.md takes a broken run for a result. `warnings` are notes that do not
    invalidate the numbers (e.g. a comparison skipped because a tool is missing).
    """
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not problems:
        return
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    sys.exit(f"{script}: {len(problems)} problem(s): the run is invalid and was not recorded")


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run: ``python -m <module> <args>``."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", module, *(shlex.quote(a) for a in args)])


def markdown_table(rows: Sequence[Row], header: Row = ("metric", "value")) -> str:
    """Rows as a Markdown table whose columns line up in a terminal too."""
    all_rows = [header, *rows]
    w0 = max(len(r[0]) for r in all_rows)
    w1 = max(len(r[1]) for r in all_rows)
    lines = [f"| {a:<{w0}} | {b:>{w1}} |" for a, b in all_rows]
    lines.insert(1, f"|{'-' * (w0 + 2)}|{'-' * (w1 + 1)}:|")
    return "\n".join(lines)


def markdown_grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows of any width as a Markdown table: first column left-aligned, the rest right."""
    all_rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = f" {cells[0]:<{widths[0]}} "
        rest = (f" {c:>{w}} " for c, w in zip(cells[1:], widths[1:], strict=True))
        return "|" + "|".join([first, *rest]) + "|"

    rule = "|" + "|".join([f"{'-' * (widths[0] + 2)}", *(f"{'-' * (w + 1)}:" for w in widths[1:])])
    return "\n".join([line(all_rows[0]), rule + "|", *(line(r) for r in all_rows[1:])])


def record(
    title: str,
    command: str,
    rows: Sequence[Sequence[str]],
    *,
    machine: Machine,
    notes: str = "",
    path: Path = BENCHMARKS,
    header: Sequence[str] | None = None,
) -> None:
    """Append a section to BENCHMARKS.md (created with its header if missing).

    Pass the `machine` detected before the run, so its load average is the one
    the run started under, not the one it caused. With `header`, `rows` may
    have any width (see `markdown_grid`); without, they are (metric, value).
    """
    section = [
        f"## {title}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine.describe()}",
        "",
        markdown_grid(header or ("metric", "value"), rows),
        "",
    ]
    if notes:
        section += [notes.strip(), ""]
    existing = path.read_text(encoding="utf-8") if path.exists() else HEADER
    path.write_text(existing.rstrip("\n") + "\n\n" + "\n".join(section), encoding="utf-8")


# -- another checkout's server ---------------------------------------------------------------

CHECKOUT_START_TIMEOUT = 30.0  # seconds for a checkout's server to answer /healthz


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CheckoutServer:
    """A tinywasm server process from `checkout` (with its own ``.venv`` if it has one),
    for the length of a `with`: to measure another version beside this one, interleaved.
    `options` are more command-line options for it; by default it does not watch its
    folder and has no compile cache."""

    def __init__(
        self,
        checkout: Path,
        modules: Path,
        options: Sequence[str] = (),
        *,
        watch: bool = False,
        cache_dir: Path | None = None,
        start_timeout: float = CHECKOUT_START_TIMEOUT,
    ) -> None:
        venv_python = checkout / ".venv" / "bin" / "python"
        self.python = str(venv_python) if venv_python.is_file() else sys.executable
        self.checkout = checkout
        self.modules = modules
        self.port = _free_port()
        self.options = [
            *(() if watch else ("--no-watch",)),
            *("--cache-dir", "off" if cache_dir is None else str(cache_dir)),
            *options,
        ]
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def connect(self, timeout: float = 120.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def __enter__(self) -> CheckoutServer:
        env = {
            **os.environ,
            "TINYWASM_SERVER": "wasi",
            "PYTHONPATH": str(self.checkout),
        }
        self.proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "cmd.tinywasm",
                "--port",
                str(self.port),
                "--modules-dir",
                str(self.modules),
                "--log-level",
                "WARNING",
                *self.options,
            ],
            cwd=self.checkout,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                self.healthz(self.connect(timeout=5))
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server on port {self.port} did not start") from None
                time.sleep(0.1)

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @staticmethod
    def healthz(conn: http.client.HTTPConnection) -> int:
        """One /healthz; returns the client count."""
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/healthz answered {resp.status}")
        return int(json.loads(body)["clients"])
