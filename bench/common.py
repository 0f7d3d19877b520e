"""Helpers shared by the benchmark scripts: machine description, tables, BENCHMARKS.md.

Every script prints a table of `(metric, value)` rows and, with ``--record``,
appends it to ``BENCHMARKS.md`` at the repository root together with the
machine it ran on and the exact command line, so any number there can be
reproduced.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = [
    "BENCHMARKS",
    "Machine",
    "add_common_flags",
    "command_line",
    "markdown_table",
    "percentile",
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

- `python -m bench.bus_hop`: module → module messages through the bus, mailboxes and
  guest calls, against "the floor" (the same guest calls made directly through
  wasmtime's public API).
- `python -m bench.fanout`: one module's `ws_broadcast` fanned out to many WebSocket
  clients held by separate processes; delivery, rate, latency, server memory.
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
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of already-sorted values, nearest rank; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[rank]


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes that run in a few seconds (for CI)"
    )
    parser.add_argument(
        "--record", action="store_true", help=f"append the results to {BENCHMARKS.name}"
    )


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


def record(
    title: str,
    command: str,
    rows: Sequence[Row],
    *,
    machine: Machine,
    notes: str = "",
    path: Path = BENCHMARKS,
) -> None:
    """Append a section to BENCHMARKS.md (created with its header if missing).

    Pass the `machine` detected before the run, so its load average is the one
    the run started under, not the one it caused.
    """
    section = [
        f"## {title}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine.describe()}",
        "",
        markdown_table(rows),
        "",
    ]
    if notes:
        section += [notes.strip(), ""]
    existing = path.read_text(encoding="utf-8") if path.exists() else HEADER
    path.write_text(existing.rstrip("\n") + "\n\n" + "\n".join(section), encoding="utf-8")
