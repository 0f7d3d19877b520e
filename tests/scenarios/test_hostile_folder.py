"""The modules folder under a careless operator, against a real server and the real watcher.

A file name that is not UTF-8, and the whole folder deleted and made again, while the
server runs: later changes to other modules must still be picked up. Debris (a FIFO, a
folder) in the compiled-module cache's place for an entry: start-up neither hangs nor
runs without the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import wasmtime

from tests.conftest import ServerFactory
from tests.support import eventually
from tests.wat import guest
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(60)

RELAY = """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
  (func (export "version") (result i32) (i32.const VERSION))
"""


def relay(version: int) -> bytes:
    return bytes(
        wasmtime.wat2wasm(guest(RELAY.replace("VERSION", str(version)), {"t": "in", "out": "out"}))
    )


def serving(server: WasiServer, name: str, data: bytes) -> bool:
    module = server.host.modules.get(name)
    return module is not None and module.compiled.sha256 == hashlib.sha256(data).hexdigest()


async def status(server: WasiServer) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/api/modules") as resp,
    ):
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


async def test_a_non_utf8_file_name_dropped_in_does_not_stop_the_watcher(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "a.wasm").write_bytes(relay(0))
    server = await make_server(modules_dir=tmp_path, watch=True, watch_debounce=0.02)
    bad = os.path.join(os.fsencode(tmp_path), b"bad\xff.wasm")
    with open(bad, "wb") as f:
        f.write(relay(1))
    # Later changes to other modules are still picked up: a new one and a changed one.
    (tmp_path / "b.wasm").write_bytes(relay(2))
    await eventually(lambda: serving(server, "b", relay(2)), "b to load")
    (tmp_path / "a.wasm").write_bytes(relay(3))
    await eventually(lambda: serving(server, "a", relay(3)), "a to be swapped")
    with open(bad, "wb") as f:  # its events fail watchfiles' batch again
        f.write(relay(4))
    (tmp_path / "a.wasm").write_bytes(relay(5))
    await eventually(lambda: serving(server, "a", relay(5)), "a to be swapped again")
    data = await status(server)  # the odd name does not break the status page
    assert {m["name"] for m in data["modules"]} >= {"a", "b"}


async def test_a_deleted_and_recreated_modules_folder_is_watched_again_and_loaded(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "a.wasm").write_bytes(relay(0))
    server = await make_server(modules_dir=folder, watch=True, watch_debounce=0.02)
    assert serving(server, "a", relay(0))

    shutil.rmtree(folder)
    await eventually(lambda: "a" not in server.host.modules, "a to be unloaded")
    folder.mkdir()
    (folder / "a.wasm").write_bytes(relay(1))
    (folder / "b.wasm").write_bytes(relay(2))
    await eventually(lambda: serving(server, "a", relay(1)), "a to load from the new folder")
    await eventually(lambda: serving(server, "b", relay(2)), "b to load from the new folder")
    # and the new folder is watched: a later write is a swap
    (folder / "b.wasm").write_bytes(relay(3))
    await eventually(lambda: serving(server, "b", relay(3)), "b to be swapped")


async def test_a_modules_folder_replaced_by_a_rename_is_watched_and_loaded(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "a.wasm").write_bytes(relay(0))
    (folder / "old.wasm").write_bytes(relay(0))
    server = await make_server(modules_dir=folder, watch=True, watch_debounce=0.02)
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.wasm").write_bytes(relay(1))
    (staged / "new.wasm").write_bytes(relay(2))
    os.rename(folder, tmp_path / "previous")
    os.rename(staged, folder)  # a deploy that swaps the whole folder
    await eventually(lambda: serving(server, "a", relay(1)), "a from the new folder")
    await eventually(lambda: serving(server, "new", relay(2)), "new from the new folder")
    await eventually(lambda: "old" not in server.host.modules, "old to be unloaded")
    (tmp_path / "previous" / "a.wasm").write_bytes(relay(9))  # the old folder is not watched
    (folder / "new.wasm").write_bytes(relay(3))
    await eventually(lambda: serving(server, "new", relay(3)), "new to be swapped")
    assert serving(server, "a", relay(1))


@pytest.mark.parametrize("kind", ["fifo", "folder"])
async def test_debris_in_the_cache_folder_neither_hangs_nor_turns_the_cache_off(
    tmp_path: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    modules, cache_dir = tmp_path / "modules", tmp_path / "cache"
    modules.mkdir()
    cache_dir.mkdir(mode=0o700)
    data = relay(0)
    (modules / "a.wasm").write_bytes(data)
    probe = Runtime(cache_dir=cache_dir)
    assert probe.cache is not None
    entry = probe.cache.path(hashlib.sha256(data).hexdigest())
    probe.close()
    if kind == "fifo":
        os.mkfifo(entry)
    else:
        (entry / "junk").mkdir(parents=True)
    server = await asyncio.wait_for(
        make_server(modules_dir=modules, cache_dir=cache_dir, watch=False), 30
    )
    assert serving(server, "a", data)
    assert "cache off" not in caplog.text
    assert entry.is_file()  # repaired: the compiled code was written in its place
    await server.stop()
    again = await make_server(modules_dir=modules, cache_dir=cache_dir, watch=False)
    assert again.host.modules["a"].compiled.cached
