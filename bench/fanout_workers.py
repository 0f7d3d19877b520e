"""Fan-out to 1,000 WebSocket clients over 1 and 2 worker processes, and the most it sustains.

Each worker count runs the real command line (``python -m tinywasm_wasi --workers N``,
with its embedded nats-server when N > 1) on 127.0.0.1 with the ``fan`` guest of
`bench.httpfan`: each ``GET /m/fan/<stamp>`` broadcasts the stamp on ``fan.out``. The
guest has one owner worker; its broadcast reaches the owner's own clients directly and
the other worker's clients over NATS. The clients (``bench.fanout.clients``) run in
``--procs`` processes of their own and connect to ``/ws?topic=fan.out``; SO_REUSEPORT
spreads them over the workers, and the table gives each worker's share (from the
``X-Tinywasm-Worker`` header of each handshake's answer). The publisher, a thread of
the bench process, keeps one keep-alive connection that landed on the owner.

Latency is from the publisher stamping a message to a client reading its frame
(CLOCK_MONOTONIC in both processes). Server CPU and memory are every server process's
(supervisor, workers, nats-server), from /proc.

Steps: first ``--rate`` broadcasts/s (the target: 100% delivered, p99 ≤ 20 ms), then a
ramp that doubles the rate (``--ramp``, at most ``MAX_STEPS`` steps) until a step is not
sustained: every frame delivered in order with no client cut off, the publish rate kept
(≥ 95 % of asked) and p99 ≤ ``SUSTAINED_P99_MS``. The last sustained step gives the
maximum frames/s for that worker count. Every step connects fresh clients.

    python -m bench.fanout_workers [--workers 1,2] [--clients 1000] [--rate 100]
                                   [--ramp 200,400,800] [--seconds 2] [--procs 2]
                                   [--loop uvloop] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import Machine, add_common_flags, command_line, fail_on, markdown_grid, record
from bench.common import percentile as pct
from bench.fanout import HEAD, Outcome, Settings, drive
from bench.httpfan import FAN, HttpPublisher, ServerProcess, write_fan
from bench.workers import NODE, Running
from tinywasm_wasi.cluster.nats_server import free_port
from tinywasm_wasi.eventloop import ASYNCIO, UVLOOP
from tinywasm_wasi.policy.placement import owner, worker_names

TARGET_P99_MS = 20.0  # the target at 100 broadcasts/s to 1,000 clients
SUSTAINED_P99_MS = 100.0  # a ramp step above this p99 is not "sustained"
RATE_KEPT = 0.95  # a step whose publisher fell below this share of the asked rate failed
MAX_STEPS = 6  # ramp steps at most, after the target step
STEP_TIMEOUT = 120.0  # seconds one step may take (connect, publish, drain)


@dataclass(frozen=True, slots=True)
class Step:
    workers: int
    settings: Settings
    outcome: Outcome | None  # None: the step failed outright (see `failure`)
    load: float  # 1-minute load average when the step began
    failure: str = ""

    @property
    def expected(self) -> int:
        return self.settings.clients * self.settings.messages

    @property
    def delivered(self) -> int:
        return len(self.outcome.latencies_ms) if self.outcome else 0

    @property
    def seconds(self) -> float:
        """First publish to last frame."""
        o = self.outcome
        return max(1e-9, (o.last_ns - o.first_ns) / 1e9) if o else float("nan")

    @property
    def frames_per_s(self) -> float:
        return self.delivered / self.seconds if self.outcome else 0.0

    @property
    def achieved_rate(self) -> float:
        o = self.outcome
        return self.settings.messages / o.publish_s if o and o.publish_s > 0 else 0.0

    def p(self, q: float) -> float:
        return pct(self.outcome.latencies_ms, q) if self.outcome else float("nan")

    def why_not_sustained(self) -> str:
        """Empty when the step was sustained, else the first reason it was not."""
        o = self.outcome
        if o is None:
            return self.failure
        if self.delivered != self.expected:
            return f"{self.delivered:,} of {self.expected:,} frames delivered"
        if o.out_of_order:
            return f"{o.out_of_order} frames out of order"
        if o.closed_by_server:
            return f"clients closed by the server: {o.closed_by_server}"
        if self.achieved_rate < RATE_KEPT * self.settings.rate:
            return f"published {self.achieved_rate:,.0f}/s of {self.settings.rate:,.0f}/s"
        if self.p(0.99) > SUSTAINED_P99_MS:
            return f"p99 {self.p(0.99):.0f} ms > {SUSTAINED_P99_MS:.0f} ms"
        return ""


async def run_workers(
    modules: Path, workers: int, loop: str, steps: list[Settings], ramp: int
) -> list[Step]:
    """One server with `workers` workers: the first `len(steps) - ramp` steps always run,
    the last `ramp` ones until one is not sustained."""
    port = free_port()
    running = Running(modules, workers, loop, port)
    done: list[Step] = []
    try:
        await running.serving()
        server = ServerProcess(running.proc.pid, port, f"{workers} worker(s)")
        names = worker_names(workers, NODE)
        fan_owner = owner(FAN, names) if workers > 1 else None
        publisher = await asyncio.to_thread(HttpPublisher, port, fan_owner)
        try:
            for i, s in enumerate(steps):
                load = os.getloadavg()[0]
                try:
                    outcome = await asyncio.wait_for(
                        drive(server.fan_server(publisher, s.clients), s), STEP_TIMEOUT
                    )
                    step = Step(workers, s, outcome, load)
                except Exception as exc:  # a ramp step past the limit may fail outright
                    if i < len(steps) - ramp:
                        raise
                    step = Step(workers, s, None, load, f"{type(exc).__name__}: {exc}")
                done.append(step)
                why = step.why_not_sustained()
                print(
                    f"# {workers} worker(s), {s.rate:,.0f} broadcasts/s: "
                    f"{step.frames_per_s:,.0f} frames/s, p99 {step.p(0.99):.1f} ms, "
                    f"{why or 'sustained'} (load {load:.1f})",
                    flush=True,
                )
                if why and i >= len(steps) - ramp:
                    break
        finally:
            publisher.close()
    finally:
        running.stop()
    return done


def table(steps: list[Step]) -> tuple[list[str], list[list[str]]]:
    header = [
        "workers",
        "broadcasts/s asked / kept",
        "clients per worker",
        "delivered",
        "frames/s",
        "p50 / p99 / max ms",
        "server CPU per frame",
        "server cores busy",
        "clients' cores busy",
        "RSS per client",
        "load",
        "sustained",
    ]
    rows = []
    for st in steps:
        o = st.outcome
        if o is None:
            rows.append([str(st.workers), f"{st.settings.rate:,.0f} / -", *[""] * 9, st.failure])
            continue
        shares = " / ".join(f"{w or '-'} {n}" for w, n in sorted(o.workers.items()))
        rows.append(
            [
                str(st.workers),
                f"{st.settings.rate:,.0f} / {st.achieved_rate:,.0f}",
                shares,
                f"{st.delivered / st.expected:.2%}",
                f"{st.frames_per_s:,.0f}",
                f"{st.p(0.5):.1f} / {st.p(0.99):.1f} / {st.p(1.0):.1f}",
                f"{o.server_cpu_s / max(1, st.delivered) * 1e6:.2f} µs",
                f"{o.server_cpu_s / st.seconds:.2f}",
                f"{o.clients_cpu_s / st.seconds:.2f}",
                f"{(o.rss_connected_kib - o.rss_idle_kib) / st.settings.clients:.1f} KiB",
                f"{st.load:.1f}",
                st.why_not_sustained() or "yes",
            ]
        )
    return header, rows


def summary(steps: list[Step], target_rate: float) -> tuple[str, list[str]]:
    """(notes for BENCHMARKS.md, problems that invalidate the run)."""
    notes, problems = [], []
    for workers in sorted({st.workers for st in steps}):
        mine = [st for st in steps if st.workers == workers]
        target = mine[0]
        if target.outcome is not None and target.outcome.out_of_order:
            problems.append(f"{workers} worker(s): frames out of order at the target rate")
        met = (
            target.delivered == target.expected
            and target.p(0.99) <= TARGET_P99_MS
            and target.settings.rate == target_rate
        )
        notes.append(
            f"{workers} worker(s), {target.settings.clients:,} clients at "
            f"{target.settings.rate:,.0f} broadcasts/s: {target.delivered / target.expected:.2%}"
            f" delivered, p99 {target.p(0.99):.1f} ms: target (100%, p99 ≤ "
            f"{TARGET_P99_MS:.0f} ms) {'met' if met else 'NOT met'}."
        )
        sustained = [st for st in mine if not st.why_not_sustained()]
        if sustained:
            best = max(sustained, key=lambda st: st.frames_per_s)
            notes.append(
                f"{workers} worker(s): most sustained {best.frames_per_s:,.0f} frames/s "
                f"({best.settings.rate:,.0f} broadcasts/s to {best.settings.clients:,} clients)."
            )
        else:
            notes.append(f"{workers} worker(s): no step was sustained.")
    return "\n".join(f"- {n}" for n in notes), problems


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not all(0 < r <= 100_000 for r in rates):
        raise argparse.ArgumentTypeError("each rate must be 1..100000 broadcasts/s")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout_workers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", default="1,2", help="worker counts, in order (1,2)")
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket clients (1000)")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="the target step's broadcasts/s (100)"
    )
    parser.add_argument(
        "--ramp",
        type=_rates,
        default=[200.0, 400.0, 800.0, 1600.0],
        help="broadcasts/s of the ramp's steps, until one is not sustained (200,400,800,1600)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="publishing time per step (2)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (2)")
    parser.add_argument("--loop", choices=(UVLOOP, ASYNCIO), default=UVLOOP, help="(uvloop)")
    add_common_flags(parser)
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    if not all(1 <= c <= 8 for c in counts) or not 1 <= args.clients <= 10_000:
        parser.error("--workers: 1 to 8 each; --clients: 1 to 10000")
    if args.smoke:
        counts, args.clients, args.rate, args.ramp, args.seconds = [2], 20, 50.0, [], 1.0
    ramp = args.ramp[:MAX_STEPS]
    machine = Machine.detect()
    print(f"# {machine.describe()}", flush=True)
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="bench-fanout-workers-") as tmp:
        modules = Path(tmp)
        write_fan(modules)
        for count in counts:
            settings = [
                Settings(
                    clients=args.clients,
                    messages=max(10, round(rate * args.seconds)),
                    rate=rate,
                    size=HEAD.size,
                    procs=max(1, min(args.procs, args.clients)),
                    queue_size=0,  # the server's default --ws-queue-size
                    timeout=STEP_TIMEOUT,
                )
                for rate in [args.rate, *ramp]
            ]
            steps += asyncio.run(run_workers(modules, count, args.loop, settings, len(ramp)))
    header, rows = table(steps)
    print(markdown_grid(header, rows))
    notes, problems = summary(steps, args.rate)
    print(notes)
    if args.smoke:
        problems += [
            f"{st.workers} worker(s): {st.why_not_sustained()}"
            for st in steps
            if st.delivered != st.expected
        ]
    fail_on(problems, "bench.fanout_workers")
    if args.record:
        record(
            f"fanout_workers: {args.clients:,} WebSocket clients over "
            f"{' and '.join(map(str, counts))} worker process(es), {args.loop}",
            command_line("bench.fanout_workers"),
            rows,
            machine=machine,
            header=header,
            notes=notes
            + f"\n\nClients in {args.procs} processes of their own; 'clients' cores busy' is "
            "their CPU over the step (first publish to last frame), on the same 2 cores "
            "as the server. Publisher: one keep-alive HTTP connection to the fan guest's "
            "owner, from a thread of the bench process. Sustained: every frame delivered "
            f"in order, ≥ {RATE_KEPT:.0%} of the asked rate kept, p99 ≤ "
            f"{SUSTAINED_P99_MS:.0f} ms. Server CPU and RSS: every server process "
            "(supervisor, workers, nats-server).",
        )


if __name__ == "__main__":
    main()
