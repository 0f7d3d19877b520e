"""Unloading returns what loading took: memfds, threads, RSS, with the collector not running.

The server freezes its start-up objects out of the cyclic collector (`gc.freeze()`), and
ordinary traffic allocates too little for a full collection, so an unloaded module must
be freed by reference counting alone. These tests load and unload real modules with the
collector switched off to hold them to that.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HostFactory
from tests.support import eventually
from tests.wat import guest, write
from tinywasm_wasi.supervisor.host import ModuleHost

pytestmark = pytest.mark.timeout(120)

COUNT = 50
CYCLES = 4
# A data segment gives each compiled module a linear-memory image: a memfd in wasmtime.
BODY = """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {t} (local.get $p) (local.get $n)))
"""


def memfds() -> int:
    """Open fds of this process on wasmtime's memory images."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "wasm-memory-image" in os.readlink(f"/proc/self/fd/{fd}"):
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


def threads() -> int:
    return threading.active_count()


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def write_modules(directory: Path, cycle: int) -> None:
    for i in range(COUNT):
        # Distinct bytes per module and per cycle: each is compiled anew.
        write(directory, f"m{i}", guest(BODY, {"t": f"topic.{cycle}.{i}"}))


async def unload_all(host: ModuleHost, directory: Path) -> None:
    names = list(host.modules)
    for name in names:
        (directory / f"{name}.wasm").unlink()
    await asyncio.gather(*(host.swap(name, "watcher") for name in names))
    assert not host.modules


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_load_unload_cycles_return_memfds_threads_and_rss(
    tmp_path: Path, make_host: HostFactory, no_collector: None
) -> None:
    host = await make_host(tmp_path)
    base_fds = memfds()
    # Module mailboxes run on the runtime's worker pool; compiles on asyncio's executor.
    bound = threads() + host.runtime.workers.size + min(32, (os.cpu_count() or 1) + 4)
    rss: list[int] = []
    for cycle in range(CYCLES):
        write_modules(tmp_path, cycle)
        await asyncio.gather(*(host.swap(f"m{i}", "watcher") for i in range(COUNT)))
        assert len(host.modules) == COUNT
        assert memfds() >= base_fds + COUNT  # each module holds its image while loaded
        assert threads() <= bound, "a loaded module must not cost a thread"
        await unload_all(host, tmp_path)
        # A closed mailbox leaves the pool after the item it runs; then all is returned.
        await eventually(lambda: memfds() == base_fds, f"cycle {cycle}: memory images to close")
        assert threads() <= bound
        rss.append(rss_kib())
    # The first cycle warms allocators and caches; later ones must not keep growing by
    # anything like a module's worth each (a leaked module keeps its store and image).
    growth = rss[-1] - rss[0]
    assert growth < 64 * COUNT, f"RSS after each cycle (KiB): {rss}"
