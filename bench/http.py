"""HTTP requests answered by a module (``GET /m/echo``) against a plain route of the same server.

A real `WasiServer` on 127.0.0.1 loads the example ``echo`` module (compat
mode: ``handle("GET\\n/m/echo\\n")`` returns a NUL-terminated text). For the
comparison it also answers ``GET /healthz``, a plain aiohttp handler with no
module call (the server has no hook to add a route of the bench's own before
it starts, and /healthz is just as small: a JSON object of three keys), so the
ratio shows what the module call costs. With ``--middlewares`` the server also
loads a copy of echo as ``echo_mw`` with two pass-through middlewares in front
of it, ``10-pass1@[echo_mw].wasm`` and ``20-pass2@[echo_mw].wasm`` (compat
``handle`` returning 0: "not mine, pass it on"), so ``/m/echo_mw`` costs three
module calls and ``/m/echo`` still one, in the same run.

Each route is loaded at 1 and at 50 concurrent keep-alive connections for a
fixed time by ``wrk`` when it is on PATH (``apt-get install wrk``), otherwise by
Python aiohttp clients in separate processes; the table says which.

    python -m bench.http [--seconds S] [--connections 1,50] [--middlewares]
                         [--loops asyncio,uvloop] [--record] [--smoke]
                         [--checkout DIR --checkout DIR ... [--rounds N]]

Each route is measured once per event loop of ``--loops`` (the server's own
loop: asyncio's default, then uvloop's), one after the other in the same run.

**Before and after.** With ``--checkout DIR`` (repeat it; ``.`` is this one), one
server per checkout runs as its own process (with that checkout's ``.venv`` if it
has one), all at once, and wrk loads them in turn: every round, every route, every
checkout, the order rotating each round, so the machine's load falls on all of
them alike. Server CPU per request is read from each server's ``/proc``. The
summary gives each checkout's median and the median of its per-round ratios to
the first checkout: on a shared machine, compare only within such a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import tempfile
import time
from array import array
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    CheckoutServer,
    Children,
    Machine,
    add_common_flags,
    add_loops_flag,
    command_line,
    fail_on,
    markdown_grid,
    percentile,
    process_cpu_s,
    record,
    run_on,
)
from tests.wat import guest, write
from tinywasm_wasi.build import build_module
from tinywasm_wasi.config import DEFAULT_MODULES_DIR, Config
from tinywasm_wasi.server import WasiServer

ECHO_WASM = DEFAULT_MODULES_DIR / "echo.wasm"
ECHO_SOURCE = DEFAULT_MODULES_DIR.parent / "echo"
PLAIN, ECHO, ECHO_MW = "/healthz", "/m/echo", "/m/echo_mw"
PASS_WAT = guest('  (func (export "handle") (param i32 i32) (result i32) (i32.const 0))')
MIDDLEWARES = ("10-pass1@[echo_mw]", "20-pass2@[echo_mw]")
LOADER_MARGIN = 20.0  # seconds a load run may take beyond its duration (start-up, tear-down)
PYTHON_PROCS = 2  # Python client processes when wrk is missing (for more than 1 connection)

# wrk prints this JSON line when it is done; its latency figures are in microseconds.
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True, slots=True)
class Load:
    """What one load run measured."""

    requests: int
    seconds: float
    errors: int  # connection errors and timeouts
    non_2xx: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class Measured:
    route: str
    connections: int
    load: Load
    server_cpu_s: float
    loop: str  # the server's event loop: asyncio or uvloop


# -- load generators ------------------------------------------------------------------------


async def wrk(binary: str, url: str, connections: int, seconds: int, script: Path) -> Load:
    """Run wrk for `seconds` and read the JSON line its done() hook prints."""
    threads = 1  # one wrk thread drives 50 connections and leaves the other core to the server
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(seconds + LOADER_MARGIN):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{text}")
    r = json.loads(lines[-1])
    return Load(
        requests=r["requests"],
        seconds=r["duration_us"] / 1e6,
        errors=r["errors"],
        non_2xx=r["non_2xx"],
        p50_ms=r["p50_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3,
        max_ms=r["max_us"] / 1e3,
    )


async def python_clients(url: str, connections: int, seconds: int) -> dict[str, Any]:
    """Closed-loop keep-alive GETs on `connections` connections for `seconds` (a child process)."""
    latencies = array("q")
    counts = {"errors": 0, "non_2xx": 0}
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        begun = time.monotonic_ns()
        deadline = begun + int(seconds * 1e9)

        async def loop() -> None:
            while (sent := time.monotonic_ns()) < deadline:
                try:
                    async with session.get(url) as response:
                        await response.read()
                        if not 200 <= response.status < 300:
                            counts["non_2xx"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1
                    continue
                latencies.append(time.monotonic_ns() - sent)

        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = (time.monotonic_ns() - begun) / 1e9
    return {"latencies": latencies.tobytes(), "seconds": elapsed, **counts}


def run_python_clients(url: str, connections: int, seconds: int) -> Load:
    """Spread `connections` over client processes; blocking (call from a thread)."""
    procs = min(connections, PYTHON_PROCS)
    shares = [connections // procs + (i < connections % procs) for i in range(procs)]
    with Children() as children:
        for i, share in enumerate(shares):
            children.start(python_clients, url, share, seconds, name=f"bench-http-clients-{i}")
        results = children.results(seconds + LOADER_MARGIN)
    values = array("q")
    for r in results:
        values.frombytes(r["latencies"])
    latencies = sorted(v / 1e6 for v in values)
    return Load(
        requests=len(latencies),
        seconds=max(r["seconds"] for r in results),
        errors=sum(r["errors"] for r in results),
        non_2xx=sum(r["non_2xx"] for r in results),
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else float("nan"),
    )


# -- the server -----------------------------------------------------------------------------


def prepare_modules(directory: Path, middlewares: bool) -> None:
    """Put echo (and with `middlewares`, echo_mw and its two middlewares) in `directory`."""
    if ECHO_WASM.is_file():
        shutil.copy(ECHO_WASM, directory / "echo.wasm")
    else:  # not built into modules/dist yet: build it from its source
        build_module(ECHO_SOURCE, directory)
    if middlewares:
        shutil.copy(directory / "echo.wasm", directory / "echo_mw.wasm")
        for name in MIDDLEWARES:
            write(directory, name, PASS_WAT)


async def _check(base: str, routes: list[str]) -> None:
    """Each route to load must answer 200 before the load starts."""
    status = {}
    async with aiohttp.ClientSession() as session:
        for route in routes:
            async with session.get(base + route) as response:
                await response.read()
                status[route] = response.status
    bad = {route: status[route] for route in routes if status[route] != 200}
    if bad:
        raise SystemExit(f"error: routes did not answer 200 before the load: {bad}")


async def run(
    directory: Path,
    routes: list[str],
    connections: list[int],
    seconds: int,
    wrk_binary: str | None,
    loop: str,
) -> list[Measured]:
    """Start the server, load each route at each connection count, stop the server."""
    server = WasiServer(
        Config(
            host="127.0.0.1",
            port=0,
            modules_dir=directory,
            watch=False,
            log_level="WARNING",
        )
    )
    await server.start()
    measured = []
    try:
        await _check(server.url, routes)
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(WRK_SCRIPT)
            script.flush()
            for route in routes:
                url = server.url + route
                for conns in connections:
                    cpu_begun = time.process_time()
                    if wrk_binary:
                        load = await wrk(wrk_binary, url, conns, seconds, Path(script.name))
                    else:
                        load = await asyncio.to_thread(run_python_clients, url, conns, seconds)
                    cpu = time.process_time() - cpu_begun
                    measured.append(Measured(route, conns, load, cpu, loop))
                    rate = load.requests / load.seconds
                    print(f"# {loop} {route} x{conns}: {rate:,.0f} requests/s")
    finally:
        await server.stop()
    return measured


# -- checkouts, interleaved ------------------------------------------------------------------


async def run_checkouts(
    checkouts: list[Path],
    directory: Path,
    routes: list[str],
    connections: int,
    seconds: int,
    rounds: int,
    wrk_binary: str,
    loop: str,
) -> dict[tuple[str, str], list[float]]:
    """µs of server CPU per request by (route, checkout name), one value per round."""
    option = ["--uvloop", "on" if loop == "uvloop" else "off"]
    out: dict[tuple[str, str], list[float]] = {}
    with ExitStack() as stack:
        servers = [stack.enter_context(CheckoutServer(c, directory, option)) for c in checkouts]
        for server in servers:
            await _check(f"http://127.0.0.1:{server.port}", routes)
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(WRK_SCRIPT)
            script.flush()
            for r in range(rounds):
                turn = servers[r % len(servers) :] + servers[: r % len(servers)]
                for route in routes:
                    for server in turn:
                        assert server.proc is not None
                        url = f"http://127.0.0.1:{server.port}{route}"
                        cpu_begun = process_cpu_s(server.proc.pid)
                        load = await wrk(wrk_binary, url, connections, seconds, Path(script.name))
                        cpu = process_cpu_s(server.proc.pid) - cpu_begun
                        if load.errors or load.non_2xx:
                            raise RuntimeError(
                                f"{server.checkout.name} {route}: {load.errors} errors, "
                                f"{load.non_2xx} non-2xx"
                            )
                        us = cpu / max(1, load.requests) * 1e6
                        out.setdefault((route, server.checkout.name), []).append(us)
                        print(f"# {loop} round {r + 1} {route} {server.checkout.name}: {us:.0f} µs")
    return out


CHECKOUT_HEADER = ["loop", "route", "checkout", "µs per request (each round)", "median",
                   "vs the first (median of rounds)"]  # fmt: skip


def checkout_rows(
    loop: str, checkouts: list[Path], routes: list[str], cpu: dict[tuple[str, str], list[float]]
) -> list[list[str]]:
    table = []
    first = checkouts[0].name
    for route in routes:
        base = cpu[(route, first)]
        for checkout in checkouts:
            values = cpu[(route, checkout.name)]
            ratios = [v / b - 1 for v, b in zip(values, base, strict=True)]
            table.append(
                [
                    loop,
                    f"GET {route}",
                    checkout.name,
                    " ".join(f"{v:.0f}" for v in values),
                    f"{statistics.median(values):.1f}",
                    "" if checkout.name == first else f"{statistics.median(ratios):+.1%}",
                ]
            )
    return table


# -- report ---------------------------------------------------------------------------------

HEADER = [
    "loop",
    "route",
    "connections",
    "requests/s",
    "p50 / p99 / max ms",
    "errors / non-2xx",
    "server CPU per request",
    "requests/s ÷ /healthz",
]


def rows(measured: list[Measured]) -> list[list[str]]:
    plain: dict[tuple[str, int], float] = {}  # the latest /healthz row per (loop, connections)
    table = []
    for m in measured:
        rate = m.load.requests / m.load.seconds
        if m.route == PLAIN:
            plain[(m.loop, m.connections)] = rate
        base = plain.get((m.loop, m.connections))
        ratio = f"{rate / base:.2f}x" if base else ""
        table.append(
            [
                m.loop,
                f"GET {m.route}",
                f"{m.connections}",
                f"{rate:,.0f}",
                f"{m.load.p50_ms:.2f} / {m.load.p99_ms:.2f} / {m.load.max_ms:.1f}",
                f"{m.load.errors} / {m.load.non_2xx}",
                f"{m.server_cpu_s / max(1, m.load.requests) * 1e6:.0f} µs",
                ratio,
            ]
        )
    return table


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not counts or not all(1 <= c <= 1000 for c in counts):
        raise argparse.ArgumentTypeError("each connection count must be 1..1000")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--seconds", type=int, default=5, help="load time per route and count, s (5)"
    )
    parser.add_argument(
        "--connections", type=_counts, default=[1, 50], help="concurrent connections (1,50)"
    )
    parser.add_argument(
        "--middlewares",
        action="store_true",
        help="also /m/echo_mw: echo behind two pass-through middleware modules",
    )
    add_loops_flag(parser)
    parser.add_argument(
        "--python-clients", action="store_true", help="use the Python clients even if wrk exists"
    )
    parser.add_argument(
        "--checkout",
        type=Path,
        action="append",
        help="run the server from this checkout, as its own process (repeat to compare; "
        "'.' is this one); the first is the reference",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="with --checkout: rounds of every route (3)"
    )
    add_common_flags(parser)
    args = parser.parse_args()
    if args.smoke:
        args.seconds = 1
        args.rounds = 1
    if not 1 <= args.seconds <= 120:
        parser.error("--seconds must be 1..120")
    wrk_binary = None if args.python_clients else shutil.which("wrk")
    loader = "wrk" if wrk_binary else "Python aiohttp clients (wrk is not on PATH)"

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    machine = Machine.detect()
    print(f"# {machine.describe()}\n# load generator: {loader}")
    if args.checkout:
        compare_checkouts(args, wrk_binary, machine)
        return
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        directory = Path(tmp)
        prepare_modules(directory, args.middlewares)
        routes = [PLAIN, ECHO, *([ECHO_MW] if args.middlewares else [])]
        measured = []
        for name in args.loops:
            measured += run_on(
                name, run(directory, routes, args.connections, args.seconds, wrk_binary, name)
            )
    table = rows(measured)
    print(markdown_grid(HEADER, table))
    fail_on(
        [
            f"GET {m.route} x{m.connections}: {m.load.errors} request(s) failed "
            f"(connection errors or timeouts), {m.load.non_2xx} answered non-2xx"
            for m in measured
            if m.load.errors or m.load.non_2xx
        ],
        "bench.http",
    )
    if args.record:
        record(
            "http: a module's route against a plain route of the same server",
            command_line("bench.http"),
            table,
            machine=machine,
            header=HEADER,
            notes=f"Load generator: {loader}, {args.seconds:g} s per row, keep-alive. "
            "/healthz is a plain aiohttp handler of the same server, with no module call.",
        )


def compare_checkouts(args: argparse.Namespace, wrk_binary: str | None, machine: Machine) -> None:
    """``--checkout``: every checkout's server up at once, loaded in turn (see the top)."""
    if wrk_binary is None:
        raise SystemExit("error: --checkout needs wrk on PATH (apt-get install wrk)")
    checkouts = [c.resolve() for c in args.checkout]
    names = [c.name for c in checkouts]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: the checkouts' folder names must differ: {names}")
    connections = max(args.connections)
    routes = [PLAIN, ECHO, *([ECHO_MW] if args.middlewares else [])]
    table = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        directory = Path(tmp)
        prepare_modules(directory, args.middlewares)
        for loop in args.loops:
            seconds, rounds = args.seconds, args.rounds
            run = run_checkouts(
                checkouts, directory, routes, connections, seconds, rounds, wrk_binary, loop
            )
            cpu = asyncio.run(run)
            table += checkout_rows(loop, checkouts, routes, cpu)
    print(markdown_grid(CHECKOUT_HEADER, table))
    if args.record and not args.smoke:
        record(
            "http: server CPU per request, checkouts interleaved",
            command_line("bench.http"),
            table,
            machine=machine,
            header=CHECKOUT_HEADER,
            notes=f"wrk, {connections} connections, {args.seconds} s per row, {args.rounds} "
            "rounds; each checkout's server is its own process, all up at once, loaded in "
            "turn with the order rotating per round.",
        )


if __name__ == "__main__":
    main()
