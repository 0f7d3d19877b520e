"""The exactly-once hot swap, driven through ModuleHost.swap on real modules."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest
import wasmtime

from tests.conftest import Broadcasts, HostFactory
from tests.support import eventually
from tests.wat import guest
from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.policy.history import Outcome

pytestmark = pytest.mark.timeout(120)

RELAY = """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
  (func (export "version") (result i32) (i32.const VERSION))
"""


def relay(version: int, body: str = RELAY) -> bytes:
    text = guest(body.replace("VERSION", str(version)), {"t": "nums", "out": "out"})
    return bytes(wasmtime.wat2wasm(text))


def numbers(payloads: list[bytes]) -> list[int]:
    return [int(p) for p in payloads]


async def test_fifty_swaps_under_a_steady_stream_lose_and_duplicate_nothing(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    (tmp_path / "relay.wasm").write_bytes(relay(0))
    host = await make_host(tmp_path)
    host.probation = 0.01
    total = 20_000
    stop = threading.Event()

    def publish() -> None:  # ~thousands per second, bounded in count and time
        deadline = time.monotonic() + 60
        for i in range(total):
            host.bus.publish("nums", str(i).encode())
            if i % 50 == 0:
                time.sleep(0.005)
            if stop.is_set() or time.monotonic() > deadline:
                return

    publisher = threading.Thread(target=publish)
    publisher.start()
    records = []
    try:
        for n in range(1, 51):
            data = relay(n)
            records.append(await host.swap("relay", "api", lambda data=data: data))
    finally:
        await asyncio.to_thread(publisher.join, 60)
        stop.set()
    got = numbers(await broadcasts.wait_for("out", total, timeout=60))
    assert got == list(range(total))
    assert [r.outcome for r in records if r] == [Outcome.SWAPPED] * 50
    assert sum(r.held for r in records if r) > 0  # the stream really ran across cut-overs


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (b"garbage", "not a WebAssembly binary"),
        (None, "does not export on_message or on_topic_message"),
        ("trap", "unreachable"),
    ],
)
async def test_a_broken_build_is_refused_and_the_old_version_keeps_serving(
    tmp_path: Path,
    make_host: HostFactory,
    broadcasts: Broadcasts,
    broken: bytes | str | None,
    reason: str,
) -> None:
    (tmp_path / "relay.wasm").write_bytes(relay(0))
    host = await make_host(tmp_path)
    if broken is None:  # subscribes, but has no handler
        bad = bytes(
            wasmtime.wat2wasm(
                guest('(func (export "init") (call $subscribe {t} (i32.const 0)))', {"t": "nums"})
            )
        )
    elif broken == "trap":
        bad = relay(1, RELAY.replace("(call $subscribe {t} (i32.const 0)))", "unreachable)"))
    else:
        assert isinstance(broken, bytes)
        bad = broken
    record = await host.swap("relay", "watcher", lambda: bad)
    assert record is not None
    assert record.outcome is Outcome.REFUSED
    assert reason.lower() in (record.error or "").lower()
    host.bus.publish("nums", b"1")
    assert numbers(await broadcasts.wait_for("out", 1)) == [1]
    good = await host.swap("relay", "watcher", lambda: relay(2))
    assert good is not None
    assert good.outcome is Outcome.SWAPPED
    history = [r.outcome for r in host.histories["relay"].records]
    assert history == [Outcome.LOADED, Outcome.REFUSED, Outcome.SWAPPED]


async def test_requests_during_a_swap_coalesce_into_exactly_one_follow_up(
    tmp_path: Path, make_host: HostFactory
) -> None:
    slow_drain = (
        RELAY
        + """
      (global $left (mut i32) (i32.const 4))
      (func (export "drain") (result i32)
        (if (result i32) (i32.eqz (global.get $left)) (then (i32.const 0))
          (else (global.set $left (i32.sub (global.get $left) (i32.const 1))) (i32.const 25))))
    """
    )
    (tmp_path / "relay.wasm").write_bytes(relay(0, slow_drain))
    host = await make_host(tmp_path)
    old = host.modules["relay"]
    first = asyncio.create_task(host.swap("relay", "api", lambda: relay(1, slow_drain)))
    # Past the cut-over, the first swap drains the old version for 4 x 25 ms: the
    # requests below (which never yield to the loop) all come while it runs.
    await eventually(lambda: host.modules["relay"] is not old, "the first swap's cut-over")
    assert not first.done()
    later = [
        await host.swap("relay", "watcher", lambda v=v: relay(v, slow_drain)) for v in range(2, 8)
    ]
    assert later == [None] * 6  # coalesced
    await first
    outcomes = [(r.trigger, r.outcome) for r in host.histories["relay"].records]
    assert outcomes == [
        ("startup", Outcome.LOADED),
        ("api", Outcome.SWAPPED),
        ("watcher", Outcome.SWAPPED),
    ]
    version = host.modules["relay"]
    assert await version.call(lambda: version._guest.call("version")) == 7


async def test_a_drain_that_never_ends_times_out_with_a_warning_and_the_swap_goes_on(
    tmp_path: Path,
    make_host: HostFactory,
    broadcasts: Broadcasts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = RELAY + '(func (export "drain") (result i32) (i32.const 10))'
    (tmp_path / "relay.wasm").write_bytes(relay(0, never))
    host = await make_host(tmp_path, drain_timeout=0.2)
    record = await host.swap("relay", "api", lambda: relay(1))
    assert record is not None
    assert record.outcome is Outcome.TIMED_OUT_DRAINING
    assert any("drain timeout" in r.getMessage() for r in caplog.records)
    host.bus.publish("nums", b"5")
    assert numbers(await broadcasts.wait_for("out", 1)) == [5]


COUNTER = """
  (global $count (mut i32) (i32.const 0))
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (global.set $count (i32.add (global.get $count) (i32.const STEP)))
    (i32.store (i32.const 900) (global.get $count))
    (call $ws_broadcast {out} (i32.const 900) (i32.const 4)))
  (func (export "save_state") (result i64)
    (i32.store (i32.const 904) (global.get $count))
    (i64.or (i64.shl (i64.const 904) (i64.const 32)) (i64.const 4)))
  (func (export "restore_state") (param $p i32) (param $n i32)
    RESTORE)
"""


def counter(step: int, restore: str = "(global.set $count (i32.load (local.get $p)))") -> bytes:
    body = COUNTER.replace("STEP", str(step)).replace("RESTORE", restore)
    return bytes(wasmtime.wat2wasm(guest(body, {"t": "nums", "out": "out"})))


async def test_state_handoff_keeps_the_count_across_a_swap(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    (tmp_path / "counter.wasm").write_bytes(counter(1))
    host = await make_host(tmp_path)
    for _ in range(3):
        host.bus.publish("nums", b"x")
    await broadcasts.wait_for("out", 3)
    record = await host.swap("counter", "api", lambda: counter(10))
    assert record is not None
    assert record.outcome is Outcome.SWAPPED
    host.bus.publish("nums", b"x")
    counts = [int.from_bytes(p, "little") for p in await broadcasts.wait_for("out", 4)]
    assert counts == [1, 2, 3, 13]


REJECTING = """
  (global $count (mut i32) (i32.const 0))
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (global.set $count (i32.add (global.get $count) (i32.const 100)))
    (i32.store (i32.const 900) (global.get $count))
    (call $ws_broadcast {out} (i32.const 900) (i32.const 4)))
  (func (export "restore_state") (param $p i32) (param $n i32) (result i32)
    (i32.ne (i32.load (local.get $p)) (i32.const 7)))
"""


@pytest.mark.parametrize(
    ("new", "says"),
    [
        (
            COUNTER.replace(
                '(func (export "restore_state") (param $p i32) (param $n i32)\n    RESTORE)', ""
            ).replace("STEP", "100"),
            "the new version does not export restore_state; 4 bytes of state dropped",
        ),
        (REJECTING, "restore_state rejected the state (version tag 3); 4 bytes of state dropped"),
    ],
    ids=["no-restore_state", "rejected"],
)
async def test_dropping_the_state_is_a_warning_in_the_log_and_the_history(
    tmp_path: Path,
    make_host: HostFactory,
    broadcasts: Broadcasts,
    caplog: pytest.LogCaptureFixture,
    new: str,
    says: str,
) -> None:
    (tmp_path / "counter.wasm").write_bytes(counter(1))
    host = await make_host(tmp_path)
    for _ in range(3):
        host.bus.publish("nums", b"x")
    await broadcasts.wait_for("out", 3)
    wasm = bytes(wasmtime.wat2wasm(guest(new, {"t": "nums", "out": "out"})))
    record = await host.swap("counter", "api", lambda: wasm)
    assert record is not None
    assert record.outcome is Outcome.SWAPPED and record.error is None
    assert record.warning == says
    assert record.to_json()["warning"] == says
    assert any(
        r.levelname == "WARNING" and "swap counter" in r.getMessage() and says in r.getMessage()
        for r in caplog.records
    )
    host.bus.publish("nums", b"x")
    counts = [int.from_bytes(p, "little") for p in await broadcasts.wait_for("out", 4)]
    assert counts == [1, 2, 3, 100]  # the new version started afresh


async def test_a_trap_in_restore_state_rolls_back_to_the_old_version(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    (tmp_path / "counter.wasm").write_bytes(counter(1))
    host = await make_host(tmp_path)
    host.bus.publish("nums", b"x")
    await broadcasts.wait_for("out", 1)
    record = await host.swap("counter", "api", lambda: counter(10, "unreachable"))
    assert record is not None
    assert record.outcome is Outcome.ROLLED_BACK
    assert "restore_state" in (record.error or "")
    host.bus.publish("nums", b"x")
    counts = [int.from_bytes(p, "little") for p in await broadcasts.wait_for("out", 2)]
    assert counts == [1, 2]  # the old version, with its count, is serving again


async def test_a_trap_in_the_first_deliveries_rolls_back_and_loses_nothing(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    (tmp_path / "relay.wasm").write_bytes(relay(0))
    host = await make_host(tmp_path)
    host.probation = 2.0
    crashing = relay(
        1, RELAY.replace("(call $ws_broadcast {out} (local.get $p) (local.get $n))", "unreachable")
    )
    swap = asyncio.create_task(host.swap("relay", "api", lambda: crashing))
    # A steady stream (200 messages at least) until the swap has decided, however long
    # staging takes, so the new version surely meets messages while on probation.
    sent = 0
    while not swap.done() or sent < 200:
        host.bus.publish("nums", str(sent).encode())
        sent += 1
        await asyncio.sleep(0.001)
    record = await swap
    assert record is not None
    assert record.outcome is Outcome.ROLLED_BACK
    assert "unreachable" in (record.error or "").lower()
    assert numbers(await broadcasts.wait_for("out", sent)) == list(range(sent))
    assert host.modules["relay"].state.value == "live"


async def test_same_bytes_do_not_swap(tmp_path: Path, make_host: HostFactory) -> None:
    (tmp_path / "relay.wasm").write_bytes(relay(0))
    host = await make_host(tmp_path)
    before = host.modules["relay"]
    assert await host.swap("relay", "watcher") is None
    assert host.modules["relay"] is before
    assert len(host.histories["relay"].records) == 1


async def test_delete_unloads_and_recreate_loads(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    path = tmp_path / "relay.wasm"
    path.write_bytes(relay(0))
    host = await make_host(tmp_path)
    path.unlink()
    record = await host.swap("relay", "watcher")
    assert record is not None
    assert record.outcome is Outcome.UNLOADED
    assert "relay" not in host.modules
    assert host.bus.publish("nums", b"1") == 0
    path.write_bytes(relay(1))
    loaded = await host.swap("relay", "watcher")
    assert loaded is not None
    assert loaded.outcome is Outcome.LOADED
    host.bus.publish("nums", b"2")
    assert numbers(await broadcasts.wait_for("out", 1)) == [2]


async def test_rollback_returns_to_the_previous_good_version(
    tmp_path: Path, make_host: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tinywasm.host")
    (tmp_path / "relay.wasm").write_bytes(relay(0))
    host = await make_host(tmp_path)
    first_sha = host.modules["relay"].compiled.sha256
    await host.swap("relay", "api", lambda: relay(1))
    record = await host.rollback("relay")
    assert record is not None
    assert record.outcome is Outcome.SWAPPED
    assert host.modules["relay"].compiled.sha256 == first_sha
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("swap relay")]
    # The line when the old version serves again, then the end of its probation.
    assert lines[-2].startswith("swap relay ") and "(rollback): serving in" in lines[-2]
    assert lines[-2].split(" -> ")[1].startswith(first_sha[:8])
    assert lines[-1].startswith("swap relay: probation passed") and "(rollback," in lines[-1]


async def test_rollback_steps_back_through_good_versions_then_says_there_is_none(
    tmp_path: Path, make_host: HostFactory
) -> None:
    (tmp_path / "relay.wasm").write_bytes(relay(0))
    host = await make_host(tmp_path)
    host.probation = 0.01
    shas = [host.modules["relay"].compiled.sha256]
    for n in (1, 2):
        await host.swap("relay", "api", lambda n=n: relay(n))
        shas.append(host.modules["relay"].compiled.sha256)
    await host.rollback("relay")
    assert host.modules["relay"].compiled.sha256 == shas[1]
    await host.rollback("relay")
    assert host.modules["relay"].compiled.sha256 == shas[0]
    with pytest.raises(ModuleLoadError, match="no previous good version"):
        await host.rollback("relay")


NAMED_TRAP = """
  (func $parse_number (param $p i32) (result i32) (i32.load (i32.const 0x7ffffff0)))
  (func $handle_cmd (param $p i32) (result i32) (call $parse_number (local.get $p)))
  (func $init (export "init") (call $subscribe {t} (i32.const 0)))
  (func $on_message (export "on_message") (param $p i32) (param $n i32)
    (drop (call $handle_cmd (local.get $p))))
"""


async def test_a_trap_is_logged_and_kept_with_its_backtrace(
    tmp_path: Path, make_host: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    wasm = bytes(wasmtime.wat2wasm(guest(NAMED_TRAP, {"t": "nums", "out": "out"})))
    (tmp_path / "parser.wasm").write_bytes(wasm)
    host = await make_host(tmp_path)
    host.bus.publish("nums", b"x")
    module = host.modules["parser"]
    await eventually(lambda: module.counters.traps == 1, "the trap")
    where = "(at parse_number ← handle_cmd ← on_message)"
    assert module.snapshot()["last_error"].endswith(where)
    assert "[MEMORY_OUT_OF_BOUNDS]" in module.snapshot()["last_error"]
    assert any(where in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


async def test_a_swap_asked_for_while_the_last_one_closes_its_old_version_waits_for_it(
    tmp_path: Path, make_host: HostFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The swap machine rests once it has handed out the last actions (close the old
    # version, record); a request arriving while those still run must not start a
    # second operation on the same name beside them.
    (tmp_path / "relay.wasm").write_bytes(relay(0))
    host = await make_host(tmp_path)
    host.probation = 0.0
    old = host.view.modules["relay"]
    events: list[str] = []
    closing, release = asyncio.Event(), asyncio.Event()
    real_close = old.close

    async def held_close() -> None:  # the real close, held open until the test lets go
        events.append("close-started")
        closing.set()
        await release.wait()
        await real_close()
        events.append("close-ended")

    monkeypatch.setattr(old, "close", held_close)

    def second_bytes() -> bytes:
        events.append("second-read")
        return relay(2)

    first = asyncio.create_task(host.swap("relay", "api", lambda: relay(1)))
    await closing.wait()
    second = asyncio.create_task(host.swap("relay", "api", second_bytes))
    # Give a wrongly started second operation the chance to read; it must not.
    with pytest.raises(AssertionError):
        await eventually(lambda: "second-read" in events, timeout=0.5)
    release.set()
    records = await asyncio.gather(first, second)
    assert events == ["close-started", "close-ended", "second-read"]
    assert [r.outcome for r in records if r] == [Outcome.SWAPPED, Outcome.SWAPPED]
    version = host.modules["relay"]
    assert await version.call(lambda: version._guest.call("version")) == 2
