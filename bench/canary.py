"""A canary's timeline under load: requests per version per second, errors, and the verdict.

A real `WasiServer` serves a "relay" guest at ``/m/relay`` (answering ``v1``). An
HTTP client asks it at a steady rate; after a second a canary of version 2 starts
through ``POST /api/modules/relay/canary``. Each second of the run is one row: the
answers from v1, from v2, the errors (non-200), and the moment of the verdict
(promoted or rolled back, with the server's reason). Two scenarios run in turn:

- ``clean``: the canary never fails and is promoted when its window passes;
- ``flaky``: the canary traps on every 20th request (5 %) and is rolled back as
  soon as its failures pass the window's budget.

The run is invalid (exit 1) if the clean canary is not promoted, the flaky one is
not rolled back, an error comes from anything but the flaky canary's traps, or the
flaky canary's errors exceed its share of the traffic.

    python -m bench.canary [--rate R] [--seconds S] [--percent P] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import Machine, add_common_flags, command_line, fail_on, markdown_grid
from bench.common import record as record_section
from tests.release_guests import flaky, versioned
from tinywasm_wasi.config import Config
from tinywasm_wasi.server import WasiServer

CANARY_AT = 1.0  # seconds into the run the canary starts


@dataclass(slots=True)
class Timeline:
    """Per second of the run: answers per version, errors; and the verdict's moment."""

    per_second: dict[int, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    canary_started: float | None = None
    verdict_at: float | None = None
    outcome: str | None = None
    reason: str | None = None

    def add(self, at: float, what: str) -> None:
        self.per_second[int(at)][what] += 1

    def rows(self) -> list[list[str]]:
        rows = []
        for second in sorted(self.per_second):
            c = self.per_second[second]
            events = []
            if self.canary_started is not None and int(self.canary_started) == second:
                events.append(f"canary started at {self.canary_started:.2f} s")
            if self.verdict_at is not None and int(self.verdict_at) == second:
                events.append(f"{self.outcome} at {self.verdict_at:.2f} s")
            rows.append(
                [
                    f"{second}-{second + 1} s",
                    str(c["v1"]),
                    str(c["v2"]),
                    str(c["error"]),
                    "; ".join(events),
                ]
            )
        return rows


async def scenario(name: str, rate: float, seconds: float, percent: float, window: int) -> Timeline:
    timeline = Timeline()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "relay.wasm").write_bytes(versioned(1))
        server = WasiServer(
            Config(
                port=0,
                modules_dir=folder,
                cache_dir=None,
                swap_probation=0.05,
                call_timeout=1.0,
                health_interval=0,
            )
        )
        await server.start()
        try:
            canary = versioned(2) if name == "clean" else flaky(2, every=20)
            settings = {
                "percent": percent,
                "promote_after": {"requests": window, "seconds": 1.0},
                "max_error_rate": 0.01,
            }
            async with aiohttp.ClientSession() as http:
                begun = time.monotonic()

                async def start_canary() -> None:
                    await asyncio.sleep(CANARY_AT)
                    form = aiohttp.FormData()
                    form.add_field("module", canary, filename="relay.wasm")
                    form.add_field("settings", json.dumps(settings))
                    async with http.post(f"{server.url}/api/modules/relay/canary", data=form) as r:
                        if r.status != 200:
                            raise RuntimeError(f"canary refused: {await r.text()}")
                    timeline.canary_started = time.monotonic() - begun

                starter = asyncio.create_task(start_canary())
                interval = 1.0 / rate
                n = 0
                while (now := time.monotonic() - begun) < seconds:
                    async with http.get(f"{server.url}/m/relay") as resp:
                        text = await resp.text()
                        timeline.add(now, text if resp.status == 200 else "error")
                    if (
                        timeline.verdict_at is None
                        and timeline.canary_started is not None
                        and "relay" not in server.host.view.canaries
                    ):
                        timeline.verdict_at = time.monotonic() - begun
                    n += 1
                    await asyncio.sleep(max(0.0, begun + n * interval - time.monotonic()))
                await starter
            await server.host.swapper.idle("relay")
            record = server.host.histories["relay"].records[-1]
            timeline.outcome, timeline.reason = record.outcome.value, record.reason
        finally:
            await server.stop()
    return timeline


def check(name: str, t: Timeline, percent: float) -> list[str]:
    problems = []
    want = "promoted" if name == "clean" else "rolled back"
    if t.outcome != want:
        problems.append(f"{name}: the canary ended {t.outcome!r}, not {want!r} ({t.reason})")
    total = sum(sum(c.values()) for c in t.per_second.values())
    errors = sum(c["error"] for c in t.per_second.values())
    if name == "clean" and errors:
        problems.append(f"clean: {errors} failed request(s)")
    if name == "flaky" and errors > total * percent / 100:
        problems.append(f"flaky: {errors} errors of {total} requests, over the canary's share")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    parser.add_argument("--percent", type=float, default=10.0, help="the canary's share")
    parser.add_argument(
        "--window", type=int, default=80, help="requests the canary must serve to be promoted"
    )
    add_common_flags(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rate, args.seconds, args.window = 100.0, 4.0, 20
    machine = Machine.detect()
    problems: list[str] = []
    tables = []
    for name in ("clean", "flaky"):
        t = asyncio.run(scenario(name, args.rate, args.seconds, args.percent, args.window))
        problems += check(name, t, args.percent)
        table = markdown_grid(["second", "v1", "v2 (canary)", "errors", "event"], t.rows())
        tables.append((name, t, table))
        print(f"\n{name}: {t.outcome} — {t.reason}\n{table}")
    fail_on(problems, "bench.canary")
    if args.record:
        for name, t, _table in tables:
            record_section(
                f"canary timeline ({name})",
                command_line("bench.canary"),
                t.rows(),
                machine=machine,
                header=["second", "v1", "v2 (canary)", "errors", "event"],
                notes=f"Verdict: {t.outcome} — {t.reason}. "
                f"{args.percent:g} % canary, window {args.window} requests and 1 s, "
                f"max error rate 0.01, {args.rate:g} requests/s from one client.",
            )


if __name__ == "__main__":
    main()
