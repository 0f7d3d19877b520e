"""Hundreds of module files dropped into a running server's folder at once (issue #16,
item 17): they all load, a few at a time, on a bounded number of tasks and threads, and
the server keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import aiohttp
import pytest
import wasmtime

from tests.conftest import ServerFactory
from tests.support import eventually
from tests.wat import guest

pytestmark = pytest.mark.timeout(240)

RELAY = """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
"""
COUNT = 200


async def test_hundreds_of_files_dropped_in_load_a_few_at_a_time(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    folder = tmp_path / "modules"
    folder.mkdir()
    server = await make_server(modules_dir=folder, watch=True, watch_debounce=0.05)
    host = server.host
    binaries = [
        bytes(wasmtime.wat2wasm(guest(RELAY, {"t": f"in.{i}", "out": f"out.{i}"})))
        for i in range(COUNT)
    ]
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    peak = {"tasks": 0, "threads": 0}
    answered = 0
    loading = True

    async def sample() -> None:
        nonlocal answered
        async with aiohttp.ClientSession() as http:
            while loading:
                peak["tasks"] = max(peak["tasks"], len(asyncio.all_tasks()))
                peak["threads"] = max(peak["threads"], threading.active_count())
                async with http.get(f"{server.url}/healthz") as resp:
                    assert resp.status == 200
                    answered += 1
                await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        for i, data in enumerate(binaries):  # all at once, as a deploy tool or `cp` would
            (folder / f"m{i:03d}.wasm").write_bytes(data)
        await eventually(
            lambda: len(host.modules) == COUNT, f"all {COUNT} modules to load", timeout=180
        )
    finally:
        loading = False
        await sampler
    assert answered > 0
    # The watcher admits `load_concurrency` swaps at a time, not one task per file; the
    # sampler and its /healthz request are three more.
    assert peak["tasks"] <= tasks_before + host.load_concurrency + 4, peak
    executor = min(32, (os.cpu_count() or 1) + 4)  # asyncio's, for reads and compiles
    assert peak["threads"] <= threads_before + host.runtime.workers.size + executor, peak
    assert not host.refused
