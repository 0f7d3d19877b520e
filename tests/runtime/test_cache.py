"""The compiled-module cache: hits, keys, discarding bad entries, a bad folder, the bound, threads."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import wasmtime

from bus import Bus
from tests.conftest import Broadcasts
from tinywasm_wasi.config import DEFAULT_MODULES_DIR
from tinywasm_wasi.runtime.cache import ENTRY_SUFFIX, ModuleCache
from tinywasm_wasi.runtime.engine import ENGINE_SETTINGS, CompiledModule, Runtime
from tinywasm_wasi.supervisor.host import ModuleHost

pytestmark = pytest.mark.timeout(60)

RuntimeFactory = Callable[..., Runtime]


def answer_wasm(value: int = 42) -> bytes:
    """A minimal valid guest whose `answer` export returns `value` (distinct bytes per value)."""
    return bytes(
        wasmtime.wat2wasm(
            f'(module (memory (export "memory") 1) (func (export "answer") (result i32) (i32.const {value})))'
        )
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_answer(engine: wasmtime.Engine, module: wasmtime.Module) -> int:
    """Instantiate `module` and call its `answer` export: proves the compiled code works."""
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1_000_000)  # the engine runs with epoch interruption
    answer = wasmtime.Instance(store, module, []).exports(store)["answer"]
    assert isinstance(answer, wasmtime.Func)
    result = answer(store)
    assert isinstance(result, int)
    return result


def engine_for(settings: Mapping[str, bool | int]) -> wasmtime.Engine:
    config = wasmtime.Config()
    for key, value in settings.items():
        setattr(config, key, value)
    return wasmtime.Engine(config)


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{ENTRY_SUFFIX}"))


@pytest.fixture
def make_runtime() -> Iterator[RuntimeFactory]:
    runtimes: list[Runtime] = []

    def make(cache_dir: Path | None) -> Runtime:
        runtime = Runtime(cache_dir=cache_dir)
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        runtime.close()


def compile_and_run(runtime: Runtime, data: bytes, value: int = 42) -> CompiledModule:
    compiled = runtime.compile_module("answer", data)
    assert run_answer(runtime.engine, compiled.module) == value
    return compiled


# -- hits ----------------------------------------------------------------------------------------


def test_miss_then_hit_and_hit_after_restart(tmp_path: Path, make_runtime: RuntimeFactory) -> None:
    data = answer_wasm()
    runtime = make_runtime(tmp_path)
    first = compile_and_run(runtime, data)
    assert not first.cached
    assert runtime.cache is not None
    assert entries(tmp_path) == [runtime.cache.path(sha(data))]
    second = compile_and_run(runtime, data)
    assert second.cached
    # A new process has a new engine with the same settings: still a hit.
    assert compile_and_run(make_runtime(tmp_path), data).cached
    stats = runtime.cache.stats()
    assert (stats.hits, stats.misses, stats.stored, stats.discarded) == (1, 1, 1, 0)


def test_no_cache_dir_means_no_cache(tmp_path: Path, make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime(None)
    assert runtime.cache is None
    assert not compile_and_run(runtime, answer_wasm()).cached
    assert not compile_and_run(runtime, answer_wasm()).cached


def test_modules_refused_by_the_interface_check_are_not_cached(
    tmp_path: Path, make_runtime: RuntimeFactory
) -> None:
    runtime = make_runtime(tmp_path)
    with pytest.raises(Exception, match="memory"):
        runtime.compile_module("bare", bytes(wasmtime.wat2wasm("(module)")))
    assert entries(tmp_path) == []


async def test_real_modules_load_warm_and_still_work(
    tmp_path: Path, make_runtime: RuntimeFactory
) -> None:
    for expect_cached, payload in ((False, b"cold"), (True, b"warm")):
        bus, broadcasts = Bus(), Broadcasts()
        host = ModuleHost(
            make_runtime(tmp_path), bus, broadcasts, mailbox_size=100, drain_timeout=1.0
        )
        await host.load_dir(DEFAULT_MODULES_DIR)
        try:
            assert "receiver" in host.modules
            assert {m.compiled.cached for m in host.modules.values()} == {expect_cached}
            # receiver forwards `events` to WebSocket clients, after sender's greeting from init()
            bus.publish("events", payload)
            assert await broadcasts.wait_for("events", 2) == [b"hello from sender", payload]
        finally:
            await host.stop()
            bus.close()


# -- keys ----------------------------------------------------------------------------------------


def test_key_covers_bytes_engine_settings_and_wasmtime_version(tmp_path: Path) -> None:
    digest = sha(answer_wasm())
    base = ModuleCache(tmp_path, ENGINE_SETTINGS).key(digest)
    reordered = dict(reversed(list(ENGINE_SETTINGS.items())))
    assert ModuleCache(tmp_path, reordered).key(digest) == base
    others = {
        ModuleCache(tmp_path, {**ENGINE_SETTINGS, "memory_guard_size": 0}).key(digest),
        ModuleCache(tmp_path, {**ENGINE_SETTINGS, "epoch_interruption": False}).key(digest),
        ModuleCache(tmp_path, {**ENGINE_SETTINGS, "consume_fuel": True}).key(digest),
        ModuleCache(tmp_path, ENGINE_SETTINGS, wasmtime_version="49.0.0").key(digest),
        ModuleCache(tmp_path, ENGINE_SETTINGS).key(sha(answer_wasm(7))),
    }
    assert base not in others and len(others) == 5


def test_entry_for_other_settings_is_never_used(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    data = answer_wasm()
    other_settings = {**ENGINE_SETTINGS, "memory_guard_size": 0}
    other = ModuleCache(tmp_path, other_settings)
    assert other.store(sha(data), wasmtime.Module(engine_for(other_settings), data), "answer")
    runtime = make_runtime(tmp_path)
    assert not compile_and_run(runtime, data).cached  # another key: another file
    assert len(entries(tmp_path)) == 2
    # The other configuration's entry copied under this configuration's name: refused by its key.
    assert runtime.cache is not None
    shutil.copyfile(other.path(sha(data)), runtime.cache.path(sha(data)))
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        assert not compile_and_run(runtime, data).cached
    assert "another wasmtime version or engine configuration" in caplog.text
    assert compile_and_run(runtime, data).cached  # rewritten by the recompile


def test_entry_from_another_wasmtime_version_is_discarded(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    data = answer_wasm()
    runtime = make_runtime(tmp_path)
    older = ModuleCache(tmp_path, ENGINE_SETTINGS, wasmtime_version="49.0.0")
    assert older.store(sha(data), wasmtime.Module(runtime.engine, data), "answer")
    assert not compile_and_run(runtime, data).cached
    assert runtime.cache is not None
    shutil.copyfile(older.path(sha(data)), runtime.cache.path(sha(data)))
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        assert not compile_and_run(runtime, data).cached
    assert runtime.cache.stats().discarded == 1
    assert [r.getMessage() for r in caplog.records if "discarded" in r.getMessage()] == [
        f"module answer: discarded compiled-module cache entry {runtime.cache.path(sha(data)).name} "
        "(made for other bytes, another wasmtime version or engine configuration); compiling it again"
    ]


def test_entry_wasmtime_refuses_is_discarded(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed entry holding code for another engine config: wasmtime's own check."""
    data = answer_wasm()
    runtime = make_runtime(tmp_path)
    foreign = wasmtime.Module(wasmtime.Engine(wasmtime.Config()), data)  # 4 GiB reservation
    assert ModuleCache(tmp_path, ENGINE_SETTINGS).store(sha(data), foreign, "answer")
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        assert not compile_and_run(runtime, data).cached
    assert "wasmtime refused it" in caplog.text
    assert compile_and_run(runtime, data).cached


# -- bad entries ---------------------------------------------------------------------------------


def _flip(at: int) -> Callable[[bytes], bytes]:
    return lambda raw: raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda raw: b"", "truncated"),
    "header cut": (lambda raw: raw[:40], "truncated"),
    "code cut": (lambda raw: raw[: len(raw) // 2], "truncated"),
    "padded": (lambda raw: raw + b"\0" * 16, "padded"),
    "bad magic": (_flip(0), "bad magic"),
    "other format": (_flip(8), "entry format"),
    "other key": (_flip(20), "another wasmtime version"),
    "flipped code byte": (lambda raw: _flip(len(raw) - 100)(raw), "corrupt"),
    "garbage": (lambda raw: os.urandom(len(raw)), "bad magic"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_discarded_and_the_module_recompiled(
    damage: str, tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    data = answer_wasm()
    runtime = make_runtime(tmp_path)
    compile_and_run(runtime, data)
    assert runtime.cache is not None
    path = runtime.cache.path(sha(data))
    spoil, reason = DAMAGE[damage]
    path.write_bytes(spoil(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        assert not compile_and_run(make_runtime(tmp_path), data).cached
    (record,) = [r for r in caplog.records if r.name == "tinywasm.cache"]
    assert record.levelno == logging.WARNING
    assert path.name in record.getMessage() and reason in record.getMessage()
    assert compile_and_run(make_runtime(tmp_path), data).cached  # replaced by a good entry


def test_symlink_entry_is_not_followed(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    data = answer_wasm()
    cache_dir, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    runtime = make_runtime(cache_dir)
    compile_and_run(runtime, data)
    assert runtime.cache is not None
    path = runtime.cache.path(sha(data))
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        assert not compile_and_run(make_runtime(cache_dir), data).cached
    assert f"{path} is not an entry; removed" in caplog.text  # when the folder is opened
    assert elsewhere.exists() and not path.is_symlink()
    # One put in place while running is refused when read, and replaced too.
    path.unlink()
    path.symlink_to(elsewhere)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        assert not compile_and_run(runtime, data).cached
    assert "a symbolic link, not an entry" in caplog.text
    assert elsewhere.exists() and not path.is_symlink()


# -- a bad folder --------------------------------------------------------------------------------


def _cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cache off" in r.getMessage()]


def test_folder_that_cannot_be_created_turns_the_cache_off_once(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    runtime = make_runtime(blocker / "cache")
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        for value in (1, 2, 3):
            assert not compile_and_run(runtime, answer_wasm(value), value).cached
    (warning,) = _cache_warnings(caplog)
    assert "cannot create the folder" in warning and "--cache-dir" in warning
    assert runtime.cache is not None and not runtime.cache.enabled


def test_folder_writable_by_others_is_not_trusted(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir = tmp_path / "shared"
    cache_dir.mkdir()
    cache_dir.chmod(0o777)
    runtime = make_runtime(cache_dir)
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        compile_and_run(runtime, answer_wasm())
        compile_and_run(runtime, answer_wasm())
    (warning,) = _cache_warnings(caplog)
    assert f"chmod go-w {cache_dir}" in warning
    assert entries(cache_dir) == []


def test_new_folder_is_private(tmp_path: Path, make_runtime: RuntimeFactory) -> None:
    cache_dir = tmp_path / "a" / "b"
    compile_and_run(make_runtime(cache_dir), answer_wasm())
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in entries(cache_dir))


def test_folder_gone_after_start_turns_the_cache_off_and_loads_succeed(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir = tmp_path / "cache"
    runtime = make_runtime(cache_dir)
    compile_and_run(runtime, answer_wasm(1), 1)
    shutil.rmtree(cache_dir)
    cache_dir.write_text("the folder became a file")
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        for value in (1, 2, 3):
            assert not compile_and_run(runtime, answer_wasm(value), value).cached
    (warning,) = _cache_warnings(caplog)
    assert f"cannot read {cache_dir}" in warning


def test_failed_write_turns_the_cache_off(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_runtime(None).engine
    cache_dir = tmp_path / "cache"
    cache = ModuleCache(cache_dir, ENGINE_SETTINGS)
    data = answer_wasm()
    assert cache.load(engine, sha(data), "answer") is None  # opens the folder
    shutil.rmtree(cache_dir)
    cache_dir.write_text("the folder became a file")  # writing into it fails
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        assert not cache.store(sha(data), wasmtime.Module(engine, data), "answer")
        assert not cache.store(sha(data), wasmtime.Module(engine, data), "answer")
    (warning,) = _cache_warnings(caplog)
    assert f"cannot write {cache.path(sha(data))}" in warning
    assert not cache.enabled


# -- debris in an entry's place: repaired, never the end of the cache ------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    (path / "inside").mkdir(parents=True)
    (path / "inside" / "file").write_bytes(b"x")


def _socket(path: Path) -> None:
    # A relative name: the full path is longer than a socket address may be.
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path.name)
    finally:
        os.chdir(here)


DEBRIS = {"fifo": _fifo, "folder": _folder, "socket": _socket}


@pytest.mark.parametrize("kind", DEBRIS)
def test_debris_in_an_entry_place_at_start_is_removed_and_the_cache_stays_on(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    data = answer_wasm()
    runtime = make_runtime(tmp_path)
    assert runtime.cache is not None
    path = runtime.cache.path(sha(data))
    DEBRIS[kind](path)  # before the folder is first opened: a restart finds it
    with (
        caplog.at_level(logging.WARNING, logger="tinywasm.cache"),
        ThreadPoolExecutor(1) as pool,  # a FIFO must not block the load
    ):
        first = pool.submit(compile_and_run, runtime, data).result(timeout=20)
    assert not first.cached
    assert f"{path} is not an entry; removed" in caplog.text
    assert not _cache_warnings(caplog) and runtime.cache.enabled
    assert path.is_file() and not path.is_symlink()  # replaced by a good entry
    assert compile_and_run(make_runtime(tmp_path), data).cached


@pytest.mark.parametrize("kind", DEBRIS)
def test_debris_put_in_an_entry_place_while_running_is_repaired(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    data = answer_wasm()
    runtime = make_runtime(tmp_path)
    compile_and_run(runtime, answer_wasm(7), 7)  # the folder is open
    assert runtime.cache is not None
    path = runtime.cache.path(sha(data))
    DEBRIS[kind](path)
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"), ThreadPoolExecutor(1) as pool:
        assert not pool.submit(compile_and_run, runtime, data).result(timeout=20).cached
    assert "discarded compiled-module cache entry" in caplog.text
    assert not _cache_warnings(caplog) and runtime.cache.enabled
    assert compile_and_run(runtime, data).cached


def test_a_folder_in_an_entry_place_before_a_write_is_replaced(
    tmp_path: Path, make_runtime: RuntimeFactory
) -> None:
    engine = make_runtime(None).engine
    cache = ModuleCache(tmp_path, ENGINE_SETTINGS)
    data = answer_wasm()
    assert cache.load(engine, sha(data), "answer") is None  # opens the folder
    _folder(cache.path(sha(data)))  # appears between the miss and the write
    assert cache.store(sha(data), wasmtime.Module(engine, data), "answer")
    assert cache.enabled and cache.path(sha(data)).is_file()
    assert cache.load(engine, sha(data), "answer") is not None


def test_an_oversized_entry_is_discarded_without_being_read(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_runtime(None).engine
    cache = ModuleCache(tmp_path, ENGINE_SETTINGS, max_bytes=4096)
    data = answer_wasm()
    path = cache.path(sha(data))
    with open(path, "wb") as f:  # sparse: 1 GiB that takes no disk
        f.truncate(2**30)
    with caplog.at_level(logging.WARNING, logger="tinywasm.cache"):
        assert cache.load(engine, sha(data), "answer") is None
    assert "larger than the whole cache may be" in caplog.text
    assert not path.exists() and cache.enabled


# -- the bound -----------------------------------------------------------------------------------


def _store_aged(cache: ModuleCache, engine: wasmtime.Engine, values: range, base: float) -> None:
    """Store one module per value, each entry one second newer than the last."""
    for value in values:
        data = answer_wasm(value)
        assert cache.store(sha(data), wasmtime.Module(engine, data), f"m{value}")
        os.utime(cache.path(sha(data)), (base + value, base + value))


def test_entry_bound_evicts_least_recently_used(
    tmp_path: Path, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_runtime(None).engine
    cache = ModuleCache(tmp_path, ENGINE_SETTINGS, max_entries=5)
    base = time.time() - 3600
    _store_aged(cache, engine, range(5), base)
    assert len(entries(tmp_path)) == 5
    assert cache.load(engine, sha(answer_wasm(0)), "m0") is not None  # touched: now the newest
    with caplog.at_level(logging.INFO, logger="tinywasm.cache"):
        _store_aged(cache, engine, range(5, 6), time.time() - 10)
    # Over the bound: evicted down to 80 % (4 entries), oldest first, the touched one kept.
    kept = {p.name for p in entries(tmp_path)}
    expected = {cache.path(sha(answer_wasm(v))).name for v in (0, 3, 4, 5)}
    assert kept == expected
    assert cache.stats().evicted == 2
    assert "evicted 2 least recently used entries" in caplog.text


def test_byte_bound_and_leftovers_of_other_processes(
    tmp_path: Path, make_runtime: RuntimeFactory
) -> None:
    engine = make_runtime(None).engine
    size = len(wasmtime.Module(engine, answer_wasm(0)).serialize()) + 100
    # Entries another process left (counted at the first scan) and a crashed writer's temp file.
    old_writer = ModuleCache(tmp_path, ENGINE_SETTINGS)
    _store_aged(old_writer, engine, range(100, 104), time.time() - 7200)
    stale = tmp_path / ".0123456789abcdef.crashed.tmp"
    fresh = tmp_path / ".fedcba9876543210.writing.tmp"
    for temp in (stale, fresh):
        temp.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    unrelated = tmp_path / "README"
    unrelated.write_text("not ours")

    cache = ModuleCache(tmp_path, ENGINE_SETTINGS, max_bytes=5 * size)
    _store_aged(cache, engine, range(3), time.time() - 60)
    remaining = entries(tmp_path)
    assert sum(p.stat().st_size for p in remaining) <= 5 * size
    assert {p.name for p in remaining} >= {cache.path(sha(answer_wasm(v))).name for v in (1, 2)}
    assert not stale.exists() and fresh.exists() and unrelated.exists()


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_writers_and_readers(tmp_path: Path, make_runtime: RuntimeFactory) -> None:
    """Threads of two 'processes' compile, store and load the same and different modules."""
    runtimes = [make_runtime(tmp_path), make_runtime(tmp_path)]
    values = [v % 6 for v in range(48)]

    def work(i: int) -> bool:
        value = values[i]
        runtime = runtimes[i % 2]
        return compile_and_run(runtime, answer_wasm(value), value).cached

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(len(values))))
    assert not list(tmp_path.glob(".*.tmp"))
    assert len(entries(tmp_path)) == 6
    checker = make_runtime(tmp_path)
    for value in range(6):
        assert compile_and_run(checker, answer_wasm(value), value).cached
    for runtime in (*runtimes, checker):
        assert runtime.cache is not None and runtime.cache.stats().discarded == 0
