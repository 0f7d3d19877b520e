"""Our server beside another server that speaks the reference's guest interface, in the same run.

The other server is given as ``--reference-command`` (or ``TINYWASM_REFERENCE_COMMAND``):
a command line with ``{port}`` and ``{dir}`` in it, which the bench fills in and runs,
and which must serve on 127.0.0.1:{port} every ``*.wasm`` in {dir} at ``/m/<name>``
and ``/ws?topic=T`` (the Go reference, tinywasm/wasi, does with a ten-line main). That
server is not part of this repository: without the option the bench measures ours
only and says so.

Every server gets the same guest ``.wasm`` files: the example ``echo`` and the ``fan``
guest of `bench.httpfan`. Ours runs as the command line, once per ``--workers`` count
(echo declared ``replicas = "all"``). All servers run at once; each round measures
every server in turn, the order rotating per round, so the machine's load falls on all
alike:

- ``GET /m/echo`` with wrk (one thread) at 50 connections and at 1, ``--seconds`` each;
- fan-out: ``--fan-clients`` WebSocket clients in 2 processes of their own, the fan
  guest broadcasting ``--fan-rate`` stamped messages/s for 2 s.

Server CPU is read from /proc over each server's processes; "cores" is that CPU over
the wall time of the measurement. The summary gives each server's median over the
rounds and its ratio to the reference.

    python -m bench.reference [--reference-command CMD] [--workers 1,2] [--rounds 2]
                              [--seconds 5] [--fan-clients 100] [--fan-rate 1000]
                              [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Machine, add_common_flags, command_line, fail_on, markdown_grid, record
from bench.common import percentile as pct
from bench.fanout import HEAD, Outcome, Settings, drive
from bench.http import WRK_SCRIPT, prepare_modules, wrk
from bench.httpfan import FAN, HttpPublisher, ServerProcess, write_fan
from bench.workers import NODE, Running
from tinywasm_wasi.cluster.nats_server import free_port
from tinywasm_wasi.eventloop import UVLOOP
from tinywasm_wasi.policy.placement import owner, worker_names

REFERENCE = "reference"
REFERENCE_ENV = "TINYWASM_REFERENCE_COMMAND"
START_TIMEOUT = 60.0  # seconds for the reference to answer /m/echo
FAN_SECONDS = 2.0
FAN_PROCS = 2
ECHO = "/m/echo"


@dataclass(slots=True)
class Measured:
    """One server's figures in one round."""

    server: str
    round: int
    load: float
    echo: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)
    # connections -> (requests/s, server CPU µs per request, cores busy, p99 ms)
    fan: Outcome | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Under:
    """A server under test: its name, its processes and how to reach the fan guest."""

    name: str
    process: ServerProcess
    fan_owner: str | None


class ReferenceProcess:
    """The reference's command, filled in and started; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, template: str, modules: Path, log: Path) -> None:
        self.port = free_port()
        argv = [part.format(port=self.port, dir=str(modules)) for part in shlex.split(template)]
        if not argv:
            raise SystemExit(f"error: --reference-command is empty ({REFERENCE_ENV}?)")
        self._log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=modules, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        url = f"http://127.0.0.1:{self.port}{ECHO}"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self._log.read_text(errors="replace")[-600:]
                self.stop()
                raise SystemExit(
                    f"error: the reference did not answer {ECHO} on port {self.port} "
                    f"(exit {self.proc.returncode}); its output:\n{tail}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def start_ours(stack: ExitStack, modules: Path, workers: int) -> Under:
    port = free_port()
    running = Running(modules, workers, UVLOOP, port)
    stack.callback(running.stop)
    await running.serving()
    fan_owner = owner(FAN, worker_names(workers, NODE)) if workers > 1 else None
    name = f"tinywasm, {workers} worker{'s' * (workers > 1)}"
    return Under(name, ServerProcess(running.proc.pid, port, name), fan_owner)


async def measure(
    under: Under, rnd: int, wrk_binary: str, script: Path, seconds: int, fan: Settings
) -> Measured:
    m = Measured(under.name, rnd, os.getloadavg()[0])
    proc = under.process
    for connections in (50, 1):
        begun_cpu, begun = proc.cpu_s(), time.monotonic()
        load = await wrk(
            wrk_binary, f"http://127.0.0.1:{proc.port}{ECHO}", connections, seconds, script
        )
        cpu, wall = proc.cpu_s() - begun_cpu, time.monotonic() - begun
        n = max(1, load.requests)
        m.echo[connections] = (n / load.seconds, cpu / n * 1e6, cpu / wall, load.p99_ms)
        if load.errors or load.non_2xx:
            (m.warnings if under.name == REFERENCE else m.errors).append(
                f"{under.name}: {ECHO} x{connections} round {rnd}: {load.errors} failed "
                f"requests, {load.non_2xx} answers not 2xx"
            )
        print(
            f"# round {rnd} {under.name}: {ECHO} x{connections}: {n / load.seconds:,.0f} req/s, "
            f"{cpu / n * 1e6:.0f} µs CPU each",
            flush=True,
        )
    publisher = await asyncio.to_thread(HttpPublisher, proc.port, under.fan_owner)
    try:
        m.fan = await drive(proc.fan_server(publisher, fan.clients), fan)
    finally:
        publisher.close()
    got, want = len(m.fan.latencies_ms), fan.clients * fan.messages
    reordered = m.fan.out_of_order
    if got != want or reordered:
        # Ours must lose nothing and fail nothing; the reference drops frames past a
        # client's 256-frame buffer by design, and its guest calls race (malloc is called
        # from every HTTP goroutine at once): results to report, not a broken run.
        (m.warnings if under.name == REFERENCE else m.errors).append(
            f"{under.name}: fan-out round {rnd}: {got:,} of {want:,} frames delivered, "
            f"{reordered} out of order"
        )
    print(
        f"# round {rnd} {under.name}: fan-out {got / want:.2%}, "
        f"p99 {pct(m.fan.latencies_ms, 0.99):.2f} ms",
        flush=True,
    )
    return m


def rows(measured: list[Measured], fan: Settings) -> tuple[list[str], list[list[str]]]:
    header = [
        "server",
        "round",
        f"{ECHO} x50 req/s",
        "CPU per request",
        "cores",
        f"{ECHO} x1 req/s",
        "CPU per request",
        f"fan-out {fan.clients} x {fan.rate:,.0f}/s delivered",
        "p50 / p99 ms",
        "CPU per frame",
        "RSS per client",
        "load",
    ]
    out = []
    for m in measured:
        r50, c50, k50, _ = m.echo[50]
        r1, c1, _, _ = m.echo[1]
        o = m.fan
        assert o is not None
        frames = max(1, len(o.latencies_ms))
        out.append(
            [
                m.server,
                str(m.round),
                f"{r50:,.0f}",
                f"{c50:.0f} µs",
                f"{k50:.2f}",
                f"{r1:,.0f}",
                f"{c1:.0f} µs",
                f"{len(o.latencies_ms) / (fan.clients * fan.messages):.2%}",
                f"{pct(o.latencies_ms, 0.5):.2f} / {pct(o.latencies_ms, 0.99):.2f}",
                f"{o.server_cpu_s / frames * 1e6:.1f} µs",
                f"{(o.rss_connected_kib - o.rss_idle_kib) / fan.clients:.1f} KiB",
                f"{m.load:.1f}",
            ]
        )
    return header, out


def medians(measured: list[Measured]) -> tuple[list[str], list[list[str]]]:
    """Per server, the median over its rounds, and the ratio to the reference's."""
    servers = list(dict.fromkeys(m.server for m in measured))

    def med(server: str, value: Callable[[Measured], float]) -> float:
        return statistics.median(value(m) for m in measured if m.server == server)

    def p99(m: Measured) -> float:
        return pct(m.fan.latencies_ms, 0.99) if m.fan else float("nan")

    figures: list[tuple[str, Callable[[Measured], float], str]] = [
        (f"{ECHO} x50 req/s", lambda m: m.echo[50][0], "{:,.0f}"),
        (f"{ECHO} x50 CPU µs per request", lambda m: m.echo[50][1], "{:.0f}"),
        (f"{ECHO} x50 server cores busy", lambda m: m.echo[50][2], "{:.2f}"),
        (f"{ECHO} x1 req/s", lambda m: m.echo[1][0], "{:,.0f}"),
        ("fan-out p99 ms", p99, "{:.2f}"),
    ]
    header = ["figure (median of rounds)", *servers]
    ref = REFERENCE if REFERENCE in servers else None
    out = []
    for label, value, fmt in figures:
        cells = []
        for server in servers:
            v = med(server, value)
            cell = fmt.format(v)
            if ref and server != ref:
                cell += f" ({v / med(ref, value):.2f}x)"
            cells.append(cell)
        out.append([label, *cells])
    return header, out


def fan_settings(args: argparse.Namespace) -> Settings:
    return Settings(
        clients=args.fan_clients,
        messages=max(10, round(args.fan_rate * args.fan_seconds)),
        rate=args.fan_rate,
        size=HEAD.size,
        procs=FAN_PROCS,
        queue_size=0,  # the servers' own
        timeout=120.0,
    )


async def run(
    args: argparse.Namespace, modules_ours: Path, modules_ref: Path, tmp: Path
) -> list[Measured]:
    wrk_binary = shutil.which("wrk")
    assert wrk_binary is not None
    script = tmp / "done.lua"
    script.write_text(WRK_SCRIPT)
    fan = fan_settings(args)
    measured: list[Measured] = []
    with ExitStack() as stack:
        servers = [await start_ours(stack, modules_ours, n) for n in args.workers]
        if args.reference_command:
            ref = ReferenceProcess(args.reference_command, modules_ref, tmp / "reference.log")
            stack.callback(ref.stop)
            await asyncio.to_thread(ref.wait_serving)
            servers.append(Under(REFERENCE, ServerProcess(ref.proc.pid, ref.port, REFERENCE), None))
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(servers)
            for under in servers[shift:] + servers[:shift]:
                measured.append(await measure(under, rnd, wrk_binary, script, args.seconds, fan))
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--reference-command",
        default=os.environ.get(REFERENCE_ENV, ""),
        help="the other server's command line, with {port} and {dir} (env "
        f"{REFERENCE_ENV}); without it only ours is measured",
    )
    parser.add_argument(
        "--workers",
        type=lambda t: [int(c) for c in t.split(",")],
        default=[1, 2],
        help="our worker counts (1,2)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds, order rotating (2)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk time per row (5)")
    parser.add_argument("--fan-clients", type=int, default=100, help="fan-out clients (100)")
    parser.add_argument("--fan-rate", type=float, default=1000.0, help="broadcasts/s (1000)")
    parser.add_argument("--fan-seconds", type=float, default=FAN_SECONDS, help="(2)")
    add_common_flags(parser)
    args = parser.parse_args()
    if not all(1 <= n <= 8 for n in args.workers) or not 1 <= args.rounds <= 10:
        parser.error("--workers: 1 to 8 each; --rounds: 1 to 10")
    if args.smoke:
        args.workers, args.rounds, args.seconds = [1], 1, 1
        args.fan_clients, args.fan_rate, args.fan_seconds = 10, 200.0, 0.5
    if shutil.which("wrk") is None:
        fail_on([], "bench.reference", warnings=["wrk is not on PATH (apt-get install wrk)"])
        return
    if not args.reference_command:
        print(
            "# the reference is skipped: no --reference-command (or "
            f"{REFERENCE_ENV}); it is not part of this repository, so only ours is measured",
            flush=True,
        )
    machine = Machine.detect()
    print(f"# {machine.describe()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp_name:
        tmp = Path(tmp_name)
        ours, ref = tmp / "ours", tmp / "reference"
        for folder in (ours, ref):
            folder.mkdir()
            prepare_modules(folder, middlewares=False)
            write_fan(folder)
        (ours / "limits.toml").write_text('[echo]\nreplicas = "all"\n')
        measured = asyncio.run(run(args, ours, ref, tmp))
    header, table = rows(measured, fan_settings(args))
    print(markdown_grid(header, table))
    med_header, med_table = medians(measured)
    print(markdown_grid(med_header, med_table))
    warnings = [w for m in measured for w in m.warnings]
    fail_on([e for m in measured for e in m.errors], "bench.reference", warnings=warnings)
    if args.record:
        versus = " beside the Go reference" if args.reference_command else ""
        record(
            f"reference: /m/echo and fan-out, ours{versus}, same guests and clients",
            command_line("bench.reference", _argv_without_command()),
            med_table,
            machine=machine,
            header=med_header,
            notes=markdown_grid(header, table)
            + "\n\nwrk: 1 thread; fan-out: clients in 2 processes of their own, the fan "
            "guest driven by requests pipelined on one keep-alive HTTP connection at the "
            "asked rate (open loop). Server CPU from /proc over each server's processes "
            "(ours: supervisor, workers and nats-server)."
            + "".join(f"\nWarning: {w}." for w in warnings),
        )


def _argv_without_command() -> list[str]:
    """The command line as recorded: the reference's own command is a local path, so it
    is replaced by a placeholder."""
    argv = list(sys.argv[1:])
    for i, a in enumerate(argv):
        if a == "--reference-command" and i + 1 < len(argv):
            argv[i + 1] = "<the reference's command>"
        elif a.startswith("--reference-command="):
            argv[i] = "--reference-command=<the reference's command>"
    return argv


if __name__ == "__main__":
    main()
