"""Compiled-module caches: ours (`runtime/cache.py`) against wasmtime's `Config.cache`.

Two measurements, both on engines built from `ENGINE_SETTINGS`:

1. Load time, per module: the modules in ``modules/dist`` and a generated big
   module (``--big-kib``, many functions, about 2 MB by default). Every mode
   hashes the bytes (the server needs the sha256 either way), then:

   - "none": compiles (`wasmtime.Module`), no cache;
   - "ours miss" / "ours hit": `ModuleCache.load`, and on a miss compile and
     `ModuleCache.store` (the entry is deleted before each miss);
   - "wasmtime miss" / "wasmtime hit": `wasmtime.Module` on an engine whose
     `Config.cache` points at a TOML file naming a private folder (the entry
     files are deleted before each miss).

   The modes take turns within each repetition; the table gives the median in ms
   and each cache's entry size on disk.

2. Damaged entries: a small guest whose `answer(x)` returns x + 42 is cached, one
   byte of its entry is flipped (every byte of wasmtime's entry, or `--flips`
   evenly spaced offsets if fewer), then the guest is loaded through that cache,
   instantiated and called, in a child process restarted when it dies. Outcomes:
   "recompiled" (the loaded code is what a fresh compile gives), "ran damaged
   code" (it differs, and `answer` still returned the right value or gave the
   wrong one), "failed" (loading, instantiating or calling raised), "process
   killed" (by a signal: the server would be gone, and at start-up it would die
   again on every restart until someone deletes the entry).

    python -m bench.cache [--repeat N] [--big-kib K] [--flips N] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import multiprocessing
import os
import shutil
import signal
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import wasmtime

from bench.common import Machine, add_common_flags, command_line, markdown_grid, record
from tinywasm_wasi.config import DEFAULT_MODULES_DIR
from tinywasm_wasi.runtime.cache import ModuleCache
from tinywasm_wasi.runtime.engine import ENGINE_SETTINGS

MODES = ("none", "ours miss", "ours hit", "wasmtime miss", "wasmtime hit")
ANSWER_WAT = """(module (memory (export "memory") 1)
  (func (export "answer") (param i32) (result i32) (i32.add (local.get 0) (i32.const 42))))"""
DAMAGE_TIMEOUT = 600.0  # seconds the damage test of one cache may take
RECOMPILED, FAILED, KILLED = "recompiled", "failed", "process killed"
RIGHT, WRONG = "ran damaged code, right answer", "ran damaged code, wrong answer"
OUTCOMES = (RECOMPILED, FAILED, RIGHT, WRONG, KILLED)


# -- engines and entries -------------------------------------------------------------------------


def engine(cache_toml: Path | None = None) -> wasmtime.Engine:
    config = wasmtime.Config()
    for key, value in ENGINE_SETTINGS.items():
        setattr(config, key, value)
    if cache_toml is not None:
        config.cache = str(cache_toml)
    return wasmtime.Engine(config)


def wasmtime_cache(root: Path, extra: str = "") -> tuple[wasmtime.Engine, Path]:
    """An engine with wasmtime's cache in `root`/wasmtime, and that folder."""
    folder = root / "wasmtime"
    folder.mkdir(mode=0o700, parents=True)
    toml = root / "wasmtime-cache.toml"
    toml.write_text(f'[cache]\ndirectory = "{folder}"\n{extra}', encoding="utf-8")
    return engine(toml), folder


def wasmtime_entries(folder: Path) -> list[Path]:
    """wasmtime's entry files: modules/<compiler>/<hash>, without the .stats beside them."""
    return [p for p in folder.glob("modules/*/*") if p.is_file() and not p.suffix]


def _identities(folder: Path) -> set[tuple[str, int]]:
    return {(p.name, p.stat().st_ino) for p in wasmtime_entries(folder)}


def big_module(kib: int) -> bytes:
    """A valid guest of about `kib` KiB: many functions of integer arithmetic, each different."""

    def func(i: int) -> str:
        step = "(local.set 1 (i32.add (i32.mul (local.get 1) (i32.const {})) (local.get 0)))"
        body = " ".join(step.format(i * 31 + k) for k in range(24))
        return f'(func (export "f{i}") (param i32) (result i32) (local i32) {body} (local.get 1))'

    each = len(wasmtime.wat2wasm(f"(module {func(1_000)})")) - 8  # less the module header
    count = max(1, kib * 1024 // each)
    funcs = "\n".join(func(i) for i in range(count))
    return bytes(wasmtime.wat2wasm(f'(module (memory (export "memory") 1) {funcs})'))


# -- 1. load time --------------------------------------------------------------------------------


def time_module(name: str, data: bytes, root: Path, repeat: int) -> list[str]:
    plain = engine()
    ours_dir = root / "ours"
    ours = ModuleCache(ours_dir, ENGINE_SETTINGS)
    theirs, theirs_dir = wasmtime_cache(root)
    sha = hashlib.sha256(data).hexdigest()
    wasmtime.Module(plain, data)  # warm up: code pages, allocator

    def none() -> None:
        hashlib.sha256(data).hexdigest()
        wasmtime.Module(plain, data)

    def ours_load() -> bool:
        digest = hashlib.sha256(data).hexdigest()
        if ours.load(plain, digest, name) is not None:
            return True
        ours.store(digest, wasmtime.Module(plain, data), name)
        return False

    def theirs_load() -> None:
        hashlib.sha256(data).hexdigest()
        wasmtime.Module(theirs, data)

    def forget_ours() -> None:
        ours.path(sha).unlink(missing_ok=True)

    def forget_theirs() -> None:
        for entry in wasmtime_entries(theirs_dir):
            entry.unlink()

    steps: dict[str, tuple[Callable[[], object] | None, Callable[[], object]]] = {
        "none": (None, none),
        "ours miss": (forget_ours, ours_load),
        "ours hit": (None, ours_load),
        "wasmtime miss": (forget_theirs, theirs_load),
        "wasmtime hit": (None, theirs_load),
    }
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeat):
        for mode in MODES:
            before, step = steps[mode]
            if before is not None:
                before()
            entries = _identities(theirs_dir)
            started = time.perf_counter()
            step()
            times[mode].append((time.perf_counter() - started) * 1000)
            # wasmtime counts hits but does not tell Python: a miss writes a new entry file.
            if mode == "wasmtime hit" and _identities(theirs_dir) != entries:
                raise RuntimeError(f"{name}: wasmtime's cache missed where it should hit")
    stats = ours.stats()
    if stats.hits != repeat or stats.discarded:
        raise RuntimeError(f"{name}: our cache did not hit as expected: {stats}")
    ours_size = ours.path(sha).stat().st_size
    theirs_size = sum(p.stat().st_size for p in wasmtime_entries(theirs_dir))
    medians = [statistics.median(times[mode]) for mode in MODES]
    return [
        name,
        f"{len(data) / 1024:,.1f}",
        *(f"{ms:,.2f}" for ms in medians),
        f"{ours_size / 1024:,.1f}",
        f"{theirs_size / 1024:,.1f}",
    ]


# -- 2. damaged entries --------------------------------------------------------------------------


def _damage_child(conn: Connection, kind: str, root: str, flips: int, start: int) -> None:
    """Flip one byte of the entry per case, from case `start`; report each case before and after."""
    logging.disable(logging.CRITICAL)  # our cache logs every discarded entry
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # and wasmtime's panics print backtraces
    data = bytes(wasmtime.wat2wasm(ANSWER_WAT))
    sha = hashlib.sha256(data).hexdigest()
    plain = engine()
    reference = bytes(wasmtime.Module(plain, data).serialize())
    folder = Path(root) / f"{kind}-{start}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    load: Callable[[], wasmtime.Module]
    if kind == "ours":
        cache = ModuleCache(folder / "cache", ENGINE_SETTINGS)
        used = plain

        def load() -> wasmtime.Module:
            module = cache.load(plain, sha, "answer")
            if module is None:
                module = wasmtime.Module(plain, data)
                cache.store(sha, module, "answer")
            return module

        load()
        entry = cache.path(sha)
    else:
        # No recompression at level 20 after 256 hits: it would rewrite the entry meanwhile.
        used, theirs_dir = wasmtime_cache(
            folder, 'optimized-compression-usage-counter-threshold = "1G"\n'
        )

        def load() -> wasmtime.Module:
            return wasmtime.Module(used, data)

        load()
        (entry,) = wasmtime_entries(theirs_dir)
    good = entry.read_bytes()
    offsets = sorted({i * len(good) // min(flips, len(good)) for i in range(min(flips, len(good)))})
    conn.send(("total", len(offsets)))
    for case in range(start, len(offsets)):
        at = offsets[case]
        entry.write_bytes(good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1 :])
        conn.send(("start", case))
        try:
            module = load()
            if bytes(module.serialize()) == reference:
                outcome = RECOMPILED
            else:
                store = wasmtime.Store(used)
                store.set_epoch_deadline(1_000_000)
                answer = wasmtime.Instance(store, module, []).exports(store)["answer"]
                assert isinstance(answer, wasmtime.Func)
                outcome = RIGHT if answer(store, 1) == 43 else WRONG
        except Exception:  # loading, instantiating or calling it failed
            outcome = FAILED
        conn.send(("done", case, outcome))
    conn.close()


def damage(kind: str, root: Path, flips: int) -> tuple[Counter[str], Counter[str]]:
    """Outcomes of one-byte flips in `kind`'s ("ours" or "wasmtime") entry for the answer guest,
    and the signals that killed the process."""
    ctx = multiprocessing.get_context("spawn")
    outcomes: Counter[str] = Counter()
    signals: Counter[str] = Counter()
    start, total = 0, None
    deadline = time.monotonic() + DAMAGE_TIMEOUT
    while total is None or start < total:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_damage_child, args=(child, kind, str(root), flips, start))
        proc.start()
        child.close()
        running = None
        while True:
            if not parent.poll(max(0.0, deadline - time.monotonic())):
                proc.kill()
                raise TimeoutError(
                    f"damage test of {kind}'s cache took over {DAMAGE_TIMEOUT:.0f} s"
                )
            try:
                message = parent.recv()
            except EOFError:
                break
            if message[0] == "total":
                total = message[1]
            elif message[0] == "start":
                running = message[1]
            else:
                outcomes[message[2]] += 1
                running = None
                start = message[1] + 1
        proc.join(10)
        parent.close()
        if running is not None:  # died while loading or running a damaged entry
            code = proc.exitcode
            outcomes[KILLED] += 1
            signals[
                signal.Signals(-code).name if code is not None and code < 0 else f"exit {code}"
            ] += 1
            start = running + 1
        elif proc.exitcode != 0:
            raise RuntimeError(f"damage child for {kind} exited with {proc.exitcode}")
    return outcomes, signals


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cache", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=15, help="timed loads per mode (default 15)")
    parser.add_argument(
        "--big-kib", type=int, default=2048, help="size of the generated module (default 2048)"
    )
    parser.add_argument(
        "--flips",
        type=int,
        default=2000,
        help="most damaged entries tried per cache, evenly spaced (default 2000)",
    )
    add_common_flags(parser)
    args = parser.parse_args()
    repeat, big_kib, flips = (3, 64, 20) if args.smoke else (args.repeat, args.big_kib, args.flips)
    if repeat < 1 or big_kib < 1 or flips < 1:
        parser.error("--repeat, --big-kib and --flips must be at least 1")

    machine = Machine.detect()
    print(f"# {machine.describe()}")
    modules = [(p.name, p.read_bytes()) for p in sorted(DEFAULT_MODULES_DIR.glob("*.wasm"))]
    print(f"# generating a {big_kib} KiB module ...", flush=True)
    modules.append((f"generated ({big_kib} KiB)", big_module(big_kib)))
    header = [
        "module",
        "KiB",
        *(f"{mode} ms" for mode in MODES),
        "ours entry KiB",
        "wasmtime entry KiB",
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        for i, (name, data) in enumerate(modules):
            print(f"# {name}: {repeat} loads per mode ...", flush=True)
            # The big module compiles in seconds: fewer repetitions keep the run short.
            times = repeat if len(data) < 256 * 1024 else max(1, min(repeat, 5))
            rows.append(time_module(name, data, Path(tmp) / f"t{i}", times))
        print(markdown_grid(header, rows))
        damage_rows = []
        for kind in ("ours", "wasmtime"):
            print(f"# damaged entries in {kind}'s cache ...", flush=True)
            outcomes, signals = damage(kind, Path(tmp) / "damage", flips)
            cells = [str(outcomes[o]) for o in OUTCOMES]
            if signals:
                cells[-1] += " (" + ", ".join(f"{n} {s}" for s, n in signals.most_common()) + ")"
            damage_rows.append([kind, str(sum(outcomes.values())), *cells])
    damage_grid = markdown_grid(["cache", "flips", *OUTCOMES], damage_rows)
    print()
    print(damage_grid)
    notes = (
        f"Each mode includes hashing the bytes (sha256); medians of {repeat} loads (at most 5 "
        "for the big module), the modes taking turns. Entry sizes are on disk (wasmtime's "
        "compressed with zstd, not counting its `.stats` file).\n\n"
        "One byte flipped in the cached entry of a small guest (`answer(x)` = x + 42), "
        "then the guest loaded through that cache, instantiated and called once "
        '("ran damaged code": the loaded code differs from a fresh compile\'s):\n\n' + damage_grid
    )
    if args.record:
        record(
            "cache: compiled-module caches, ours against wasmtime's Config.cache",
            command_line("bench.cache"),
            rows,
            header=header,
            machine=machine,
            notes=notes,
        )


if __name__ == "__main__":
    main()
