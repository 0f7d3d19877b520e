"""Hostile and broken modules against a real server: each hurts only itself.

Every test runs a real WasiServer on loopback with two modules: a hostile one
from tests/scenarios/hostile.py and `healthy`, which answers each WebSocket frame on
"ping" with a frame on "pong". Real WebSocket clients drive the healthy module
while the hostile one misbehaves and afterwards; every ping must come back, in
order. `GET /api/modules` must then say what went wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.scenarios.hostile import (
    DRAIN_LOOP,
    FD_WRITE,
    FD_WRITE_FAULTS,
    FLOOD,
    HEALTHY,
    HTTP,
    LIMITS,
    LOADED,
    LOG_WILD_LENGTHS,
    MEMORY_LIMIT,
    ON_MESSAGE,
    PAGE,
    REFUSED,
    RESTORE_STATE,
    SAVE_STATE,
    STATE,
    TABLE_BOMB,
    TOPIC,
    WILD_POINTERS,
    BadFile,
    Http,
    OnMessage,
    fd_write_faults,
    on_message,
    relay,
    sleeper,
    wild_pointers,
)
from tests.support import eventually
from tests.wat import IMPORTS
from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.policy.history import Outcome
from tinywasm_wasi.runtime.guest_log import LOG_BURST, LOG_LINES_PER_SECOND
from tinywasm_wasi.server import WasiServer

pytestmark = pytest.mark.timeout(60)

SERVER: dict[str, Any] = {
    **LIMITS,
    "watch": False,
    "quarantine_traps": 1000,  # off, unless a test turns it on
    "quarantine_window": 60.0,
    "quarantine_backoff": 0.2,
    "ws_inbound": ("ping", TOPIC),
    "ws_rate_limit": 0,
    "drain_timeout": 1.0,
    "swap_probation": 0.05,
}
# The healthy module gets a roomy deadline: a shared CI core must not interrupt it.
HEALTHY_LIMITS = "[healthy]\ncall_timeout = 2.0\n"
TRIGGERS = 3
BOUND = 2.0  # seconds: "within roughly the deadline", generous enough not to flake


async def start(
    make_server: ServerFactory,
    directory: Path,
    files: dict[str, bytes],
    limits: str = "",
    **settings: Any,
) -> WasiServer:
    """A server on `directory` holding the healthy module and `files` (name -> bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "healthy.wasm").write_bytes(HEALTHY)
    for name, data in files.items():
        (directory / f"{name}.wasm").write_bytes(data)
    (directory / "limits.toml").write_text(HEALTHY_LIMITS + limits)
    return await make_server(modules_dir=directory, **{**SERVER, **settings})


class Traffic:
    """Real WebSocket clients: pings through the healthy module, triggers to the hostile one."""

    def __init__(self, server: WasiServer) -> None:
        self.server = server
        self.sent = 0

    async def __aenter__(self) -> Traffic:
        url = self.server.url
        self.http = aiohttp.ClientSession()
        self.ping = await self.http.ws_connect(f"{url}/ws?topic=ping")
        self.pong = await self.http.ws_connect(f"{url}/ws?topic=pong")
        self.hostile = await self.http.ws_connect(f"{url}/ws?topic={TOPIC}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in (self.ping, self.pong, self.hostile):
            await ws.close()
        await self.http.close()

    async def roundtrip(self, count: int = 30) -> None:
        """Send `count` pings; every one must come back as a pong, in order."""
        first, self.sent = self.sent, self.sent + count
        want = [b"ping %d" % i for i in range(first, first + count)]

        async def receive() -> list[bytes]:
            got: list[bytes] = []
            async with asyncio.timeout(10):
                while len(got) < count:
                    msg = await self.pong.receive()
                    assert msg.type is aiohttp.WSMsgType.BINARY, msg
                    got.append(msg.data)
            return got

        receiving = asyncio.create_task(receive())
        for payload in want:
            await self.ping.send_bytes(payload)
            await asyncio.sleep(0)
        assert await receiving == want, "the healthy module lost, duplicated or reordered a ping"

    async def trigger(self, payload: bytes = b"boom", times: int = 1) -> None:
        for _ in range(times):
            await self.hostile.send_bytes(payload)

    async def status(self) -> dict[str, Any]:
        async with self.http.get(f"{self.server.url}/api/modules") as resp:
            assert resp.status == 200
            data: dict[str, Any] = await resp.json()
            return data

    async def entries(self, name: str) -> list[dict[str, Any]]:
        return [m for m in (await self.status())["modules"] if m["name"] == name]

    async def entry(self, name: str, state: str = "live") -> dict[str, Any]:
        """The /api/modules entry of `name` in `state` (exactly one)."""
        found = [m for m in await self.entries(name) if m["state"] == state]
        assert len(found) == 1, f"{name!r} in state {state!r}: {await self.entries(name)}"
        return found[0]

    async def handled(self, name: str, count: int) -> None:
        """Wait until `name` has delivered or failed `count` messages."""

        async def check() -> bool:
            found = [m for m in await self.entries(name) if m["state"] == "live"]
            if not found:
                return False
            counters = found[0]["counters"]
            return bool(counters["delivered"] + counters["failed"] >= count)

        await eventually(check, f"{name} to have handled {count} message(s)")

    async def healthz(self, problems: dict[str, str] | None = None) -> None:
        """/healthz still answers 200 and lists exactly the problems the host has
        (`problems`: module -> kind, when the test knows them), ok when there are none."""
        async with self.http.get(f"{self.server.url}/healthz") as resp:
            assert resp.status == 200
            body = await resp.json()
        host = self.server.host
        listed = {p["module"]: p["problem"] for p in body["problems"]}
        assert set(listed) == {*host.quarantined, *host.refused}, body
        if problems is not None:
            assert listed == problems, body
        assert body["status"] == ("degraded" if listed else "ok")


def trap_logged(caplog: pytest.LogCaptureFixture, name: str, call: str) -> bool:
    return any(
        r.name == "tinywasm.module" and f"module {name!r} trapped in {call}()" in r.getMessage()
        for r in caplog.records
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def retry_pending(server: WasiServer, name: str) -> bool:
    """Whether the host still holds a live timer to retry quarantined `name`."""
    return name in server.host.swapper.timers  # a timer cancelled or fired is dropped


# -- refused at load ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.name)
async def test_a_broken_file_is_refused_at_startup_with_its_reason(
    tmp_path: Path, make_server: ServerFactory, case: BadFile
) -> None:
    server = await start(make_server, tmp_path, {case.name: case.data})
    async with Traffic(server) as traffic:
        await traffic.roundtrip()
        status = await traffic.status()
        assert [m["name"] for m in status["modules"]] == ["healthy"]
        reason = status["refused"][case.name]
        for part in case.reason:
            assert part in reason, reason
        await traffic.healthz({case.name: "refused"})


@pytest.mark.parametrize("case", LOADED, ids=lambda c: c.name)
async def test_an_odd_but_valid_file_loads_beside_the_healthy_module(
    tmp_path: Path, make_server: ServerFactory, case: BadFile
) -> None:
    server = await start(make_server, tmp_path, {case.name: case.data})
    async with Traffic(server) as traffic:
        await traffic.roundtrip()
        assert (await traffic.entry(case.name))["last_error"] is None
        assert case.name not in (await traffic.status())["refused"]


async def test_broken_files_dropped_in_while_serving_are_refused_quickly_and_traffic_flows(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await start(make_server, tmp_path, {}, watch=True, watch_debounce=0.02)
    async with Traffic(server) as traffic:
        for case in REFUSED:

            async def refused(name: str = case.name) -> bool:
                return name in server.host.refused

            begun = time.monotonic()
            temp = tmp_path / f".{case.name}.tmp"  # hidden from the watcher until renamed
            temp.write_bytes(case.data)
            os.replace(temp, tmp_path / f"{case.name}.wasm")
            await asyncio.gather(traffic.roundtrip(10), eventually(refused, f"{case.name} refused"))
            elapsed = time.monotonic() - begun
            assert elapsed < BOUND, f"{case.name}: refused after {elapsed:.2f} s"
            for part in case.reason:
                assert part in server.host.refused[case.name]
        await traffic.roundtrip()
        assert list(server.host.modules) == ["healthy"]


# -- misbehaving on every message ---------------------------------------------------------------


@pytest.mark.parametrize("case", ON_MESSAGE, ids=lambda c: c.name)
async def test_a_module_misbehaving_on_each_message_hurts_only_itself(
    tmp_path: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    case: OnMessage,
) -> None:
    caplog.set_level(logging.INFO, "tinywasm")
    limits = f"[{case.name}]\n{case.limits}\n" if case.limits else ""
    server = await start(make_server, tmp_path, {case.name: case.data}, limits)
    async with Traffic(server) as traffic:
        began = time.monotonic()
        during = traffic.trigger(case.payload, times=TRIGGERS)
        await asyncio.gather(during, traffic.roundtrip(50))
        await traffic.handled(case.name, TRIGGERS)
        flooded_for = time.monotonic() - began
        await traffic.roundtrip()  # after
        await traffic.healthz()
        await traffic.handled("healthy", traffic.sent)  # its counters lag its last pong a little
        entry = await traffic.entry(case.name)
        healthy = await traffic.entry("healthy")

    for counter, per_message in case.counters.items():
        assert entry["counters"][counter] == per_message * TRIGGERS, (counter, entry)
    if case.error:
        for part in case.error:
            assert part in entry["last_error"], entry["last_error"]
        call = case.error[0].split("(")[0]
        assert trap_logged(caplog, case.name, call), "the trap was not logged with the module"
    else:
        assert entry["last_error"] is None
    if case.memory_bytes is not None:
        assert entry["memory_bytes"] == case.memory_bytes
    assert entry["memory_bytes"] <= MEMORY_LIMIT
    assert entry["limits"] == {
        "memory_limit": MEMORY_LIMIT,
        "call_timeout": 10.0 if case.limits else LIMITS["call_timeout"],
        "max_payload": LIMITS["max_payload"],
    }
    assert healthy["counters"]["traps"] == 0
    assert healthy["counters"]["delivered"] == traffic.sent

    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "tinywasm.guest" and r.getMessage().startswith(f"[{case.name}] ")
    ]
    flood_lines = [line for line in lines if "suppressed: more than" not in line]
    if case.log_flood:
        # every line is either logged or counted as suppressed, and most were suppressed
        assert len(flood_lines) + entry["log_lines_suppressed"] == FLOOD * TRIGGERS
        # The budget: the burst, plus what refills while the flood runs (a busy machine
        # makes it run longer, so the bound follows the time it took).
        assert len(flood_lines) <= LOG_BURST + LOG_LINES_PER_SECOND * flooded_for + 1
        assert entry["log_lines_suppressed"] > 0
    if case.name == "long_log_line":
        # cut to 4096 characters of the guest's memory; its NULs are logged as "\x00"
        escapes = re.compile(r"\\x[0-9a-f]{2}|\\u[0-9a-f]{4}|\\[nr]")
        assert [len(escapes.sub("_", line)) for line in flood_lines] == [
            len("[long_log_line] ") + 4096
        ] * TRIGGERS
        assert all("\\x00" in line for line in flood_lines)


async def test_bad_pointers_and_lengths_to_every_host_function_trap_with_exact_messages(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await start(make_server, tmp_path, {"wild": wild_pointers(WILD_POINTERS)})
    async with Traffic(server) as traffic:
        for i, case in enumerate(WILD_POINTERS):
            await traffic.trigger(bytes([i]))
            await traffic.handled("wild", i + 1)
            entry = await traffic.entry("wild")
            assert entry["last_error"] == (
                f"module 'wild' trapped in on_message() [host fault]: {case.fault}"
            ), case.label
            if i % 8 == 0:
                await traffic.roundtrip(10)
        await traffic.roundtrip()
        entry = await traffic.entry("wild")
    assert entry["counters"]["traps"] == len(WILD_POINTERS)
    assert entry["counters"]["delivered"] == 0
    assert entry["subscriptions"] == [TOPIC]  # none of the wild subscribes took effect
    assert server.bus.publish("ok", b"x") == 0


async def test_log_with_a_length_outside_memory_traps(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await start(make_server, tmp_path, {"wild": wild_pointers(LOG_WILD_LENGTHS)})
    async with Traffic(server) as traffic:
        for i in range(len(LOG_WILD_LENGTHS)):
            await traffic.trigger(bytes([i]))
        await traffic.handled("wild", len(LOG_WILD_LENGTHS))
        await traffic.roundtrip()
        entry = await traffic.entry("wild")
    assert entry["counters"]["traps"] == len(LOG_WILD_LENGTHS)
    assert "log: message at" in entry["last_error"]
    assert "outside guest memory" in entry["last_error"]


async def test_bad_fd_write_arguments_return_an_errno_and_never_trap(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await start(make_server, tmp_path, {"fdw": fd_write_faults(FD_WRITE_FAULTS)})
    async with Traffic(server) as traffic:
        for i in range(len(FD_WRITE_FAULTS)):
            await traffic.trigger(bytes([i]))
        await asyncio.gather(traffic.roundtrip(), traffic.handled("fdw", len(FD_WRITE_FAULTS)))
        entry = await traffic.entry("fdw")
    # the guest traps (unreachable) if fd_write returned anything but the expected errno
    assert entry["counters"]["traps"] == 0, entry["last_error"]
    assert entry["counters"]["delivered"] == len(FD_WRITE_FAULTS)


async def test_one_fd_write_cannot_make_the_host_allocate_many_times_guest_memory(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # 40 iovecs, each naming the whole 1 MiB memory: 40 MiB asked for in one call.
    iovecs = 40
    amplifier = on_message(
        f"(local.set $i (i32.const 0))"
        f"(loop $fill"
        f"  (i32.store (i32.mul (local.get $i) (i32.const 8)) (i32.const 0))"
        f"  (i32.store (i32.add (i32.mul (local.get $i) (i32.const 8)) (i32.const 4)) "
        f"(i32.const {MEMORY_LIMIT}))"
        f"  (local.set $i (i32.add (local.get $i) (i32.const 1)))"
        f"  (br_if $fill (i32.lt_u (local.get $i) (i32.const {iovecs}))))"
        f"(drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const {iovecs}) (i32.const 4000)))"
        f"(drop (memory.grow (i32.const 0)))",
        local="(local $i i32)",
        imports=FD_WRITE + IMPORTS,
        pages=MEMORY_LIMIT // PAGE,
    )
    server = await start(make_server, tmp_path, {"amplifier": amplifier})
    async with Traffic(server) as traffic:
        await traffic.roundtrip(5)
        tracemalloc.start()
        try:
            await traffic.trigger()
            await traffic.handled("amplifier", 1)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await traffic.roundtrip(5)
    assert peak < 8 * MEMORY_LIMIT, f"one fd_write made the host allocate {peak >> 20} MiB"


async def test_a_table_bomb_is_capped_like_a_memory_bomb(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await start(make_server, tmp_path, {"table_bomb": TABLE_BOMB})
    async with (
        Traffic(server) as traffic,
        traffic.http.ws_connect(f"{server.url}/ws?topic=table.grow") as result,
    ):
        await traffic.trigger()
        msg = await result.receive(timeout=10)
        await traffic.roundtrip()
    assert int.from_bytes(msg.data, "little", signed=True) == -1  # table.grow refused


# -- deadlines ---------------------------------------------------------------------------------


async def test_a_runaway_call_is_interrupted_soon_after_its_deadline(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    loop = next(c for c in ON_MESSAGE if c.name == "loop_on_message")
    server = await start(make_server, tmp_path, {"loop": loop.data})
    async with Traffic(server) as traffic:
        begun = time.monotonic()
        await traffic.trigger()
        await traffic.handled("loop", 1)
        elapsed = time.monotonic() - begun
        entry = await traffic.entry("loop")
        await traffic.roundtrip()
    assert entry["counters"]["interrupted"] == 1
    assert elapsed < BOUND


async def test_the_healthy_module_serves_while_a_runaway_call_is_still_running(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # A 1.5 s deadline for the runaway module (limits.toml), so "during" is unambiguous.
    loop = next(c for c in ON_MESSAGE if c.name == "loop_on_message")
    server = await start(make_server, tmp_path, {"loop": loop.data}, "[loop]\ncall_timeout = 1.5\n")
    async with Traffic(server) as traffic:
        begun = time.monotonic()
        await traffic.trigger()
        module = server.host.modules["loop"]
        await eventually(lambda: not module.mailbox.idle, "the runaway call to start")
        await traffic.roundtrip(50)
        assert module.counters.interrupted == 0, "interrupted before the healthy pings ended"
        assert not module.mailbox.idle  # still stuck in the loop
        await traffic.handled("loop", 1)
        elapsed = time.monotonic() - begun
        entry = await traffic.entry("loop")
        assert entry["limits"]["call_timeout"] == 1.5
        await traffic.roundtrip()
    # Ended by its own deadline (the only interrupt here), and not before it: a busy machine
    # can only make `elapsed` longer, so the lower bound holds under any load.
    assert entry["counters"] == {**entry["counters"], "interrupted": 1, "traps": 1, "failed": 1}
    assert "ran past its 1500 ms deadline" in entry["last_error"]
    assert elapsed >= 1.5


async def test_a_wasi_sleep_cannot_outlast_the_call_deadline(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    begun = time.monotonic()
    server = await start(make_server, tmp_path, {"sleeper": sleeper(3.0)})
    elapsed = time.monotonic() - begun
    async with Traffic(server) as traffic:
        await traffic.roundtrip()
    assert elapsed < BOUND, f"the server took {elapsed:.1f} s to start"


async def test_a_per_module_memory_limit_caps_that_module_only(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    bomb = next(c for c in ON_MESSAGE if c.name == "memory_bomb")
    server = await start(
        make_server,
        tmp_path,
        {"small": bomb.data, "large": bomb.data},
        '[small]\nmemory_limit = "256KiB"\n',
    )
    async with Traffic(server) as traffic:
        await traffic.trigger()  # both subscribe to the hostile topic
        await traffic.handled("small", 1)
        await traffic.handled("large", 1)
        await traffic.roundtrip()
        small, large = await traffic.entry("small"), await traffic.entry("large")
    assert (small["memory_bytes"], small["limits"]["memory_limit"]) == (256 * 1024, 256 * 1024)
    assert (large["memory_bytes"], large["limits"]["memory_limit"]) == (MEMORY_LIMIT, MEMORY_LIMIT)


# -- HTTP exports, drain and state ------------------------------------------------------------


@pytest.mark.parametrize("case", HTTP, ids=lambda c: c.name)
async def test_a_misbehaving_http_export_fails_only_its_request(
    tmp_path: Path, make_server: ServerFactory, case: Http
) -> None:
    server = await start(make_server, tmp_path, {case.name: case.data})
    async with Traffic(server) as traffic:

        async def request() -> tuple[int, str]:
            async with traffic.http.get(f"{server.url}/m/{case.name}/x") as resp:
                return resp.status, await resp.text()

        begun = time.monotonic()
        (status, text), _ = await asyncio.gather(request(), traffic.roundtrip(50))
        elapsed = time.monotonic() - begun
        assert await request() == (status, text)  # the next request meets the same fault
        await traffic.roundtrip()
        entry = await traffic.entry(case.name)
    assert (status, case.answer in text) == (case.status, True), text
    for part in case.error:
        assert part in entry["last_error"], entry["last_error"]
    assert entry["counters"]["traps"] == 2
    assert entry["counters"]["interrupted"] == (2 if case.interrupted else 0)
    assert elapsed < BOUND


async def test_a_drain_that_never_returns_does_not_hold_up_unload_or_shutdown(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(make_server, tmp_path, {"drain_loop": DRAIN_LOOP, "stuck": DRAIN_LOOP})
    async with Traffic(server) as traffic:
        (tmp_path / "drain_loop.wasm").unlink()
        begun = time.monotonic()
        record, _ = await asyncio.gather(server.reload("drain_loop"), traffic.roundtrip(50))
        elapsed = time.monotonic() - begun
        await traffic.roundtrip()
    assert record is not None and record.outcome is Outcome.UNLOADED
    assert elapsed < BOUND
    assert trap_logged(caplog, "drain_loop", "drain")
    assert "drain() [INTERRUPT]" in caplog.text
    begun = time.monotonic()
    await server.stop()  # "stuck" drains (and is interrupted) on the way down
    assert time.monotonic() - begun < 2 * BOUND
    assert trap_logged(caplog, "stuck", "drain")


@pytest.mark.parametrize(("name", "what", "export", "error"), SAVE_STATE, ids=lambda v: str(v))
async def test_a_bad_save_state_loses_only_the_state_and_the_swap_goes_ahead(
    tmp_path: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    name: str,
    what: str,
    export: str,
    error: tuple[str, ...],
) -> None:
    new = relay(2)
    server = await start(make_server, tmp_path, {name: relay(1, export)})
    async with Traffic(server) as traffic:
        (tmp_path / f"{name}.wasm").write_bytes(new)
        record, _ = await asyncio.gather(server.reload(name), traffic.roundtrip(50))
        await traffic.trigger()
        await traffic.handled(name, 1)
        await traffic.roundtrip()
        entry = await traffic.entry(name)
    assert record is not None and record.outcome is Outcome.SWAPPED
    assert entry["sha256"] == sha(new)
    assert entry["counters"]["delivered"] == 1
    warnings = [r.getMessage() for r in caplog.records if "state not handed over" in r.getMessage()]
    assert len(warnings) == 1
    for part in error:
        assert part in warnings[0]


@pytest.mark.parametrize(("name", "what", "export", "error"), RESTORE_STATE, ids=lambda v: str(v))
async def test_a_bad_restore_state_rolls_back_to_the_old_version(
    tmp_path: Path,
    make_server: ServerFactory,
    name: str,
    what: str,
    export: str,
    error: tuple[str, ...],
) -> None:
    old = relay(1, STATE)
    server = await start(make_server, tmp_path, {name: old})
    async with Traffic(server) as traffic:
        (tmp_path / f"{name}.wasm").write_bytes(relay(2, export))
        record, _ = await asyncio.gather(server.reload(name), traffic.roundtrip(50))
        await traffic.trigger()
        await traffic.handled(name, 1)
        await traffic.roundtrip()
        status = await traffic.status()
        entry = await traffic.entry(name)
    assert record is not None and record.outcome is Outcome.ROLLED_BACK
    assert entry["sha256"] == sha(old)
    assert entry["counters"]["delivered"] == 1
    for part in error:
        assert record.error is not None and part in record.error
        assert part in status["refused"][name]


# -- quarantine --------------------------------------------------------------------------------

QUARANTINE = {"quarantine_traps": 3, "quarantine_window": 10.0}
UNREACHABLE = on_message("unreachable")
FIXED = relay(9)


async def quarantined(traffic: Traffic, name: str) -> dict[str, Any]:
    async def check() -> bool:
        return any(m["state"] == "quarantined" for m in await traffic.entries(name))

    await eventually(check, f"{name} to be quarantined")
    return await traffic.entry(name, "quarantined")


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("unreachable", "on_message() [UNREACHABLE]"),
        ("loop_on_message", "on_message() [INTERRUPT]"),
        ("recursion", "on_message() [STACK_OVERFLOW]"),
        ("malloc_garbage", "malloc()"),
        ("wild", "[host fault]: publish: topic at 0xffffffff"),
    ],
)
async def test_a_module_that_keeps_trapping_is_quarantined_and_reported(
    tmp_path: Path, make_server: ServerFactory, case: str, error: str
) -> None:
    data = {c.name: c.data for c in ON_MESSAGE}.get(case) or {
        "unreachable": UNREACHABLE,
        "wild": wild_pointers(WILD_POINTERS),
    }[case]
    server = await start(
        make_server, tmp_path, {"bad": data}, quarantine_backoff=60.0, **QUARANTINE
    )
    async with Traffic(server) as traffic:
        await asyncio.gather(traffic.trigger(bytes([0]), times=3), traffic.roundtrip(50))
        entry = await quarantined(traffic, "bad")
        await traffic.roundtrip()
        await traffic.healthz({"bad": "quarantined"})
        assert await traffic.entries("bad") == [entry]  # listed once, as quarantined
    assert error in entry["last_error"]
    assert entry["counters"]["traps"] == 3
    assert entry["backoff_s"] == 60.0
    assert entry["retries"] == 0
    assert entry["retry_at"] >= entry["quarantined_at"] + 59
    assert "bad" not in server.host.modules
    assert server.bus.publish(TOPIC, b"x") == 0  # unsubscribed
    history = [r.outcome for r in server.host.histories["bad"].records]
    assert history == [Outcome.LOADED, Outcome.QUARANTINED]


async def test_quarantine_retries_a_fresh_instance_and_doubles_the_backoff_when_it_recurs(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await start(
        make_server, tmp_path, {"bad": UNREACHABLE}, quarantine_backoff=0.3, **QUARANTINE
    )
    async with Traffic(server) as traffic:
        await traffic.trigger(times=3)
        first = await quarantined(traffic, "bad")
        assert (first["backoff_s"], first["retries"]) == (0.3, 0)

        async def back_live() -> bool:
            return any(m["state"] == "live" for m in await traffic.entries("bad"))

        begun = time.monotonic()
        await asyncio.gather(eventually(back_live, "bad back in service"), traffic.roundtrip(50))
        assert time.monotonic() - begun < 0.3 + BOUND
        fresh = await traffic.entry("bad")
        assert fresh["counters"]["traps"] == 0  # a fresh instance, not the old one
        assert fresh["subscriptions"] == [TOPIC]
        assert server.bus.publish("unrelated", b"x") == 0

        await traffic.trigger(times=3)

        async def again() -> bool:
            found = [m for m in await traffic.entries("bad") if m["state"] == "quarantined"]
            return bool(found) and found[0]["quarantined_at"] > first["quarantined_at"]

        await eventually(again, "bad quarantined a second time")
        second = await traffic.entry("bad", "quarantined")
        await traffic.roundtrip()
    assert second["backoff_s"] == 0.6  # doubled: it recurred soon after the retry
    assert second["quarantined_at"] > first["quarantined_at"]
    triggers = [r.trigger for r in server.host.histories["bad"].records]
    assert triggers == ["startup", "quarantine", "retry", "quarantine"]


async def test_a_module_back_from_quarantine_is_listed_once_as_live(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await start(
        make_server, tmp_path, {"bad": UNREACHABLE}, quarantine_backoff=0.1, **QUARANTINE
    )
    async with Traffic(server) as traffic:
        await traffic.trigger(times=3)
        await quarantined(traffic, "bad")

        async def back_live() -> bool:
            return any(m["state"] == "live" for m in await traffic.entries("bad"))

        await eventually(back_live, "bad back in service")
        assert [m["state"] for m in await traffic.entries("bad")] == ["live"]


async def test_requests_queued_when_a_module_is_quarantined_are_answered(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    loop = next(c for c in HTTP if c.name == "loop_handle")
    server = await start(
        make_server, tmp_path, {"bad": loop.data}, quarantine_backoff=60.0, **QUARANTINE
    )
    module = server.host.modules["bad"]  # what GET /m/bad calls (called directly here, since
    # a request left hanging would hold the server's shutdown for a minute)

    async def request() -> str:
        try:
            await asyncio.wait_for(module.http(b"GET\n/m/bad\n", 1024), BOUND)
        except TimeoutError:
            return "no answer"
        except TinywasmError as exc:
            return type(exc).__name__
        return "answered"

    async with Traffic(server) as traffic:
        # 3 interrupted requests quarantine it while the other 5 wait in its mailbox
        results, _ = await asyncio.gather(
            asyncio.gather(*(request() for _ in range(8))), traffic.roundtrip(50)
        )
        await quarantined(traffic, "bad")
    assert "no answer" not in results, results
    # Each was interrupted (504) or, once quarantined, refused (503); none was left waiting.
    assert set(results) == {"GuestTrap", "ModuleClosedError"}, results
    # Once out of service, its route says so and when to come back.
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/m/bad") as resp:
        assert resp.status == 503
        assert 50 <= int(resp.headers["Retry-After"]) <= 60
        assert "module 'bad' is quarantined after repeated traps" in await resp.text()


WINDOW = 0.3  # seconds: the quarantine window in the test below


async def test_traps_spread_wider_than_the_window_do_not_quarantine(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await start(
        make_server,
        tmp_path,
        {"bad": UNREACHABLE},
        quarantine_traps=3,
        quarantine_window=WINDOW,
        quarantine_backoff=60.0,
    )
    async with Traffic(server) as traffic:
        handled_at: list[float] = []  # each trap happened before the time noted here
        for n in range(1, 5):
            if n >= 3:  # 3 traps must span more than the window: send once the one 2 back left it
                await eventually(
                    lambda: time.monotonic() - handled_at[-2] > WINDOW,
                    f"trap {n - 2} to be more than {WINDOW} s old",
                )
            await traffic.trigger()
            await traffic.handled("bad", n)
            handled_at.append(time.monotonic())
        entry = await traffic.entry("bad")
        await traffic.roundtrip()
    assert entry["counters"]["traps"] == 4
    assert not server.host.quarantined


async def test_a_new_file_ends_the_quarantine_at_once(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # The retry is due a minute after the quarantine; the fixed file must be serving
    # well before then, so "at once" does not depend on how busy the machine is.
    server = await start(
        make_server,
        tmp_path,
        {"bad": UNREACHABLE},
        quarantine_backoff=60.0,
        watch=True,
        watch_debounce=0.02,
        **QUARANTINE,
    )
    async with Traffic(server) as traffic:
        await traffic.trigger(times=3)
        await quarantined(traffic, "bad")
        assert retry_pending(server, "bad")
        (tmp_path / "bad.wasm").write_bytes(FIXED)

        async def fixed() -> bool:
            found = await traffic.entries("bad")
            return [m["state"] for m in found] == ["live"] and found[0]["sha256"] == sha(FIXED)

        await asyncio.gather(
            eventually(fixed, "the fixed file to serve", timeout=30), traffic.roundtrip(50)
        )
        # The retry will never come: its timer is cancelled, not merely not yet due.
        assert not retry_pending(server, "bad")
        await traffic.roundtrip()
        await traffic.trigger()
        await traffic.handled("bad", 1)
        current = await traffic.entry("bad")
    assert current["sha256"] == sha(FIXED)
    assert current["counters"]["delivered"] == 1
    assert current["last_error"] is None
    assert "bad" not in server.host.quarantined
    triggers = [r.trigger for r in server.host.histories["bad"].records]
    assert triggers == ["startup", "quarantine", "watcher"]


async def test_deleting_a_quarantined_module_file_ends_its_retries(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = await start(
        make_server, tmp_path, {"bad": UNREACHABLE}, quarantine_backoff=60.0, **QUARANTINE
    )
    async with Traffic(server) as traffic:
        await traffic.trigger(times=3)
        await quarantined(traffic, "bad")
        assert retry_pending(server, "bad")
        (tmp_path / "bad.wasm").unlink()
        await asyncio.gather(server.reload("bad"), traffic.roundtrip(50))
        # The retry will never come: its timer is cancelled, not merely not yet due.
        assert not retry_pending(server, "bad")
        assert await traffic.entries("bad") == []
    assert "bad" not in server.host.quarantined
    assert "bad" not in server.host.modules


async def test_two_memories_are_not_reported_as_an_initial_memory_over_the_limit(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    case = next(c for c in REFUSED if c.name == "two_memories")
    server = await start(make_server, tmp_path, {case.name: case.data})
    assert "initial memory is over" not in server.host.refused[case.name]
