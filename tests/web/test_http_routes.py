"""HTTP routes to modules, end to end: real modules, a real server, real HTTP clients.

The examples (echo, echo_http, 10-tag@[*], 20-auth@[echo_http]) run as committed and as
rebuilt from source; the rule, order, limit and failure cases use tiny WAT guests that
answer a fixed text (compat) or a fixed CBOR map (full mode).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest
import wasmtime

from tests.conftest import ServerFactory
from tests.support import eventually
from tests.wat import guest
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(120)

DATA_AT = 4096  # where a fixed full-mode response sits in a WAT guest's memory


def compat(answer: str | None) -> bytes:
    """A compat-mode guest answering `answer` (NUL-terminated), or 0 (no answer)."""
    if answer is None:
        body = '(func (export "handle") (param i32 i32) (result i32) (i32.const 0))'
        return bytes(wasmtime.wat2wasm(guest(body)))
    body = '(func (export "handle") (param i32 i32) (result i32) {r} drop)'
    return bytes(wasmtime.wat2wasm(guest(body, {"r": answer})))


def full(answer: Any) -> bytes:
    """A full-mode guest whose handle_http returns `answer` CBOR-encoded (raw bytes as is)."""
    data = answer if isinstance(answer, bytes) else cbor2.dumps(answer)
    escaped = "".join(f"\\{b:02x}" for b in data)
    packed = DATA_AT << 32 | len(data)
    body = (
        f'(data (i32.const {DATA_AT}) "{escaped}")\n'
        f'(func (export "handle_http") (param i32 i32) (result i64) (i64.const {packed}))'
    )
    return bytes(wasmtime.wat2wasm(guest(body)))


def full_none() -> bytes:
    body = '(func (export "handle_http") (param i32 i32) (result i64) (i64.const 0))'
    return bytes(wasmtime.wat2wasm(guest(body)))


def passes(header: str, value: str = "1") -> bytes:
    """A full-mode middleware passing every request on with `header: value` set."""
    return full({"next": True, "headers": {header: value}})


def answers(text: str, status: int = 200) -> bytes:
    return full({"status": status, "body": text})


TRAPS = bytes(
    wasmtime.wat2wasm(guest('(func (export "handle") (param i32 i32) (result i32) unreachable)'))
)
LOOPS = bytes(
    wasmtime.wat2wasm(
        guest(
            '(func (export "handle") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 0))'
        )
    )
)
NO_HTTP = bytes(wasmtime.wat2wasm(guest('(func (export "init"))')))


def files(directory: Path, modules: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, data in modules.items():
        (directory / file_name).write_bytes(data)
    return directory


def example(name: str, examples: Path) -> bytes:
    return (examples / name).read_bytes()


async def get(
    http: aiohttp.ClientSession, url: str, method: str = "GET", **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def running_sha(server: WasiServer, name: str) -> str | None:
    module = server.host.modules.get(name)
    return None if module is None else module.compiled.sha256


def recorded(server: WasiServer, name: str, sha: str) -> bool:
    """Whether the history of `name` holds a finished swap (or load) to `sha`."""
    history = server.host.histories.get(name)
    return history is not None and any(r.sha256 == sha for r in history.records)


def rule_of(server: WasiServer, name: str) -> str | None:
    module = server.host.modules.get(name)
    return None if module is None or module.rule is None else module.rule.text


# -- the examples ---------------------------------------------------------------------------


async def test_examples_compat_echo_full_echo_tag_and_auth(
    make_server: ServerFactory, example_modules: Path
) -> None:
    server = await make_server(modules_dir=example_modules)
    async with aiohttp.ClientSession() as http:
        status, headers, body = await get(http, f"{server.url}/m/echo/hello/world?x=1")
        assert (status, body) == (200, b"echo: GET /m/echo/hello/world\n")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        status, _, body = await get(http, f"{server.url}/m/echo", "POST", data=b"ignored")
        assert (status, body) == (200, b"echo: POST /m/echo\n")

        # 10-tag@[*] passes it on with x-tag; 20-auth@[echo_http] wants credentials.
        status, headers, body = await get(http, f"{server.url}/m/echo_http/a%20b?q=1")
        assert status == 401
        assert headers["WWW-Authenticate"] == "Bearer"
        assert body == b"missing Authorization header\n"

        status, headers, body = await get(
            http,
            f"{server.url}/m/echo_http/a%20b?q=1&r=%C3%A9",
            "PUT",
            data=b'hi "there"\x00\xff',
            headers={"Authorization": "Bearer abc", "X-Tag": "spoofed"},
        )
        assert status == 200, body
        assert headers["Content-Type"] == "application/json"
        assert headers["x-echo"] == "echo_http"
        echoed = json.loads(body)
        assert echoed["method"] == "PUT"
        assert echoed["path"] == "/m/echo_http/a%20b"
        assert echoed["route"] == "echo_http"
        assert echoed["query"] == "q=1&r=%C3%A9"
        assert echoed["body_size"] == 12
        assert echoed["body"] == 'hi "there"\x00\xff'
        seen = echoed["headers"]
        assert seen["authorization"] == "Bearer abc"
        assert seen["x-tag"] == "tag"  # the middleware's header replaces the client's
        assert seen["x-auth"] == "present"

    middlewares = [m.name for m in server.host.middlewares()]
    assert middlewares == ["tag", "auth"]
    assert server.host.modules["echo"].counters.requests == 2
    assert server.host.modules["tag"].counters.requests == 4


async def test_middlewares_unknown_names_and_modules_without_http_are_404(
    make_server: ServerFactory, example_modules: Path
) -> None:
    server = await make_server(modules_dir=example_modules)
    async with aiohttp.ClientSession() as http:
        for name in ("tag", "auth"):
            status, _, body = await get(http, f"{server.url}/m/{name}")
            assert status == 404
            assert f"module {name!r} is a middleware" in body.decode()
            assert "cannot be reached directly" in body.decode()
        status, _, body = await get(http, f"{server.url}/m/nobody/x")
        assert status == 404
        assert body == (
            b"no module named 'nobody' is loaded; modules with an HTTP route: "
            b"/m/echo, /m/echo_http\n"
        )
        for bare in ("/m", "/m/"):
            status, _, body = await get(http, server.url + bare)
            assert status == 404
            assert body.startswith(b"give a module name: /m/<name>[/...]; modules with")
        status, _, body = await get(http, f"{server.url}/m/chat")
        assert status == 404
        assert b"exports neither handle nor handle_http" in body
    assert server.host.modules["tag"].counters.requests == 0  # nothing ran for a 404


async def test_api_modules_shows_each_modules_role_and_rule(
    make_server: ServerFactory, example_modules: Path
) -> None:
    server = await make_server(modules_dir=example_modules)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/api/modules") as resp:
        modules = {m["name"]: m for m in (await resp.json())["modules"]}
    assert {n: (m["role"], m["rule"], m["http"]) for n, m in modules.items()} == {
        "chat": ("module", None, None),
        "monitor": ("module", None, None),
        "receiver": ("module", None, None),
        "sender": ("module", None, None),
        "echo": ("module", None, "handle"),
        "echo_http": ("module", None, "handle_http"),
        "tag": ("middleware", "*", "handle_http"),
        "auth": ("middleware", "echo_http", "handle_http"),
    }
    assert modules["auth"]["file"] == "20-auth@[echo_http].wasm"


# -- rules, order, short-circuit ------------------------------------------------------------


async def test_each_rule_form_runs_in_front_of_the_routes_it_names(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    echo_http = example("echo_http.wasm", Path(__file__).parents[2] / "modules" / "dist")
    directory = files(
        tmp_path,
        {
            "users.wasm": echo_http,
            "admin.wasm": echo_http,
            "auth.wasm": echo_http,
            "all@[*].wasm": passes("x-all"),
            "only@[users,admin].wasm": passes("x-only"),
            "except@[-auth].wasm": passes("x-except"),  # the concept's pipeline ignored this
            "star_except@[*, -auth, -admin].wasm": passes("x-star-except"),
        },
    )
    server = await make_server(modules_dir=directory, watch=False)
    expected = {
        "users": {"x-all", "x-only", "x-except", "x-star-except"},
        "admin": {"x-all", "x-only", "x-except"},
        "auth": {"x-all"},
    }
    async with aiohttp.ClientSession() as http:
        for route, headers in expected.items():
            status, _, body = await get(http, f"{server.url}/m/{route}")
            assert status == 200, body
            seen = {h for h in json.loads(body)["headers"] if h.startswith("x-")}
            assert seen == headers, route


async def test_order_is_by_prefix_then_name_and_the_first_answer_ends_the_chain(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    directory = files(
        tmp_path,
        {
            "t.wasm": compat("target"),
            "9-nine@[t].wasm": passes("x-nine"),
            "10-ten@[*].wasm": answers("ten"),  # numeric order: 9 before 10
            "alpha@[*].wasm": compat("alpha"),  # unprefixed: after every prefixed one
            "zz@[*].wasm": compat("zz"),
            "8-quiet@[*].wasm": compat(None),  # compat 0: passes the request on
        },
    )
    server = await make_server(modules_dir=directory, watch=False)
    assert [m.name for m in server.host.middlewares()] == ["quiet", "nine", "ten", "alpha", "zz"]
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            status, _, body = await get(http, f"{server.url}/m/t")
            assert (status, body) == (200, b"ten")
    counters = {n: m.counters.requests for n, m in server.host.modules.items()}
    assert counters == {"t": 0, "quiet": 2, "nine": 2, "ten": 2, "alpha": 0, "zz": 0}


async def test_a_rename_changes_a_middlewares_rule_on_the_next_request(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    directory = files(
        tmp_path,
        {
            "t.wasm": compat("target"),
            "10-ten@[*].wasm": answers("ten"),
            "alpha@[*].wasm": compat("alpha"),
        },
    )
    server = await make_server(modules_dir=directory, watch_debounce=0.02)
    async with aiohttp.ClientSession() as http:
        assert (await get(http, f"{server.url}/m/t"))[2] == b"ten"

        os.rename(directory / "10-ten@[*].wasm", directory / "10-ten@[-t].wasm")
        await eventually(lambda: rule_of(server, "ten") == "*,-t")
        assert (await get(http, f"{server.url}/m/t"))[2] == b"alpha"

        os.rename(directory / "alpha@[*].wasm", directory / "alpha@[other].wasm")
        await eventually(lambda: rule_of(server, "alpha") == "other")
        assert (await get(http, f"{server.url}/m/t"))[2] == b"target"

        os.rename(directory / "alpha@[other].wasm", directory / "alpha.wasm")  # no rule
        await eventually(
            lambda: "alpha" in server.host.modules and rule_of(server, "alpha") is None
        )
        # alpha is a route now, and ten (every route but t) runs in front of it.
        assert (await get(http, f"{server.url}/m/alpha"))[2] == b"ten"
        assert (await get(http, f"{server.url}/m/t"))[2] == b"target"

        # Back to a middleware, the same bytes, now first for t: it answers.
        os.rename(directory / "alpha.wasm", directory / "05-alpha@[t].wasm")
        await eventually(lambda: rule_of(server, "alpha") == "t")
        assert [m.name for m in server.host.middlewares()] == ["alpha", "ten"]
        assert (await get(http, f"{server.url}/m/t"))[2] == b"alpha"
        # And after ten, which now runs for t too: ten answers first.
        os.rename(directory / "10-ten@[-t].wasm", directory / "01-ten@[*].wasm")
        await eventually(lambda: rule_of(server, "ten") == "*")
        assert [m.name for m in server.host.middlewares()] == ["ten", "alpha"]
        assert (await get(http, f"{server.url}/m/t"))[2] == b"ten"
    assert not server.host.refused


# -- answers and failures ---------------------------------------------------------------------


async def test_no_answer_is_204_in_both_modes_and_full_mode_status_and_headers_pass_through(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    directory = files(
        tmp_path,
        {
            "c.wasm": compat(None),
            "f.wasm": full_none(),
            "teapot.wasm": full(
                {"status": 418, "headers": {"set-cookie": ["a=1", "b=2"]}, "body": b"\x00\x01"}
            ),
        },
    )
    server = await make_server(modules_dir=directory, watch=False)
    async with aiohttp.ClientSession() as http:
        for name in ("c", "f"):
            status, _, body = await get(http, f"{server.url}/m/{name}")
            assert (status, body) == (204, b""), name
        async with http.get(f"{server.url}/m/teapot") as resp:
            assert resp.status == 418
            assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            assert resp.headers["Content-Type"] == "application/octet-stream"
            assert await resp.read() == b"\x00\x01"


async def test_body_over_the_limit_is_413_with_or_without_content_length(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    echo_http = example("echo_http.wasm", Path(__file__).parents[2] / "modules" / "dist")
    directory = files(tmp_path, {"e.wasm": echo_http, "ok.wasm": answers("ok")})
    server = await make_server(modules_dir=directory, http_max_body=1000, watch=False)

    async def chunked(size: int) -> Any:
        for _ in range(size // 100):
            yield b"x" * 100

    async with aiohttp.ClientSession() as http:
        status, _, body = await get(http, f"{server.url}/m/ok", "POST", data=b"x" * 1000)
        assert (status, body) == (200, b"ok")
        status, _, body = await get(http, f"{server.url}/m/ok", "POST", data=b"x" * 1001)
        assert status == 413
        assert body == b"the request body is over the 1000 byte limit (--http-max-body)\n"
        status, _, _ = await get(http, f"{server.url}/m/ok", "POST", data=chunked(2000))
        assert status == 413
        # The response body has the same limit: echoing 990 bytes makes a longer one.
        status, _, body = await get(http, f"{server.url}/m/e", "POST", data=b"x" * 990)
        assert status == 500
        assert b"over the 1000 byte limit" in body
        status, _, body = await get(http, f"{server.url}/m/e", "POST", data=b"x" * 100)
        assert status == 200 and json.loads(body)["body_size"] == 100
    assert server.host.modules["ok"].counters.requests == 1


async def test_traps_malformed_answers_and_middleware_failures_are_500_with_a_reason(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    directory = files(
        tmp_path,
        {
            "traps.wasm": TRAPS,
            "garbage.wasm": full(b"\xff\x00"),
            "badstatus.wasm": full({"status": 99}),
            "next.wasm": full({"next": True}),
            "guarded.wasm": compat("guarded"),
            "broken@[guarded].wasm": full({"next": True, "headers": {"content-length": "1"}}),
            "ok.wasm": compat("ok"),
        },
    )
    server = await make_server(modules_dir=directory, watch=False)
    expected = {
        "traps": "module 'traps' trapped in handle() [UNREACHABLE]",
        "garbage": "module 'garbage' returned a malformed response: not valid CBOR",
        "badstatus": "'status' must be an integer from 200 to 599, got 99",
        "next": "only a middleware can pass a request on",
        "guarded": "module 'broken' returned a malformed response: header 'content-length'",
    }
    async with aiohttp.ClientSession() as http:
        for name, reason in expected.items():
            status, headers, body = await get(http, f"{server.url}/m/{name}")
            text = body.decode()
            assert status == 500, name
            assert reason in text, text
            assert "Traceback" not in text and text.count("\n") == 1
            assert headers["Content-Type"].startswith("text/plain")
        assert (await get(http, f"{server.url}/m/ok"))[2] == b"ok"  # the server goes on
    assert server.host.modules["guarded"].counters.requests == 0  # failed closed


async def test_a_runaway_handler_is_interrupted_with_504(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    directory = files(tmp_path, {"loops.wasm": LOOPS, "ok.wasm": compat("ok")})
    server = await make_server(modules_dir=directory, call_timeout=0.05, watch=False)
    async with aiohttp.ClientSession() as http:
        status, _, body = await get(http, f"{server.url}/m/loops")
        assert (status, body) == (504, b"module 'loops' did not answer within 50 ms\n")
        assert (await get(http, f"{server.url}/m/ok"))[2] == b"ok"
        status, _, _ = await get(http, f"{server.url}/m/loops")  # and again: it recovered
        assert status == 504


def compat_long(length: int | None) -> bytes:
    """A compat-mode guest answering `length` bytes of "x" (the NUL after them: the memory is
    zero there), or, for `length` None, a body with no NUL in the 64 KiB it may span."""
    if length is None:  # 2 pages of "x" from address 0: no NUL anywhere after the pointer
        body = (
            '(func (export "handle") (param i32 i32) (result i32)\n'
            "  (memory.fill (i32.const 0) (i32.const 120) (i32.const 131072)) (i32.const 8))"
        )
        return bytes(wasmtime.wat2wasm(guest(body)))
    body = (
        f'(func (export "handle") (param i32 i32) (result i32)\n'
        f"  (memory.fill (i32.const 65536) (i32.const 120) (i32.const {length}))\n"
        f"  (i32.store8 (i32.const {65536 + length}) (i32.const 0)) (i32.const 65536))"
    )
    return bytes(wasmtime.wat2wasm(guest(body, pages=3)))


async def test_compat_bodies_of_any_length_up_to_64_kib_arrive_whole(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    """The host looks for the NUL in a small window first, then in the whole 64 KiB."""
    lengths = [0, 1, 511, 512, 513, 5000, 64 * 1024]
    directory = files(
        tmp_path,
        {f"x{n}.wasm": compat_long(n) for n in lengths} | {"nonul.wasm": compat_long(None)},
    )
    server = await make_server(modules_dir=directory, watch=False)
    async with aiohttp.ClientSession() as http:
        for n in lengths:
            status, _, body = await get(http, f"{server.url}/m/x{n}")
            assert (status, len(body), body.strip(b"x")) == (200, n, b""), n
        status, _, body = await get(http, f"{server.url}/m/nonul")
        assert status == 500
        assert b"no NUL within 65536 bytes" in body, body


async def test_a_full_mailbox_is_503_with_retry_after(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    directory = files(tmp_path, {"loops.wasm": LOOPS})
    server = await make_server(modules_dir=directory, call_timeout=1.0, mailbox_size=1, watch=False)
    mailbox = server.host.modules["loops"].mailbox
    async with aiohttp.ClientSession() as http:
        base = mailbox.accepted
        first = asyncio.create_task(get(http, f"{server.url}/m/loops"))
        # It runs (taken out of the mailbox), so the next one fits in the one free place.
        await eventually(lambda: mailbox.accepted == base + 1 and mailbox.depth == 0)
        second = asyncio.create_task(get(http, f"{server.url}/m/loops"))
        await eventually(lambda: mailbox.depth == 1)  # it waits: the mailbox is full
        status, headers, body = await get(http, f"{server.url}/m/loops")
        assert (status, body) == (503, b"module 'loops' is busy: retry later\n")
        assert headers["Retry-After"] == "1"
        assert (await first)[0] == 504 and (await second)[0] == 504


# -- hot swap under load ----------------------------------------------------------------------


async def test_swapping_a_target_and_a_middleware_under_load_fails_no_request(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    """Every request is answered by exactly one version, across swaps that also change the
    target's mode (compat <-> full) and the middleware's bytes."""
    echo_http = example("echo_http.wasm", Path(__file__).parents[2] / "modules" / "dist")
    directory = files(
        tmp_path,
        {
            "t.wasm": compat("v0"),
            "e.wasm": echo_http,
            "10-mw@[*].wasm": passes("x-mw", "0"),
        },
    )
    server = await make_server(modules_dir=directory, watch_debounce=0.02, swap_probation=0.01)
    stop = asyncio.Event()
    answers_seen: list[bytes] = []
    mw_versions: list[str] = []
    failures: list[tuple[int, bytes]] = []

    async def client(http: aiohttp.ClientSession, route: str) -> int:
        count = 0
        while not stop.is_set():
            status, _, body = await get(http, f"{server.url}/m/{route}")
            count += 1
            if status != 200:
                failures.append((status, body))
            elif route == "t":
                answers_seen.append(body)
            else:
                mw_versions.append(json.loads(body)["headers"]["x-mw"])
        return count

    async def swap_many() -> None:
        for n in range(1, 13):
            target = compat(f"v{n}") if n % 2 else answers(f"v{n}")
            (directory / "t.wasm").write_bytes(target)
            middleware = passes("x-mw", str(n))
            temp = directory / ".mw.tmp"
            temp.write_bytes(middleware)
            os.replace(temp, directory / "10-mw@[*].wasm")
            sha = hashlib.sha256(target).hexdigest()
            mw_sha = hashlib.sha256(middleware).hexdigest()
            # Serving from the cut-over; recorded once the swap is over (after probation).
            await eventually(
                lambda sha=sha, mw_sha=mw_sha: (
                    running_sha(server, "t") == sha
                    and running_sha(server, "mw") == mw_sha
                    and recorded(server, "t", sha)
                    and recorded(server, "mw", mw_sha)
                ),
                f"the swaps to version {n} of t and mw",
            )
            # Let the clients meet this version before the next swap.
            await eventually(
                lambda n=n: f"v{n}".encode() in answers_seen and str(n) in mw_versions,
                f"requests answered by version {n} of t and mw",
            )
        stop.set()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.gather(
            swap_many(), *(client(http, "t" if i % 2 else "e") for i in range(16))
        )
    assert failures == []
    assert sum(results[1:]) > 200
    assert set(answers_seen) <= {f"v{n}".encode() for n in range(13)}
    assert len(set(answers_seen)) > 6 and len(set(mw_versions)) > 6  # requests met many versions
    outcomes = [r.outcome.value for r in server.host.histories["t"].records]
    assert outcomes.count("swapped") == 12, outcomes


async def test_the_examples_copy_into_a_two_middleware_pass_through_setup(
    tmp_path: Path, make_server: ServerFactory, example_modules: Path
) -> None:
    """What the benchmark runs: /m/echo behind two pass-through middlewares."""
    directory = tmp_path / "bench"
    directory.mkdir()
    tag = example_modules / "10-tag@[*].wasm"
    shutil.copy(example_modules / "echo.wasm", directory / "echo.wasm")
    shutil.copy(tag, directory / "10-tag@[*].wasm")
    shutil.copy(tag, directory / "11-tag2@[*].wasm")
    server = await make_server(modules_dir=directory, watch=False)
    async with aiohttp.ClientSession() as http:
        got = await asyncio.gather(*(get(http, f"{server.url}/m/echo") for _ in range(20)))
    assert [(status, body) for status, _, body in got] == [(200, b"echo: GET /m/echo\n")] * 20
    assert [m.name for m in server.host.middlewares()] == ["tag", "tag2"]
    assert server.host.modules["tag2"].counters.requests == 20


async def test_unknown_api_paths_list_every_api_route_the_server_has(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = await make_server(modules_dir=tmp_path, watch=False)
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/nope") as resp:
            assert resp.status == 404
            endpoints = (await resp.json())["endpoints"]
        async with session.patch(f"{base}/api/modules/x") as resp:
            assert resp.status == 405
            allowed = set(resp.headers["Allow"].split(", "))
    for route in (
        "GET /api/modules",
        "PUT /api/ws/inbound",
        "GET /api/topics/{topic}/history",
        "POST /api/modules/{name}/canary/promote",
        "GET /healthz[?strict]",
    ):
        assert route in endpoints
    assert not any("{tail" in e or e.startswith("* ") or e.startswith("HEAD ") for e in endpoints)
    assert allowed == {"GET", "PUT", "DELETE"}
