"""Deploy over the API: PUT and DELETE /api/modules/{name}, and `tinywasm deploy`.

A real server on loopback, real modules (WAT relays that answer HTTP), the real watcher.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.release_guests import sha, versioned
from tests.support import eventually
from tests.wat import padded
from tinywasm_wasi.cli import main

pytestmark = pytest.mark.timeout(180)


async def put(http: aiohttp.ClientSession, url: str, data: bytes, **kw: object) -> tuple[int, dict]:
    async with http.put(url, data=data, **kw) as resp:  # type: ignore[arg-type]
        body = (
            await resp.json()
            if resp.content_type == "application/json"
            else {"text": await resp.text()}
        )
        return resp.status, body


async def test_deploy_loads_swaps_refuses_and_undeploys(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # No watcher: under load it may read a deployed file first and swap it itself (the
    # answer then reports that swap, trigger "watcher"); this test checks the deploy's own.
    server = await make_server(modules_dir=tmp_path, swap_probation=0.01, watch=False)
    url = f"{server.url}/api/modules/relay"
    async with aiohttp.ClientSession() as http:
        status, body = await put(http, url, versioned(1))
        assert (status, body["outcome"]) == (200, "loaded")
        assert (tmp_path / "relay.wasm").read_bytes() == versioned(1)
        async with http.get(f"{server.url}/m/relay") as resp:
            assert await resp.text() == "v1"

        status, body = await put(http, url, versioned(2))
        assert (status, body["outcome"], body["sha256"]) == (200, "swapped", sha(versioned(2)))
        assert body["result"]["trigger"] == "deploy"
        async with http.get(f"{server.url}/m/relay") as resp:
            assert await resp.text() == "v2"

        status, body = await put(http, url, versioned(2))
        assert (status, body["outcome"]) == (200, "unchanged")

        # Not WebAssembly: refused with the reason, the old version serves, and the file
        # goes back to what runs.
        status, body = await put(http, url, b"\0asm broken")
        assert status == 422
        assert body["outcome"] == "refused"
        assert body["error"]
        assert (tmp_path / "relay.wasm").read_bytes() == versioned(2)
        async with http.get(f"{server.url}/m/relay") as resp:
            assert await resp.text() == "v2"

        async with http.delete(url) as resp:
            assert resp.status == 200
            assert (await resp.json())["outcome"] == "unloaded"
        assert not (tmp_path / "relay.wasm").exists()
        assert "relay" not in server.host.modules
        async with http.delete(url) as resp:
            assert resp.status == 404
        async with http.get(f"{server.url}/api/modules/relay/history") as resp:
            history = [(h["trigger"], h["outcome"]) for h in (await resp.json())["history"]]
    assert history == [
        ("deploy", "loaded"),
        ("deploy", "swapped"),
        ("deploy", "refused"),
        ("delete", "unloaded"),
    ]
    # The hidden temporary files never stay behind.
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


async def test_a_refused_deploy_of_a_new_name_leaves_no_file_and_no_refusal(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    for watch in (False, True):
        (tmp_path / str(watch)).mkdir()
        server = await make_server(modules_dir=tmp_path / str(watch), watch=watch)
        async with aiohttp.ClientSession() as http:
            status, body = await put(http, f"{server.url}/api/modules/fresh", b"\0asm broken")
            assert (status, body["outcome"]) == (422, "refused")
            assert not (tmp_path / str(watch) / "fresh.wasm").exists()
            assert "fresh" not in server.host.refused
            async with http.get(f"{server.url}/healthz?strict") as resp:
                health = await resp.json()
                assert (resp.status, health["status"]) == (200, "ok"), health


async def test_deploy_refuses_bad_names_empty_and_oversized_bodies_and_strangers(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await make_server(
        modules_dir=tmp_path, max_module_size=4096, admin_token="s3cret-token"
    )
    auth = {"Authorization": "Bearer s3cret-token"}
    async with aiohttp.ClientSession() as http:
        status, body = await put(http, f"{server.url}/api/modules/relay", versioned(1))
        assert status == 401  # no token
        status, body = await put(
            http,
            f"{server.url}/api/modules/relay",
            versioned(1),
            headers={"Authorization": "Bearer wrong"},
        )
        assert status == 403
        status, body = await put(
            http, f"{server.url}/api/modules/with%20space", versioned(1), headers=auth
        )
        assert status == 400
        assert "invalid module name 'with space'" in body["text"]
        status, body = await put(http, f"{server.url}/api/modules/relay", b"", headers=auth)
        assert status == 400
        big = padded(versioned(1), 4097)
        status, body = await put(http, f"{server.url}/api/modules/relay", big, headers=auth)
        assert status == 413
        assert "4096 byte limit" in body["text"]

        async def chunks() -> object:  # no Content-Length: the cap applies while reading
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        status, body = await put(http, f"{server.url}/api/modules/relay", chunks(), headers=auth)  # type: ignore[arg-type]
        assert status == 413
    assert list(tmp_path.iterdir()) == []


async def test_restart_after_a_deploy_serves_the_deployed_version(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "relay.wasm").write_bytes(versioned(1))
    server = await make_server(modules_dir=tmp_path, swap_probation=0.01)
    async with aiohttp.ClientSession() as http:
        status, body = await put(http, f"{server.url}/api/modules/relay", versioned(7))
        assert (status, body["outcome"]) == (200, "swapped")
    await server.stop()
    again = await make_server(modules_dir=tmp_path, swap_probation=0.01)
    assert again.host.modules["relay"].compiled.sha256 == sha(versioned(7))
    async with aiohttp.ClientSession() as http, http.get(f"{again.url}/m/relay") as resp:
        assert await resp.text() == "v7"


async def test_deploy_under_load_loses_and_duplicates_nothing_and_fails_no_request(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    (tmp_path / "relay.wasm").write_bytes(versioned(0))
    server = await make_server(
        modules_dir=tmp_path, swap_probation=0.01, watch_debounce=0.03, ws_queue_size=100_000
    )
    count, deploys = 3000, 20
    statuses: list[int] = []
    answers: set[str] = set()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.url}/ws?topic=out") as reader,
    ):

        async def publish() -> None:
            for i in range(count):
                server.bus.publish("nums", b"%d" % i)
                if i % 20 == 0:
                    await asyncio.sleep(0.004)

        async def requests() -> None:
            for _ in range(400):
                async with http.get(f"{server.url}/m/relay") as resp:
                    statuses.append(resp.status)
                    answers.add(await resp.text())

        async def deploy_many() -> list[str]:
            outcomes = []
            for n in range(1, deploys + 1):
                status, body = await put(http, f"{server.url}/api/modules/relay", versioned(n))
                assert status == 200, body
                outcomes.append(body["outcome"])
            return outcomes

        async def collect() -> list[int]:
            got: list[int] = []
            async with asyncio.timeout(120):
                while len(got) < count:
                    msg = await reader.receive()
                    assert msg.type is aiohttp.WSMsgType.BINARY, msg
                    got.append(int(msg.data))
            return got

        collector = asyncio.create_task(collect())
        outcomes, _, _ = await asyncio.gather(deploy_many(), publish(), requests())
        got = await collector
    assert got == list(range(count)), "lost, duplicated or reordered across deploys"
    assert outcomes == ["swapped"] * deploys
    assert set(statuses) == {200}, f"failed requests: {[s for s in statuses if s != 200]}"
    assert len(answers) > 1  # the requests did run across versions
    assert (tmp_path / "relay.wasm").read_bytes() == versioned(deploys)


async def test_cli_deploy_and_delete(
    tmp_path: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    server = await make_server(modules_dir=modules, swap_probation=0.01, admin_token="tok-123")
    file = tmp_path / "relay.wasm"
    file.write_bytes(versioned(3))
    env = {"TINYWASM_ADMIN_TOKEN": "tok-123"}
    args = ["deploy", str(file), "--server", server.url]
    assert await asyncio.to_thread(main, args, env) == 0
    assert "relay: loaded (sha256 " + sha(versioned(3))[:12] in capsys.readouterr().out
    assert server.host.modules["relay"].compiled.sha256 == sha(versioned(3))

    assert await asyncio.to_thread(main, [*args, "--token", "wrong"], {}) == 1
    assert "403" in capsys.readouterr().err

    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"nope")
    assert (
        await asyncio.to_thread(
            main, ["deploy", str(broken), "--server", server.url, "--name", "relay"], env
        )
        == 1
    )
    assert "relay: refused" in capsys.readouterr().err

    assert await asyncio.to_thread(main, [*args, "--delete"], env) == 0
    assert "relay: unloaded" in capsys.readouterr().out
    await eventually(lambda: "relay" not in server.host.modules)
    # Only the server's state folder (history, pins) is left beside the modules.
    assert [n for n in os.listdir(modules) if n != ".tinywasm"] == []

    assert (
        await asyncio.to_thread(main, ["deploy", str(file), "--server", "http://127.0.0.1:1"], env)
        == 1
    )
    assert "cannot reach http://127.0.0.1:1" in capsys.readouterr().err
