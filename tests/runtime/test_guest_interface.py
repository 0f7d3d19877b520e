"""The guest interface, version 1: every import and export, on real wasmtime instances."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from tests.conftest import Broadcasts, HostFactory
from tests.wat import IMPORTS, guest, write

pytestmark = pytest.mark.timeout(60)

# on_message that rebroadcasts the payload on ws topic "out"
ECHO = """
  (func (export "init") (call $subscribe {topic} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
"""


def echo(topic: str) -> str:
    return guest(ECHO, {"topic": topic, "out": "out"})


async def test_publish_from_init_reaches_a_module_loaded_with_it(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    # "a_sender" sorts before "b_receiver": its init publish is held until
    # every module loaded with it has its subscriptions live.
    write(
        tmp_path,
        "a_sender",
        guest(
            '(func (export "init") (call $publish {topic} {payload}))',
            {"topic": "events", "payload": "hello"},
        ),
    )
    write(tmp_path, "b_receiver", echo("events"))
    await make_host(tmp_path)
    assert await broadcasts.wait_for("out", 1) == [b"hello"]


async def test_on_topic_message_gets_topic_and_payload_through_a_wildcard(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    write(
        tmp_path,
        "tap",
        guest(
            """
      (func (export "init") (call $subscribe {pattern} (i32.const 0)))
      (func (export "on_topic_message") (param $tp i32) (param $tn i32) (param $p i32) (param $n i32)
        (call $ws_broadcast (local.get $tp) (local.get $tn) (local.get $p) (local.get $n)))
    """,
            {"pattern": "users.>"},
        ),
    )
    host = await make_host(tmp_path)
    host.bus.publish("users.created", b"ann")
    host.bus.publish("orders.created", b"no")
    host.bus.publish("users.a.b", b"bob")
    await host.quiesce(5)
    assert broadcasts.items == [("users.created", b"ann"), ("users.a.b", b"bob")]


async def test_alloc_is_accepted_and_one_block_is_kept_for_small_deliveries(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    # Every alloc and free is reported as a broadcast ("a<size>", "f"), in order.
    allocator = """
      (global $heap (mut i32) (i32.const 65536))
      (func $say (param $c i32) (param $n i32)
        (i32.store8 (i32.const 900) (local.get $c))
        (i32.store (i32.const 901) (local.get $n))
        (call $ws_broadcast {calls} (i32.const 900) (i32.const 5)))
      (func (export "alloc") (param $n i32) (result i32) (local $p i32)
        (call $say (i32.const 97) (local.get $n))
        (local.set $p (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n)))
        (local.get $p))
      (func (export "free") (param $p i32) (call $say (i32.const 102) (local.get $p)))
    """
    write(
        tmp_path,
        "m",
        guest(ECHO, {"topic": "t", "out": "out", "calls": "calls"}, allocator=allocator, pages=4),
    )
    host = await make_host(tmp_path)
    big = bytes(70 * 1024)  # over the 64 KiB the host keeps a block for
    for payload in (b"a", b"bb", bytes(300), big):
        host.bus.publish("t", payload)
    assert await broadcasts.wait_for("out", 4) == [b"a", b"bb", bytes(300), big]
    calls = [(c[:1], int.from_bytes(c[1:], "little")) for c in broadcasts.on("calls")]
    first = 65536
    assert calls == [
        (b"a", 256),  # one block, kept for "a" and "bb"
        (b"f", first),  # 300 bytes: the block is freed...
        (b"a", 512),  # ...and a larger one replaces it
        (b"a", len(big)),  # a large delivery gets a block of its own,
        (b"f", first + 256 + 512),  # freed right after the call
    ]


async def test_initialize_runs_once_before_init(
    tmp_path: Path, make_host: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tinywasm")
    write(
        tmp_path,
        "reactor",
        guest(
            """
      (global $n (mut i32) (i32.const 0))
      (func (export "_initialize")
        (global.set $n (i32.add (global.get $n) (i32.const 1)))
        (call $log {initialized}))
      (func (export "init")
        (if (i32.ne (global.get $n) (i32.const 1)) (then unreachable))
        (call $log {init}))
    """,
            {"initialized": "initialized", "init": "init ran"},
        ),
    )
    host = await make_host(tmp_path)
    assert "reactor" in host.modules
    lines = [r.getMessage() for r in caplog.records if r.name == "tinywasm.guest"]
    assert lines == ["[reactor] initialized", "[reactor] init ran"]


async def test_command_module_subscribes_from_start_and_proc_exit_0_is_success(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    imports = IMPORTS_WITH_EXIT
    write(
        tmp_path,
        "cmd",
        guest(
            """
      (func (export "_start")
        (call $subscribe {topic} (i32.const 0))
        (call $proc_exit (i32.const 0)))
      (func (export "on_message") (param $p i32) (param $n i32)
        (call $ws_broadcast {out} (local.get $p) (local.get $n)))
    """,
            {"topic": "jobs", "out": "out"},
            imports=imports,
        ),
    )
    host = await make_host(tmp_path)
    assert host.modules["cmd"].subscriptions == ["jobs"]
    host.bus.publish("jobs", b"run")
    assert await broadcasts.wait_for("out", 1) == [b"run"]


async def test_proc_exit_nonzero_from_start_refuses_the_module(
    tmp_path: Path, make_host: HostFactory
) -> None:
    write(
        tmp_path,
        "bad",
        guest(
            '(func (export "_start") (call $proc_exit (i32.const 3)))', imports=IMPORTS_WITH_EXIT
        ),
    )
    host = await make_host(tmp_path)
    assert "bad" not in host.modules
    assert "proc_exit(3)" in host.refused["bad"]


IMPORTS_WITH_EXIT = (
    '\n  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))' + IMPORTS
)


async def test_subscribe_and_unsubscribe_from_inside_a_handler(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    # On "control" it subscribes to "late"; on "late" it rebroadcasts and unsubscribes.
    write(
        tmp_path,
        "dyn",
        guest(
            """
      (func (export "init") (call $subscribe {control} (i32.const 0)))
      (func (export "on_topic_message") (param $tp i32) (param $tn i32) (param $p i32) (param $n i32)
        (if (i32.eq (local.get $tn) (i32.const 7))
          (then (call $subscribe {late} (i32.const 0)))
          (else
            (call $ws_broadcast {out} (local.get $p) (local.get $n))
            (call $unsubscribe {late}))))
    """,
            {"control": "control", "late": "late", "out": "out"},
        ),
    )
    host = await make_host(tmp_path)
    assert host.bus.publish("late", b"too early") == 0
    host.bus.publish("control", b"go")
    await host.quiesce(5)
    assert host.modules["dyn"].subscriptions == ["control", "late"]
    host.bus.publish("late", b"first")
    await host.quiesce(5)
    assert host.bus.publish("late", b"after unsubscribe") == 0
    await host.quiesce(5)
    assert broadcasts.on("out") == [b"first"]
    assert host.modules["dyn"].subscriptions == ["control"]


async def test_subscribing_twice_to_a_pattern_delivers_once(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    write(
        tmp_path,
        "twice",
        guest(
            """
      (func (export "init") (call $subscribe {t} (i32.const 0)) (call $subscribe {t} (i32.const 1)))
      (func (export "on_message") (param $p i32) (param $n i32)
        (call $ws_broadcast {out} (local.get $p) (local.get $n)))
    """,
            {"t": "t", "out": "out"},
        ),
    )
    host = await make_host(tmp_path)
    assert host.bus.publish("t", b"x") == 1
    await host.quiesce(5)
    assert broadcasts.on("out") == [b"x"]


async def test_publish_inside_a_handler_is_queued_not_nested(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    # On each message n > 0 it logs "begin", publishes n-1 to itself, logs "end".
    # Nested delivery would give begin,begin,...; queued gives begin,end,begin,end.
    write(
        tmp_path,
        "loop",
        guest(
            """
      (func (export "init") (call $subscribe {t} (i32.const 0)))
      (func (export "on_message") (param $p i32) (param $n i32)
        (call $ws_broadcast {trace} {begin})
        (if (i32.gt_u (i32.load8_u (local.get $p)) (i32.const 48))
          (then
            (i32.store8 (i32.const 900) (i32.sub (i32.load8_u (local.get $p)) (i32.const 1)))
            (call $publish {t} (i32.const 900) (i32.const 1))))
        (call $ws_broadcast {trace} {end}))
    """,
            {"t": "countdown", "trace": "trace", "begin": "begin", "end": "end"},
        ),
    )
    host = await make_host(tmp_path)
    host.bus.publish("countdown", b"3")
    trace = await broadcasts.wait_for("trace", 8)
    assert trace == [b"begin", b"end"] * 4


async def test_log_and_wasi_stdout_stderr_are_tagged_with_the_module(
    tmp_path: Path, make_host: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tinywasm")
    imports = (
        '\n  (import "wasi_snapshot_preview1" "fd_write" '
        "(func $fd_write (param i32 i32 i32 i32) (result i32)))"
    )
    # iovec at 512: {ptr, len} of "out line\nerr" etc.
    write(
        tmp_path,
        "talker",
        guest(
            """
      (func $write (param $fd i32) (param $p i32) (param $n i32)
        (i32.store (i32.const 512) (local.get $p))
        (i32.store (i32.const 516) (local.get $n))
        (drop (call $fd_write (local.get $fd) (i32.const 512) (i32.const 1) (i32.const 520))))
      (func (export "init")
        (call $log {hello})
        (call $write (i32.const 1) {out})
        (call $write (i32.const 1) {rest})
        (call $write (i32.const 2) {err}))
    """,
            {"hello": "hello log", "out": "line one\nline ", "rest": "two\n", "err": "oops\n"},
            imports=imports + IMPORTS,
        ),
    )
    await make_host(tmp_path)
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "tinywasm.guest"]
    assert records == [
        ("INFO", "[talker] hello log"),
        ("INFO", "[talker] line one"),
        ("INFO", "[talker] line two"),
        ("WARNING", "[talker] oops"),
    ]


async def test_wasi_is_empty_no_environment_no_arguments(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    imports = (
        '\n  (import "wasi_snapshot_preview1" "environ_sizes_get" '
        "(func $env_sizes (param i32 i32) (result i32)))"
        '\n  (import "wasi_snapshot_preview1" "args_sizes_get" '
        "(func $arg_sizes (param i32 i32) (result i32)))"
    )
    write(
        tmp_path,
        "probe",
        guest(
            """
      (func (export "init")
        (drop (call $env_sizes (i32.const 600) (i32.const 604)))
        (drop (call $arg_sizes (i32.const 608) (i32.const 612)))
        (i32.store8 (i32.const 700) (i32.add (i32.const 48) (i32.load (i32.const 600))))
        (i32.store8 (i32.const 701) (i32.add (i32.const 48) (i32.load (i32.const 608))))
        (call $ws_broadcast {out} (i32.const 700) (i32.const 2)))
    """,
            {"out": "out"},
            imports=imports + IMPORTS,
        ),
    )
    await make_host(tmp_path)
    assert await broadcasts.wait_for("out", 1) == [b"00"]


async def test_unknown_import_is_refused_naming_it_and_others_still_load(
    tmp_path: Path, make_host: HostFactory
) -> None:
    write(
        tmp_path,
        "odd",
        '(module (import "env" "launch_missiles" (func)) (memory (export "memory") 1))',
    )
    write(tmp_path, "fine", echo("t"))
    host = await make_host(tmp_path)
    assert list(host.modules) == ["fine"]
    assert "env.launch_missiles" in host.refused["odd"]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("garbage", b"this is not wasm", "not a WebAssembly binary"),
        ("empty", b"", "empty"),
        ("truncated", b"\0asm\x01\0\0\0\x01\x05", "invalid WebAssembly"),
        ("nomemory", None, "does not export its memory"),
    ],
)
async def test_broken_files_are_refused_with_a_reason(
    tmp_path: Path, make_host: HostFactory, name: str, data: bytes | None, reason: str
) -> None:
    if data is None:
        write(tmp_path, name, '(module (func (export "init")))')
    else:
        (tmp_path / f"{name}.wasm").write_bytes(data)
    host = await make_host(tmp_path)
    assert reason in host.refused[name]
    assert not host.modules


async def test_trap_in_init_refuses_only_that_module(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    write(
        tmp_path,
        "a_bad",
        guest(
            '(func (export "init") (call $publish {t} {p}) unreachable)', {"t": "t", "p": "lost"}
        ),
    )
    write(tmp_path, "b_good", echo("t"))
    host = await make_host(tmp_path)
    assert "unreachable" in host.refused["a_bad"].lower()
    # the failed module's held publish was discarded with it
    host.bus.publish("t", b"live")
    assert await broadcasts.wait_for("out", 1) == [b"live"]
    await host.quiesce(2)
    assert broadcasts.on("out") == [b"live"]


@pytest.mark.parametrize(
    "call",
    [
        "(call $publish (i32.const -16) (i32.const 4) (i32.const 0) (i32.const 1))",
        "(call $publish (i32.const 1024) (i32.const 1) (i32.const 131000) (i32.const 5000))",
        "(call $ws_broadcast (i32.const 1024) (i32.const 1) (i32.const 0) (i32.const -1))",
        "(call $subscribe (i32.const 200000) (i32.const 1) (i32.const 0))",
        "(call $unsubscribe (i32.const 1024) (i32.const -2))",
        "(call $log (i32.const -1) (i32.const 2))",
    ],
)
async def test_bad_pointer_traps_that_call_only(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts, call: str
) -> None:
    write(
        tmp_path,
        "wild",
        guest(
            """
      (func (export "init") (call $subscribe {t} (i32.const 0)))
      (func (export "on_message") (param $p i32) (param $n i32)
        (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 98)) (then CALL))
        (call $ws_broadcast {out} (local.get $p) (local.get $n)))
    """.replace("CALL", call),
            {"t": "t", "out": "out"},
        ),
    )
    host = await make_host(tmp_path)
    for payload in (b"ok1", b"bad", b"ok2"):
        host.bus.publish("t", payload)
    assert await broadcasts.wait_for("out", 2) == [b"ok1", b"ok2"]
    module = host.modules["wild"]
    assert module.counters.failed == 1
    assert module.last_error is not None
    assert "outside guest memory" in module.last_error


async def test_invalid_topics_from_a_guest_are_logged_and_ignored(
    tmp_path: Path,
    make_host: HostFactory,
    broadcasts: Broadcasts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write(
        tmp_path,
        "sloppy",
        guest(
            """
      (func (export "init")
        (call $publish {empty_token} {p})
        (call $subscribe {bad_wild} (i32.const 0))
        (call $ws_broadcast (i32.const 1024) (i32.const 0) {p})
        (call $publish {good} {p}))
    """,
            {"empty_token": "a..b", "bad_wild": "ch*t", "p": "x", "good": "good"},
        ),
    )
    write(tmp_path, "watcher", guest(ECHO, {"topic": "good", "out": "out"}))
    host = await make_host(tmp_path)
    assert await broadcasts.wait_for("out", 1) == [b"x"]
    module = host.modules["sloppy"]
    assert module.counters.invalid_topics == 3
    assert module.subscriptions == []
    assert any(
        "sloppy" in r.getMessage() and "invalid topic" in r.getMessage() for r in caplog.records
    )


async def test_each_subscriber_sees_publish_order_under_concurrent_publishers(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    write(tmp_path, "a", echo("seq"))
    host = await make_host(tmp_path)
    publishers, count = 4, 500

    def run(who: int) -> None:
        for i in range(count):
            host.bus.publish("seq", f"{who}:{i}".encode())

    threads = [threading.Thread(target=run, args=(w,)) for w in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    got = await broadcasts.wait_for("out", publishers * count, timeout=30)
    for who in range(publishers):
        mine = [int(p.split(b":")[1]) for p in got if p.startswith(f"{who}:".encode())]
        assert mine == list(range(count))


async def test_two_modules_run_at_once_without_touching_each_other(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    # Each keeps a running byte sum in its own memory and broadcasts it per message.
    body = """
      (global $sum (mut i32) (i32.const 0))
      (func (export "init") (call $subscribe {t} (i32.const 0)))
      (func (export "on_message") (param $p i32) (param $n i32)
        (global.set $sum (i32.add (global.get $sum) (i32.load8_u (local.get $p))))
        (i32.store (i32.const 900) (global.get $sum))
        (call $ws_broadcast {out} (i32.const 900) (i32.const 4)))
    """
    write(tmp_path, "left", guest(body, {"t": "left", "out": "left"}))
    write(tmp_path, "right", guest(body, {"t": "right", "out": "right"}))
    host = await make_host(tmp_path)
    n = 300
    for _ in range(n):
        host.bus.publish("left", b"\x01")
        host.bus.publish("right", b"\x02")
    left = await broadcasts.wait_for("left", n)
    right = await broadcasts.wait_for("right", n)
    assert [int.from_bytes(x, "little") for x in left] == [i + 1 for i in range(n)]
    assert [int.from_bytes(x, "little") for x in right] == [2 * (i + 1) for i in range(n)]


async def test_a_full_mailbox_drops_counts_and_logs(
    tmp_path: Path, make_host: HostFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A slow handler (busy loop) and a mailbox of 5.
    write(
        tmp_path,
        "slow",
        guest(
            """
      (func (export "init") (call $subscribe {t} (i32.const 0)))
      (func (export "on_message") (param $p i32) (param $n i32) (local $i i32)
        (loop $spin
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $spin (i32.lt_u (local.get $i) (i32.const 3000000)))))
    """,
            {"t": "t"},
        ),
    )
    host = await make_host(tmp_path, mailbox_size=5)
    accepted = sum(host.bus.publish("t", b"x") for _ in range(50))
    module = host.modules["slow"]
    assert accepted < 50
    assert module.mailbox.dropped == 50 - accepted
    assert host.bus.stats().dropped == 50 - accepted
    assert any("mailbox full" in r.getMessage() for r in caplog.records)


async def test_drain_export_is_polled_until_it_returns_zero(
    tmp_path: Path, make_host: HostFactory
) -> None:
    write(
        tmp_path,
        "busy",
        guest("""
      (global $left (mut i32) (i32.const 3))
      (func (export "drain") (result i32)
        (if (result i32) (i32.eqz (global.get $left))
          (then (i32.const 0))
          (else (global.set $left (i32.sub (global.get $left) (i32.const 1))) (i32.const 5))))
      (func (export "left") (result i32) (global.get $left))
    """),
    )
    host = await make_host(tmp_path)
    module = host.modules["busy"]
    assert await module.drain(timeout=2.0) is True
    assert await module.call(lambda: module._guest.call("left")) == 0


async def test_drain_gives_up_at_the_timeout(tmp_path: Path, make_host: HostFactory) -> None:
    write(tmp_path, "never", guest('(func (export "drain") (result i32) (i32.const 20))'))
    host = await make_host(tmp_path)
    loop = asyncio.get_running_loop()
    begun = loop.time()
    assert await host.modules["never"].drain(timeout=0.2) is False
    assert loop.time() - begun < 2.0
