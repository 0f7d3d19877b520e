"""Every benchmark scenario in one command, each in its own process; failures listed at the end.

Runs ``python -m bench.<name>`` for each scenario in turn, passing ``--smoke``
and ``--record`` through, with a time limit per scenario. A scenario whose
script is not in ``bench/`` yet is reported as skipped. Exits non-zero if any
scenario failed or timed out.

    python -m bench.all [--smoke] [--record] [--only NAME,...] [--skip NAME,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import add_common_flags

BENCH = Path(__file__).resolve().parent
# In the order they run: the cheap, module-only ones first, the long fan-out last but one.
SCENARIOS = (
    "bus_hop",
    "nats_hop",
    "fastcall",
    "cache",
    "relay",
    "http",
    "swap",
    "dev_loop",
    "sdk",
    "canary",
    "scale",
    "history",
    "workers",
    "fanout_workers",
    "reference",
    "wildcards",
    "fanout",
    "fanout_max",
)
# Scenario → (script, flags it always gets here): the full HTTP picture includes the
# middleware chain, and fan-out is measured paced and flat out.
SCRIPTS = {
    "http": ("http", ["--middlewares"]),
    "fanout_max": ("fanout", ["--clients", "100", "--rate", "0", "--messages", "3000"]),
}
SMOKE_LIMIT = 180.0  # seconds one scenario may take under --smoke
FULL_LIMIT = 1200.0  # seconds one full-size scenario may take


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    status: str  # "ok", "failed (exit N)", "timed out", "skipped: ..."
    seconds: float

    @property
    def failed(self) -> bool:
        return not (self.status == "ok" or self.status.startswith("skipped"))


def run(name: str, flags: list[str], limit: float) -> Outcome:
    """Run one scenario with its output going straight to ours."""
    script, extra = SCRIPTS.get(name, (name, []))
    if not (BENCH / f"{script}.py").is_file():
        return Outcome(name, f"skipped: bench/{script}.py is not there", 0.0)
    if flags[:1] == ["--smoke"] and name == "fanout_max":
        extra = []  # the smoke run of fanout already covers the script
    command = [sys.executable, "-m", f"bench.{script}", *extra, *flags]
    print(f"\n=== {' '.join(['python', *command[1:]])}", flush=True)
    begun = time.monotonic()
    try:
        done = subprocess.run(command, cwd=BENCH.parent, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        status = f"timed out after {limit:.0f} s"
    else:
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    return Outcome(name, status, time.monotonic() - begun)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.all", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--only", type=_names, help="comma-separated scenarios to run")
    parser.add_argument("--skip", type=_names, default=[], help="comma-separated scenarios")
    parser.add_argument(
        "--limit",
        type=float,
        help=f"seconds per scenario ({SMOKE_LIMIT:.0f} smoke, {FULL_LIMIT:.0f} full)",
    )
    add_common_flags(parser)
    args = parser.parse_args()
    flags = [*(["--smoke"] if args.smoke else []), *(["--record"] if args.record else [])]
    limit = args.limit or (SMOKE_LIMIT if args.smoke else FULL_LIMIT)
    names = [n for n in (args.only or SCENARIOS) if n not in args.skip]

    outcomes = [run(name, flags, limit) for name in names]
    width = max(len(o.name) for o in outcomes) if outcomes else 0
    print("\n=== summary")
    for o in outcomes:
        print(f"{o.name:<{width}}  {o.seconds:6.1f} s  {o.status}")
    failed = [o.name for o in outcomes if o.failed]
    if failed:
        sys.stdout.flush()
        print(f"\n{len(failed)} scenario(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
