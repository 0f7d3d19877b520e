"""Source watch → build → swap on a real server: edit, save, the new version answers; a
build error keeps the old one serving and reaches browsers on $sys.build with file:line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tinywasm_wasi.build import Language, build_module
from tinywasm_wasi.build.devloop import BUILD_TOPIC
from tinywasm_wasi.build.scaffold import scaffold

pytestmark = pytest.mark.timeout(600)


async def _next(ws: aiohttp.ClientWebSocketResponse, timeout: float = 60) -> bytes:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    data: bytes = msg.data
    return data


async def test_edit_save_and_the_new_version_answers(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    folder = scaffold("hello", Language.C, tmp_path / "src")
    source = folder / "hello.c"
    modules = tmp_path / "modules"
    await asyncio.to_thread(build_module, folder, modules)
    server = await make_server(
        modules_dir=modules,
        watch_sources=(folder,),
        ws_inbound=("hello",),
        watch_debounce=0.05,
        swap_probation=0.01,
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=hello") as browser,
        http.ws_connect(f"{server.url}/ws?topic={BUILD_TOPIC}") as builds,
    ):
        await browser.send_bytes(b"one")
        assert await _next(browser) == b"#1: one"

        # An edit that changes what it answers.
        source.write_text(
            source.read_text().replace(
                "out[len++] = '#';",
                "out[len++] = 'v'; out[len++] = '2'; out[len++] = ' '; out[len++] = '#';",
            )
        )
        report = json.loads(await _next(builds))
        assert report["module"] == "hello" and report["ok"] is True, report
        assert report["file"] == "hello.wasm"
        answer = b""
        for _ in range(200):  # until the swap has happened: the old one answers "#n"
            await browser.send_bytes(b"two")
            answer = await _next(browser)
            if answer.startswith(b"v2 "):
                break
        assert answer.startswith(b"v2 #") and answer.endswith(b": two"), answer
        count = int(answer[4:].split(b":")[0])
        assert count >= 2, "the count came over from the old version"

        # A syntax error: reported with file:line, and the running version keeps serving.
        good = source.read_text()
        source.write_text(
            good.replace("number_prefix(line, ++count);", "number_prefix(line, ++count)")
        )
        report = json.loads(await _next(builds))
        assert report["ok"] is False, report
        assert "hello.c:" in report["output"] and "error:" in report["output"], report
        assert report["error"].startswith("building hello failed: ziglang exited"), report
        # The log has the compiler's lines as lines of their own, each naming the module.
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("tinywasm")]
        assert any(m.startswith("build hello: ") and "hello.c:" in m for m in lines), lines
        await browser.send_bytes(b"three")
        assert (await _next(browser)).startswith(b"v2 #")

        # A module the server would refuse: the build says why and how to fix it.
        source.write_text(good.replace("TW_EXPORT_ALLOCATOR();", ""))
        report = json.loads(await _next(builds))
        assert report["ok"] is False
        assert "add `TW_EXPORT_ALLOCATOR();`" in report["error"], report
        await browser.send_bytes(b"four")
        assert (await _next(browser)).startswith(b"v2 #")


async def test_watching_ignores_files_outside_the_globs(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    folder = scaffold("quiet", Language.WAT, tmp_path / "src")
    modules = tmp_path / "modules"
    await asyncio.to_thread(build_module, folder, modules)
    server = await make_server(
        modules_dir=modules, watch_sources=(folder,), ws_inbound=("quiet",), watch_debounce=0.05
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic={BUILD_TOPIC}") as builds,
    ):
        (folder / "notes.txt").write_text("not a source")
        (folder / ".quiet.wat.swp").write_text("an editor's swap file")
        wat = folder / "quiet.wat"
        wat.write_text(wat.read_text() + "\n;; a comment\n")
        report = json.loads(await _next(builds))
        assert report["ok"] is True and report["module"] == "quiet"
        with pytest.raises(asyncio.TimeoutError):
            await builds.receive(timeout=0.5)  # one build for the burst, none for the others
