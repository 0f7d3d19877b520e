"""``--workers N`` against one process: HTTP requests/s and CPU, and failover after kill -9.

Each run starts the real command line (``python -m tinywasm_wasi``, as a user does)
on 127.0.0.1 with a folder holding the example ``echo`` module twice: as ``echo``,
declared ``replicas = "all"`` (stateless: it answers in whichever worker the request
reaches) and as ``owned`` (one owner worker). For each worker count and event loop it
loads ``GET /m/echo`` and the plain route ``GET /healthz`` with ``wrk`` (50
connections, one wrk thread) and reads the CPU time of every server process
(supervisor, workers, nats-server) from /proc.

Rolling restart (workers > 1): SIGHUP to the supervisor replaces the workers one at
a time while a NATS client publishes ``counter.inc`` (stamped, ``--rate`` per second)
to the WAT counter and a client sends ``GET /m/counter`` on new connections; the
counts the counter publishes tell how many messages were lost or handled twice.

Failover (workers > 1): the supervisor is paused (SIGSTOP, so it cannot restart
the worker), then ``kill -9`` the owner of ``owned``; ``GET /m/owned`` every 20 ms
until a surviving worker answers 200 (heartbeat timeout, then the load on the
new owner): the time from the kill to that answer. Then the supervisor resumes.

**Before and after.** With ``--checkout DIR`` (repeat it; ``.`` is this one), each
round starts the command line from every checkout (with that checkout's ``.venv`` if
it has one) for every worker count in turn, the order rotating each round, and loads
both routes; no rolling restart or failover. The summary gives each checkout's medians
over the rounds: on a shared machine, compare only within such a run.

    python -m bench.workers [--workers 1,2] [--loops uvloop,asyncio] [--seconds S]
                            [--rate N] [--record] [--smoke]
                            [--checkout DIR --checkout DIR ... [--rounds N]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import wasmtime
from nats.aio.msg import Msg

from bench.common import Machine, add_common_flags, command_line, fail_on, markdown_grid, record
from bench.common import process_cpu_s as cpu_of
from bus.nats import STAMP_PREFIX
from tinywasm_wasi.cluster.nats_server import free_port
from tinywasm_wasi.config import DEFAULT_MODULES_DIR
from tinywasm_wasi.eventloop import ASYNCIO, UVLOOP
from tinywasm_wasi.policy.placement import owner, worker_names
from tinywasm_wasi.server import WORKER_HEADER

COUNTER_WAT = Path(__file__).resolve().parent.parent / "examples/wat/counter/counter.wat"

ROUTES = ("/m/echo", "/healthz")
CONNECTIONS = 50
START_TIMEOUT = 120.0  # seconds for the workers to serve on a busy machine
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Row:
    workers: int
    loop: str
    route: str
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU per request, every server process
    errors: int


@dataclass
class Rolling:
    workers: int
    loop: str
    seconds: float  # the whole rolling restart
    sent: int
    lost: int
    doubled: int
    requests: int
    failed: int


NODE = "bench"  # the workers are bench-w0, bench-w1, ...


class Running:
    """The command line's process tree: the supervisor (or the one server) and its log."""

    def __init__(
        self, modules: Path, workers: int, loop: str, port: int, checkout: Path | None = None
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYWASM_")}
        env.update(TINYWASM_SERVER="wasi", TINYWASM_CACHE_DIR="off", TINYWASM_LOG_LEVEL="INFO")
        python = sys.executable
        if checkout is not None:  # that checkout's code, with its own venv if it has one
            venv_python = checkout / ".venv" / "bin" / "python"
            python = str(venv_python) if venv_python.is_file() else sys.executable
            env["PYTHONPATH"] = str(checkout)
        command = [
            python,
            "-m",
            "tinywasm_wasi",
            "--workers",
            str(workers),
            "--port",
            str(port),
            "--modules-dir",
            str(modules),
            "--no-watch",
            "--node",
            NODE,
            "--uvloop",
            "on" if loop == UVLOOP else "off",
        ]
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=checkout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.workers = workers
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def find(self, pattern: str) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        return [m for line in list(self.lines) if (m := regex.search(line))]

    def pids(self) -> list[int]:
        """Every server process alive now: this one, its workers and its nats-server."""
        pids = [self.proc.pid]
        pids += [int(m.group(1)) for m in self.find(r"worker \S*w\d+ started \(pid (\d+)\)")]
        pids += [int(m.group(1)) for m in self.find(r"nats-server .* \(pid (\d+)\)")]
        return [p for p in pids if Path(f"/proc/{p}").exists()]

    def cpu_s(self) -> float:
        return sum(cpu_of(p) for p in self.pids())

    async def serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while len(self.find(r"serving \d+ module")) < self.workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + "".join(self.lines[-20:]))
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


async def wrk(binary: str, url: str, seconds: int, script: Path) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "-s",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RuntimeError(f"wrk printed no summary: {err.decode()[-300:]}")


async def failover(base: str, running: Running) -> float:
    """Seconds from kill -9 of the owner of `owned` to a survivor's 200 for it."""
    name = owner("owned", worker_names(running.workers, NODE))
    pid = int(running.find(rf"worker {name} started \(pid (\d+)\)")[-1].group(1))
    os.kill(running.proc.pid, signal.SIGSTOP)  # no restart: the survivors must take it over
    try:
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - killed < START_TIMEOUT:
                try:
                    async with session.get(f"{base}/m/owned") as response:
                        if response.status == 200 and response.headers[WORKER_HEADER] != name:
                            return time.monotonic() - killed
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)
    finally:
        os.kill(running.proc.pid, signal.SIGCONT)
    raise RuntimeError(f"/m/owned did not answer within {START_TIMEOUT:g} s of the kill")


async def rolling(base: str, running: Running, loop: str, rate: int) -> Rolling:
    """SIGHUP to the supervisor under a stamped message stream and HTTP requests."""
    url = running.find(r"(?:embedded nats-server on|NATS) (nats://[\d.:]+)")[0].group(1)
    nc = await nats.connect(url)
    values: list[int] = []

    async def on_value(msg: Msg) -> None:
        values.append(int(msg.data))

    await nc.subscribe("tw.t.counter.value", cb=on_value)
    await nc.flush()
    done = asyncio.Event()
    sent = 0
    requests = failed = 0

    async def publish() -> None:
        nonlocal sent
        begun = time.monotonic()
        while not done.is_set():
            due = int((time.monotonic() - begun) * rate) - sent
            for _ in range(max(0, due)):
                sent += 1
                await nc.publish("tw.t.counter.inc", b"+1", reply=f"{STAMP_PREFIX}bench.{sent}")
            await nc.flush()
            await asyncio.sleep(0.005)

    async def ask() -> None:
        nonlocal requests, failed
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not done.is_set():
                requests += 1
                try:
                    async with session.get(f"{base}/m/counter") as response:
                        await response.read()
                        failed += response.status != 200
                except aiohttp.ClientError:
                    failed += 1

    before = len(running.find(r"rolling restart done"))
    tasks = [asyncio.create_task(publish()), asyncio.create_task(ask())]
    begun = time.monotonic()
    running.proc.send_signal(signal.SIGHUP)
    while len(running.find(r"rolling restart done")) == before:
        if time.monotonic() - begun > START_TIMEOUT * running.workers:
            raise RuntimeError("the rolling restart did not finish")
        await asyncio.sleep(0.05)
    took = time.monotonic() - begun
    done.set()
    await asyncio.gather(*tasks)
    deadline = time.monotonic() + 30
    while len(values) < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await nc.close()
    seen = set(values)
    start = min(seen, default=1)  # counts before the stream (none: the counter is fresh)
    lost = sum(1 for v in range(start, start + sent) if v not in seen)
    return Rolling(
        running.workers, loop, took, sent, lost, len(values) - len(seen), requests, failed
    )


async def one(
    modules: Path,
    workers: int,
    loop: str,
    seconds: int,
    binary: str,
    script: Path,
    rate: int,
    checkout: Path | None = None,
) -> tuple[list[Row], float | None, Rolling | None]:
    """Both routes under load; with more than one worker (and no `checkout`), a rolling
    restart and a failover too."""
    port = free_port()
    running = Running(modules, workers, loop, port, checkout)
    base = f"http://127.0.0.1:{port}"
    rows = []
    took = None
    restart = None
    try:
        await running.serving()
        for route in ROUTES:
            begun = running.cpu_s()
            load = await wrk(binary, base + route, seconds, script)
            cpu = running.cpu_s() - begun
            n = max(1, int(load["requests"]))
            rows.append(
                Row(
                    workers,
                    loop,
                    route,
                    n / (load["duration_us"] / 1e6),
                    load["p50_us"] / 1000,
                    load["p99_us"] / 1000,
                    cpu / n * 1e6,
                    int(load["errors"] + load["non_2xx"]),
                )
            )
            print(
                f"# workers {workers} {loop} {route}: {rows[-1].rate:,.0f} requests/s", flush=True
            )
        if workers > 1 and checkout is None:
            restart = await rolling(base, running, loop, rate)
            print(
                f"# workers {workers} {loop}: rolling restart {restart.seconds:.1f} s, "
                f"{restart.sent} messages, {restart.lost} lost, {restart.doubled} twice, "
                f"{restart.requests} requests, {restart.failed} failed",
                flush=True,
            )
            took = await failover(base, running)
            print(f"# workers {workers} {loop}: failover {took:.2f} s", flush=True)
    finally:
        running.stop()
    return rows, took, restart


def prepare(modules: Path) -> Path:
    """Fill `modules` with the bench's modules and limits; returns the wrk script's path."""
    shutil.copy(DEFAULT_MODULES_DIR / "echo.wasm", modules / "echo.wasm")
    shutil.copy(DEFAULT_MODULES_DIR / "echo.wasm", modules / "owned.wasm")
    (modules / "counter.wasm").write_bytes(wasmtime.wat2wasm(COUNTER_WAT.read_text()))
    (modules / "limits.toml").write_text('[echo]\nreplicas = "all"\n')
    script = modules / "done.lua"
    script.write_text(WRK_SCRIPT)
    return script


def _name(checkout: Path) -> str:
    return checkout.resolve().name


def compare_checkouts(
    args: argparse.Namespace, counts: list[int], loops: list[str], binary: str, machine: Machine
) -> None:
    """``--checkout``: every checkout and worker count in turn, per round (see the top)."""
    checkouts: list[Path] = [c.resolve() for c in args.checkout]
    if len({_name(c) for c in checkouts}) != len(checkouts):
        raise SystemExit("error: --checkout: give checkouts whose folder names differ")
    runs = [(c, n) for n in counts for c in checkouts]
    got: dict[tuple[str, str, int, str], list[Row]] = {}  # (loop, checkout, workers, route)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        modules = Path(tmp)
        script = prepare(modules)
        for loop in loops:
            for r in range(args.rounds):
                turn = runs[r % len(runs) :] + runs[: r % len(runs)]
                for checkout, count in turn:
                    rows, _, _ = asyncio.run(
                        one(modules, count, loop, args.seconds, binary, script, 0, checkout)
                    )
                    for row in rows:
                        got.setdefault((loop, _name(checkout), count, row.route), []).append(row)
                        print(
                            f"# {loop} round {r + 1} {_name(checkout)} workers {count} "
                            f"{row.route}: {row.rate:,.0f} requests/s, {row.cpu_us:.0f} µs",
                            flush=True,
                        )
    header = [
        "loop",
        "checkout",
        "workers",
        "route",
        "requests/s (each round)",
        "vs 1 worker",
        "server CPU per request (each round)",
        "CPU ÷ /healthz's",
        "errors",
    ]
    table = []
    for (loop, name, count, route), rows in got.items():
        one_worker = got.get((loop, name, 1, route))
        plain = got.get((loop, name, count, "/healthz"))
        # Ratios within a round (the same moment's load), then their median.
        scale = (
            statistics.median(a.rate / b.rate for a, b in zip(rows, one_worker, strict=True))
            if one_worker is not None and count != 1
            else None
        )
        cpu = (
            statistics.median(a.cpu_us / b.cpu_us for a, b in zip(rows, plain, strict=True))
            if plain is not None and route != "/healthz"
            else None
        )
        table.append(
            [
                loop,
                name,
                str(count),
                f"GET {route}",
                " / ".join(f"{r.rate:,.0f}" for r in rows),
                "" if scale is None else f"{scale:.2f}x",
                " / ".join(f"{r.cpu_us:.0f}" for r in rows) + " µs",
                "" if cpu is None else f"{cpu:.2f}x",
                str(sum(r.errors for r in rows)),
            ]
        )
    print(markdown_grid(header, table))
    after = os.getloadavg()[0]
    problems = [f"{r.errors} failed: {r}" for rows in got.values() for r in rows if r.errors]
    fail_on(problems, "bench.workers")
    if args.record:
        record(
            'workers, before and after: /m/echo (replicas = "all") and /healthz by checkout',
            command_line("bench.workers"),
            table,
            machine=machine,
            header=header,
            notes=f"{args.rounds} rounds; in each, every checkout and worker count in turn "
            f"(the order rotating), wrk 1 thread, {CONNECTIONS} connections, {args.seconds} s "
            "per route. Ratios are taken within a round, then their median. Server CPU is "
            "every server process (supervisor, workers, nats-server) from /proc. Load "
            f"average {machine.load:.2f} at the start, {after:.2f} at the end.",
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.workers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", default="1,2", help="worker counts, in order (1,2)")
    parser.add_argument("--loops", default="uvloop,asyncio", help="event loops (uvloop,asyncio)")
    parser.add_argument("--seconds", type=int, default=5, help="load time per route (5)")
    parser.add_argument(
        "--rate", type=int, default=1000, help="messages/s during the rolling restart (1000)"
    )
    parser.add_argument(
        "--checkout",
        type=Path,
        action="append",
        default=[],
        help="run the command line from this checkout (repeat to compare; '.' is this one)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="with --checkout: rounds of every run (3)"
    )
    add_common_flags(parser)
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    loops = [lp.strip() for lp in args.loops.split(",")]
    if not set(loops) <= {ASYNCIO, UVLOOP} or not all(1 <= c <= 8 for c in counts):
        parser.error("--loops: asyncio and/or uvloop; --workers: 1 to 8 each")
    if args.smoke:
        counts, loops, args.seconds, args.rate = [2], [UVLOOP], 1, 200
    binary = shutil.which("wrk")
    if binary is None:
        fail_on([], "bench.workers", warnings=["wrk is not on PATH (apt-get install wrk): skipped"])
        return
    machine = Machine.detect()
    print(f"# {machine.describe()}")
    if args.checkout:
        compare_checkouts(args, counts, loops, binary, machine)
        return
    rows: list[Row] = []
    failovers: dict[tuple[int, str], float] = {}
    restarts: list[Rolling] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        modules = Path(tmp)
        script = prepare(modules)
        for loop in loops:
            for count in counts:
                got, took, restart = asyncio.run(
                    one(modules, count, loop, args.seconds, binary, script, args.rate)
                )
                rows += got
                if took is not None:
                    failovers[(count, loop)] = took
                if restart is not None:
                    restarts.append(restart)
    one_worker = {(r.loop, r.route): r.rate for r in rows if r.workers == 1}
    plain = {(r.workers, r.loop): r for r in rows if r.route == "/healthz"}
    header = [
        "workers",
        "loop",
        "route",
        "requests/s",
        "vs 1 worker",
        "p50 / p99 ms",
        "server CPU per request",
        "CPU ÷ /healthz's",
        "errors",
    ]
    table = []
    for r in rows:
        base = one_worker.get((r.loop, r.route))
        ref = plain.get((r.workers, r.loop))
        table.append(
            [
                str(r.workers),
                r.loop,
                f"GET {r.route}",
                f"{r.rate:,.0f}",
                f"{r.rate / base:.2f}x" if base else "",
                f"{r.p50_ms:.2f} / {r.p99_ms:.2f}",
                f"{r.cpu_us:.0f} µs",
                f"{r.cpu_us / ref.cpu_us:.2f}x" if ref and ref.cpu_us else "",
                str(r.errors),
            ]
        )
    print(markdown_grid(header, table))
    notes = "".join(
        f"Failover, {count} workers, {loop}: kill -9 of the owner of a module to a "
        f"survivor's 200 for it (supervisor paused): {took:.2f} s.\n"
        for (count, loop), took in failovers.items()
    )
    notes += "".join(
        f"Rolling restart (SIGHUP), {r.workers} workers, {r.loop}: {r.seconds:.1f} s; "
        f"{r.sent:,} messages at {args.rate:,}/s through the counter: {r.lost} lost, "
        f"{r.doubled} handled twice; {r.requests:,} HTTP requests: {r.failed} failed.\n"
        for r in restarts
    )
    print(notes)
    problems = [f"{r.errors} failed requests: {r}" for r in rows if r.errors]
    problems += [f"rolling restart: {r}" for r in restarts if r.lost or r.doubled or r.failed]
    fail_on(problems, "bench.workers")
    if args.record:
        record(
            'workers: /m/echo (replicas = "all") and /healthz, 1 and 2 worker processes',
            command_line("bench.workers"),
            table,
            machine=machine,
            header=header,
            notes=notes
            + f"wrk, 1 thread, {CONNECTIONS} connections, {args.seconds} s per row; server "
            "CPU is every server process (supervisor, workers, nats-server) from /proc.",
        )


if __name__ == "__main__":
    main()
