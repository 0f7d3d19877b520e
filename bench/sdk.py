"""The SDK examples of every guest language: build time, size, load time, per-message cost.

For each language with its toolchain installed, the three examples in ``examples/<lang>/``
(relay, http_json, counter) are built from source with ``tinywasm build``'s own build, into
a fresh cache (so the build time includes the SDK: Rust's rlib, Go's runtime; zig's cache
is the user's). Then, per language:

- **size**: the relay, http_json and counter modules, in KiB (name section kept);
- **load**: compile + instantiate + ``init()`` of the relay in a `ModuleHost` with no
  compiled-module cache, median of R loads;
- **per message**: M messages published on ``relay.in``; the time until the last has come
  back on ``relay.out`` (each one also goes out as a WebSocket broadcast), per message:
  bus → mailbox → guest copy-in → ``on_topic_message`` → ``publish`` + ``ws_broadcast``;
- **per request**: Q full-mode requests to ``http_json`` straight through the module
  (``WasmModule.http``: CBOR request in, the module's JSON answer out), no HTTP server.

The languages take turns within each repetition, so a busy machine slows them alike.

    python -m bench.sdk [--langs c,rust,...] [--messages M] [--requests Q] [--repeat R]
                        [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import Machine, add_common_flags, command_line, markdown_grid, record
from bus import Bus
from tinywasm_wasi.build import BuildError, Language, ToolchainMissingError, build_module
from tinywasm_wasi.build.languages import toolchain
from tinywasm_wasi.policy.http_abi import HttpRequest, encode_full_request, parse_response
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.supervisor.host import ModuleHost

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "examples"
LANGS = ("c", "cpp", "zig", "rust", "go", "assemblyscript", "wat")
SMOKE_LANGS = ("c", "wat")
EXAMPLES = ("relay", "http_json", "counter")
WAIT_S = 60.0
LIMIT = 1 << 20  # bytes an answer may have


class Counter:
    """Counts deliveries on one topic and wakes a waiter at a target count."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, _topic: str, _payload: bytes) -> bool:
        with self._lock:
            self.count += 1
            if self.count >= self.target:
                self.done.set()
        return True

    def expect(self, target: int) -> None:
        with self._lock:
            self.target = target
            self.done.clear()
            if self.count >= target:
                self.done.set()


def build_all(lang: str, out: Path, cache: Path) -> tuple[dict[str, Path], float] | None:
    """Build `lang`'s examples; None if its toolchain is missing."""
    chain = toolchain(Language(lang))
    try:
        if chain is not None:
            chain.find()
    except ToolchainMissingError as exc:
        print(f"# {lang}: skipped ({exc})", flush=True)
        return None
    begun = time.perf_counter()
    built = {}
    try:
        for example in EXAMPLES:
            source = EXAMPLES_DIR / lang / example
            if source.is_dir():
                built[example] = build_module(source, out, cache_dir=cache).path
    except BuildError as exc:
        raise SystemExit(f"{lang}: {exc}") from None
    return built, time.perf_counter() - begun


async def load_once(relay: Path, tmp: Path) -> float:
    """Seconds to load the relay into a fresh host (compile, instantiate, init)."""
    folder = Path(tempfile.mkdtemp(dir=tmp))
    shutil.copy(relay, folder)
    host = ModuleHost(
        Runtime(), Bus(), lambda _t, _p: None, mailbox_size=100_000, drain_timeout=2.0
    )
    begun = time.perf_counter()
    await host.load_dir(folder)
    took = time.perf_counter() - begun
    await host.stop()
    return took


async def message_cost(relay: Path, messages: int, tmp: Path) -> float:
    """Microseconds per message relayed (publish → relay.out), over `messages`."""
    folder = Path(tempfile.mkdtemp(dir=tmp))
    shutil.copy(relay, folder)
    bus = Bus()
    host = ModuleHost(
        Runtime(), bus, lambda _t, _p: None, mailbox_size=messages + 100, drain_timeout=2.0
    )
    await host.load_dir(folder)
    out = Counter()
    bus.subscribe("relay.out", out)
    payload = b"x" * 64
    out.expect(1)
    bus.publish("relay.in", payload)  # warm: the host's delivery block is allocated
    await asyncio.to_thread(out.done.wait, WAIT_S)
    out.expect(1 + messages)
    begun = time.perf_counter()
    for _ in range(messages):
        bus.publish("relay.in", payload)
    finished = await asyncio.to_thread(out.done.wait, WAIT_S)
    took = time.perf_counter() - begun
    await host.stop()
    if not finished:
        raise SystemExit(f"{relay}: only {out.count - 1} of {messages} messages came back")
    return took / messages * 1e6


async def request_cost(http_json: Path, requests: int, tmp: Path) -> float:
    """Microseconds per full-mode request answered by the module, over `requests`."""
    folder = Path(tempfile.mkdtemp(dir=tmp))
    shutil.copy(http_json, folder)
    host = ModuleHost(
        Runtime(), Bus(), lambda _t, _p: None, mailbox_size=requests + 100, drain_timeout=2.0
    )
    await host.load_dir(folder)
    module = host.modules["http_json"]
    request = HttpRequest(
        method="POST",
        path="/m/http_json/bench",
        route="http_json",
        query="a=1",
        headers={"x-agent": "bench"},
        body=b"x" * 64,
    )
    body = encode_full_request(request)
    answer = await module.http(body, LIMIT)
    parsed = None if answer is None else parse_response(answer, max_body=LIMIT, middleware=False)
    if getattr(parsed, "status", 0) != 200:
        raise SystemExit(f"{http_json}: the module did not answer 200")
    begun = time.perf_counter()
    for _ in range(requests):
        await module.http(body, LIMIT)
    took = time.perf_counter() - begun
    await host.stop()
    return took / requests * 1e6


async def run(args: argparse.Namespace, langs: list[str]) -> list[list[str]]:
    with tempfile.TemporaryDirectory(prefix="bench-sdk-") as tmp_name:
        tmp = Path(tmp_name)
        built: dict[str, dict[str, Path]] = {}
        build_s: dict[str, float] = {}
        for lang in langs:
            print(f"# {lang}: building the examples ...", flush=True)
            result = build_all(lang, tmp / "out" / lang, tmp / "cache")
            if result is not None:
                built[lang], build_s[lang] = result
        loads: dict[str, list[float]] = {lang: [] for lang in built}
        per_message: dict[str, list[float]] = {lang: [] for lang in built}
        per_request: dict[str, list[float]] = {lang: [] for lang in built}
        for i in range(args.repeat):
            print(f"# repetition {i + 1} of {args.repeat} ...", flush=True)
            for lang, modules in built.items():
                loads[lang].append(await load_once(modules["relay"], tmp))
                per_message[lang].append(await message_cost(modules["relay"], args.messages, tmp))
                if "http_json" in modules:
                    per_request[lang].append(
                        await request_cost(modules["http_json"], args.requests, tmp)
                    )
        rows = []
        for lang, modules in built.items():
            sizes = [
                f"{modules[e].stat().st_size / 1024:.1f}" if e in modules else "-" for e in EXAMPLES
            ]
            rows.append(
                [
                    lang,
                    f"{build_s[lang]:.1f}",
                    *sizes,
                    f"{statistics.median(loads[lang]) * 1000:.1f}",
                    f"{statistics.median(per_message[lang]):.1f}",
                    f"{statistics.median(per_request[lang]):.0f}" if per_request[lang] else "-",
                ]
            )
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sdk", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--langs", help=f"comma-separated, from {','.join(LANGS)} (default all)")
    parser.add_argument("--messages", type=int, default=20_000, help="relayed per repetition")
    parser.add_argument("--requests", type=int, default=2_000, help="HTTP requests per repetition")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    add_common_flags(parser)
    args = parser.parse_args()
    langs = args.langs.split(",") if args.langs else list(LANGS)
    unknown = sorted(set(langs) - set(LANGS))
    if unknown:
        parser.error(f"unknown language(s) {', '.join(unknown)}: choose from {', '.join(LANGS)}")
    if args.smoke:
        langs = [lang for lang in langs if lang in SMOKE_LANGS]
        args.messages, args.requests, args.repeat = 200, 50, 1
    if min(args.messages, args.requests, args.repeat) < 1:
        parser.error("--messages, --requests and --repeat must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    machine = Machine.detect()
    print(f"# {machine.describe()}")
    header = [
        "language",
        "build s",
        "relay KiB",
        "http_json KiB",
        "counter KiB",
        "load ms",
        "µs/message",
        "µs/request",
    ]
    rows = asyncio.run(run(args, langs))
    print(markdown_grid(header, rows))
    if args.record:
        record(
            "sdk: the examples of every guest language",
            command_line("bench.sdk"),
            rows,
            header=header,
            machine=machine,
            notes=(
                f"Medians of {args.repeat} repetitions, the languages taking turns; "
                f"{args.messages} messages and {args.requests} requests per repetition. "
                "Build time: the three examples from a cold build cache (zig's own cache "
                "warm), one after the other."
            ),
        )


if __name__ == "__main__":
    main()
