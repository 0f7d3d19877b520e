"""Hot swap through the real server: real files, the real watcher, real WebSocket clients."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import aiohttp
import pytest
import wasmtime

from tests.conftest import ServerFactory
from tests.support import eventually
from tests.wat import guest
from tinywasm_wasi.policy.history import Outcome
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(180)

RELAY = """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
  (func (export "version") (result i32) (i32.const VERSION))
"""
# On each "tick" it publishes the tick's payload to "nums": the module-made stream.
PUMP = """
  (func (export "init") (call $subscribe {tick} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $publish {t} (local.get $p) (local.get $n)))
"""


def relay(version: int) -> bytes:
    return bytes(
        wasmtime.wat2wasm(
            guest(RELAY.replace("VERSION", str(version)), {"t": "nums", "out": "out"})
        )
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def running_sha(server: WasiServer, name: str) -> str | None:
    module = server.host.modules.get(name)
    return None if module is None else module.compiled.sha256


async def wait_for_sha(server: WasiServer, name: str, data: bytes) -> None:
    await eventually(
        lambda: running_sha(server, name) == sha(data), f"{name} to serve sha256 {sha(data)[:12]}"
    )


async def test_swaps_by_write_rename_and_api_under_load_deliver_every_number_once_in_order(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "relay.wasm").write_bytes(relay(0))
    (tmp_path / "pump.wasm").write_bytes(
        bytes(wasmtime.wat2wasm(guest(PUMP, {"tick": "tick", "t": "nums"})))
    )
    server = await make_server(
        modules_dir=tmp_path,
        ws_inbound=("nums",),
        watch_debounce=0.03,
        swap_probation=0.01,
        ws_queue_size=100_000,
    )
    per_source = 3000
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=out") as reader,
        http.ws_connect(f"{server.url}/ws?topic=nums") as browser,
    ):

        async def from_module() -> None:
            for i in range(per_source):
                server.bus.publish("tick", b"m%d" % i)
                if i % 20 == 0:
                    await asyncio.sleep(0.004)

        async def from_browser() -> None:
            for i in range(per_source):
                await browser.send_bytes(b"w%d" % i)
                if i % 20 == 0:
                    await asyncio.sleep(0.004)

        async def swap_many() -> int:
            path = tmp_path / "relay.wasm"
            for n in range(1, 55):
                data = relay(n)
                how = n % 3
                if how == 0:  # written in place
                    path.write_bytes(data)
                elif how == 1:  # written beside, then renamed into place
                    temp = tmp_path / f".relay.{n}.tmp"
                    temp.write_bytes(data)
                    os.replace(temp, path)
                else:  # through the admin API (the watcher then sees the same bytes)
                    path.write_bytes(data)
                    async with http.post(f"{server.url}/api/modules/relay/reload") as resp:
                        assert resp.status == 200
                await wait_for_sha(server, "relay", data)
            return n

        async def collect() -> list[bytes]:
            got: list[bytes] = []
            async with asyncio.timeout(120):
                while len(got) < 2 * per_source:
                    msg = await reader.receive()
                    assert msg.type is aiohttp.WSMsgType.BINARY, msg
                    got.append(msg.data)
            return got

        collector = asyncio.create_task(collect())
        swaps, _, _ = await asyncio.gather(swap_many(), from_module(), from_browser())
        got = await collector
    assert swaps == 54
    for prefix in (b"m", b"w"):
        seq = [int(p[1:]) for p in got if p[:1] == prefix]
        assert seq == list(range(per_source)), f"{prefix!r} stream lost, duplicated or reordered"
    outcomes = [r.outcome for r in server.host.histories["relay"].records]
    assert outcomes.count(Outcome.SWAPPED) >= 50
    assert Outcome.REFUSED not in outcomes


async def test_burst_of_writes_within_the_debounce_is_one_swap(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    path = tmp_path / "relay.wasm"
    path.write_bytes(relay(0))
    versions = [relay(n) for n in range(21)]  # built first: building is slow on a busy machine
    server = await make_server(modules_dir=tmp_path, watch_debounce=0.5, swap_probation=0.01)
    for n in range(1, 21):
        path.write_bytes(versions[n])
        await asyncio.sleep(0.005)
    last = sha(relay(20))
    records = server.host.histories["relay"].records
    # The version serves from the cut-over; its record is written when the swap ends.
    await eventually(lambda: any(r.sha256 == last for r in records), "the swap to version 20")
    # A barrier: the watcher delivers bursts in order, so once a module written after the
    # burst has loaded, every swap the burst asked for has been asked for.
    (tmp_path / "zzz.wasm").write_bytes(relay(99))
    await eventually(lambda: "zzz" in server.host.histories, "the barrier module to load")
    assert [r.trigger for r in records] == ["startup", "watcher"]


async def test_partial_file_is_refused_then_the_completed_file_swaps_in(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    path = tmp_path / "relay.wasm"
    path.write_bytes(relay(0))
    server = await make_server(modules_dir=tmp_path, watch_debounce=0.03, swap_probation=0.01)
    full = relay(1)
    path.write_bytes(full[: len(full) // 2])  # a build caught half-written
    await eventually(
        lambda: server.host.histories["relay"].records[-1].outcome is Outcome.REFUSED,
        "the half-written file to be refused",
    )
    assert (
        server.host.modules["relay"].compiled.sha256
        == server.host.histories["relay"].records[0].sha256
    )  # the old version kept serving
    path.write_bytes(full)
    await wait_for_sha(server, "relay", full)


async def test_delete_unloads_and_recreate_loads_through_the_watcher(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    path = tmp_path / "relay.wasm"
    path.write_bytes(relay(0))
    server = await make_server(modules_dir=tmp_path, watch_debounce=0.03)
    path.unlink()
    # The module leaves the table first; its record is written once it has drained.
    await eventually(
        lambda: server.host.histories["relay"].records[-1].outcome is Outcome.UNLOADED,
        "relay's unload to be recorded",
    )
    assert "relay" not in server.host.modules
    assert server.bus.publish("nums", b"x") == 0
    path.write_bytes(relay(1))
    await wait_for_sha(server, "relay", relay(1))
    assert server.bus.publish("nums", b"x") == 1


async def test_history_reload_and_rollback_endpoints(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tinywasm.watcher")
    path = tmp_path / "relay.wasm"
    path.write_bytes(relay(0))
    server = await make_server(modules_dir=tmp_path, watch=False, swap_probation=0.01)
    first = server.host.modules["relay"].compiled.sha256
    path.write_bytes(relay(1))
    # --no-watch: no watcher was started (a started one says so), so the write changes nothing.
    assert [r.getMessage() for r in caplog.records if r.name == "tinywasm.watcher"] == []
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("watch ")]
    assert server.host.modules["relay"].compiled.sha256 == first
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/modules/relay/reload") as resp:
            assert resp.status == 200
            assert (await resp.json())["result"]["outcome"] == "swapped"
        async with http.post(f"{server.url}/api/modules/relay/rollback") as resp:
            assert resp.status == 200
            assert (await resp.json())["result"]["sha256"] == first
        async with http.get(f"{server.url}/api/modules/relay/history") as resp:
            history = (await resp.json())["history"]
        async with http.post(f"{server.url}/api/modules/nope/reload") as resp:
            assert resp.status == 404
    assert [(h["trigger"], h["outcome"]) for h in history] == [
        ("startup", "loaded"),
        ("api", "swapped"),
        ("rollback", "swapped"),
    ]
    assert all(len(h["sha256"]) == 64 and h["duration_ms"] >= 0 for h in history)
    assert server.host.modules["relay"].compiled.sha256 == first


async def test_programmatic_reload(tmp_path: Path, make_server: ServerFactory) -> None:
    path = tmp_path / "relay.wasm"
    path.write_bytes(relay(0))
    server = await make_server(modules_dir=tmp_path, watch=False, swap_probation=0.01)
    path.write_bytes(relay(1))
    record = await server.reload("relay")
    assert record is not None
    assert record.outcome is Outcome.SWAPPED
    assert await server.reload("relay") is None  # same bytes
