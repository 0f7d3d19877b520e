"""The author's loop per language: edit a source, save, and the new version answering.

For each language with a `tinywasm new` template, a module is scaffolded into a temp
folder, built once, and served by a real `WasiServer` that watches its sources
(`watch_sources`, as `tinywasm dev` does). One WebSocket client talks to the module on its
topic. Each round edits the source (a changed string, so the build differs), and times:

- edit → built: the `$sys.build` report arriving (the debounce, the compiler and the
  loader's checks);
- edit → serving: the registry serving the new sha256 (plus the swap);
- edit → answering: the first answer to a message sent once it serves.

It also reports the module's size, its compile time on load (no cache) and the round
trip of one message through it (browser → module → browser), the median of 200.

    python -m bench.dev_loop [--edits N] [--languages c,zig,...] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import Machine, add_common_flags, command_line, fail_on, markdown_grid
from bench.common import record as record_section
from tinywasm_wasi.build import Language, build_module
from tinywasm_wasi.build.devloop import BUILD_TOPIC
from tinywasm_wasi.build.scaffold import languages_with_templates, scaffold
from tinywasm_wasi.config import Config
from tinywasm_wasi.server import WasiServer

HEADER = (
    "language",
    "module size",
    "compile on load",
    "message round trip (p50)",
    "edit → built (p50)",
    "edit → serving (p50)",
    "edit → answering (p50, max)",
)
ROUND_TRIPS = 200


@dataclass
class Result:
    language: Language
    size: int = 0
    compile_ms: float = 0.0
    round_trip_ms: float = 0.0
    built: list[float] = field(default_factory=list)
    serving: list[float] = field(default_factory=list)
    answering: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _edit(folder: Path, n: int) -> None:
    """Change every source's "started" string, so the next build differs."""
    for source in folder.iterdir():
        if source.name in ("module.toml", "README.md") or not source.is_file():
            continue
        text = source.read_text()
        marker = "started" if n == 1 else f"started {n - 1}"
        source.write_text(text.replace(marker, f"started {n}"))


async def _answer(ws: aiohttp.ClientWebSocketResponse, payload: bytes) -> bytes:
    await ws.send_bytes(payload)
    msg = await ws.receive(timeout=30)
    if msg.type is not aiohttp.WSMsgType.BINARY:
        raise RuntimeError(f"expected an answer, got {msg}")
    data: bytes = msg.data
    return data


async def measure(language: Language, root: Path, edits: int) -> Result:
    result = Result(language)
    name = f"bench_{language.value}"
    folder = scaffold(name, language, root / "src")
    modules = root / f"modules-{language.value}"
    built = await asyncio.to_thread(build_module, folder, modules)
    result.size = built.size
    server = WasiServer(
        Config(
            host="127.0.0.1",
            port=0,
            modules_dir=modules,
            watch_sources=(folder,),
            ws_inbound=(name,),
            watch_debounce=0.05,
            swap_probation=0.0,
            cache_dir=None,
        )
    )
    await server.start()
    try:
        module = server.host.modules[name]
        result.compile_ms = module.compiled.compile_ms
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{server.url}/ws?topic={name}") as ws,
            http.ws_connect(f"{server.url}/ws?topic={BUILD_TOPIC}") as builds,
        ):
            trips = []
            for i in range(ROUND_TRIPS):
                started = time.perf_counter()
                await _answer(ws, b"m%d" % i)
                trips.append((time.perf_counter() - started) * 1000)
            result.round_trip_ms = statistics.median(trips)
            for n in range(1, edits + 1):
                before = server.host.modules[name].compiled.sha256
                started = time.perf_counter()
                _edit(folder, n)
                report = json.loads((await builds.receive(timeout=300)).data)
                result.built.append((time.perf_counter() - started) * 1000)
                if not report["ok"]:
                    result.problems.append(f"{language}: build {n} failed: {report['error']}")
                    break
                deadline = time.monotonic() + 60
                while server.host.modules[name].compiled.sha256 == before:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{language}: edit {n} was never swapped in")
                    await asyncio.sleep(0.002)
                result.serving.append((time.perf_counter() - started) * 1000)
                await _answer(ws, b"after edit %d" % n)
                result.answering.append((time.perf_counter() - started) * 1000)
    finally:
        await server.stop()
    return result


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ms" if values else "-"


def rows(results: list[Result]) -> list[tuple[str, ...]]:
    table = []
    for r in results:
        worst = f", {max(r.answering):.0f} ms" if r.answering else ""
        table.append(
            (
                r.language.value,
                f"{r.size:,} B",
                f"{r.compile_ms:.1f} ms",
                f"{r.round_trip_ms:.2f} ms",
                _ms(r.built),
                _ms(r.serving),
                _ms(r.answering) + worst,
            )
        )
    return table


async def run(languages: list[Language], edits: int) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-dev-loop-") as tmp:
        for language in languages:
            results.append(await measure(language, Path(tmp), edits))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dev_loop", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--edits", type=int, default=10, help="edits per language (default 10)")
    parser.add_argument(
        "--languages",
        default=None,
        help="comma-separated, e.g. c,zig (default: every language with a template)",
    )
    add_common_flags(parser)
    args = parser.parse_args()
    have = languages_with_templates()
    if args.languages:
        try:
            languages = [Language(x.strip()) for x in args.languages.split(",") if x.strip()]
        except ValueError as exc:
            parser.error(str(exc))
        missing = [lang.value for lang in languages if lang not in have]
        if missing:
            parser.error(f"no template for {', '.join(missing)}")
    else:
        # The smoke run needs no compiler download or cache fill: WAT only.
        languages = [Language.WAT] if args.smoke else have
    edits = 2 if args.smoke else args.edits
    if not 1 <= edits <= 1000:
        parser.error("need 1 <= --edits <= 1000")

    machine = Machine.detect()
    print(f"# {machine.describe()}")
    results = asyncio.run(run(languages, edits))
    table = rows(results)
    print(markdown_grid(HEADER, table))
    fail_on([p for r in results for p in r.problems], "bench.dev_loop")
    if args.record:
        record_section(
            "dev_loop: edit → new version answering, per language",
            command_line("bench.dev_loop"),
            table,
            machine=machine,
            header=HEADER,
            notes=f"{edits} edits per language; the compiler's cache was warm "
            "(the first build at a new setting fills it).",
        )


if __name__ == "__main__":
    main()
