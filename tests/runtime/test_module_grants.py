"""Per-module topic grants from limits.toml, on real wasmtime instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Broadcasts, HostFactory
from tests.wat import guest, write

pytestmark = pytest.mark.timeout(60)

# init: subscribe to `sub_ok` and `sub_no`; publish to `pub_ok`, `pub_no` and `$sys.x`;
# broadcast to `cast_no` and `$sys.x`. on_topic_message rebroadcasts to `out`.
CHATTY = """
  (func (export "init")
    (call $subscribe {sub_ok} (i32.const 0))
    (call $subscribe {sub_no} (i32.const 0))
    (call $publish {pub_ok} {p})
    (call $publish {pub_no} {p})
    (call $publish {sys} {p})
    (call $ws_broadcast {cast_no} {p})
    (call $ws_broadcast {sys} {p}))
  (func (export "on_topic_message") (param $tp i32) (param $tn i32) (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
"""

STRINGS = {
    "sub_ok": "chat.*",
    "sub_no": ">",
    "pub_ok": "chat.room",
    "pub_no": "orders",
    "sys": "$sys.x",
    "cast_no": "elsewhere",
    "out": "out",
    "p": "hi",
}

# A second module that sees everything it may: records what reaches the bus.
TAP = """
  (func (export "init") (call $subscribe {all} (i32.const 0)))
  (func (export "on_topic_message") (param $tp i32) (param $tn i32) (param $p i32) (param $n i32)
    (call $ws_broadcast (local.get $tp) (local.get $tn) (local.get $p) (local.get $n)))
"""

ECHO_TO_SEEN = """
  (func (export "init") (call $subscribe {all} (i32.const 0)))
  (func (export "on_topic_message") (param $tp i32) (param $tn i32) (param $p i32) (param $n i32)
    (call $ws_broadcast {seen} (local.get $p) (local.get $n)))
"""


async def test_calls_outside_the_grants_are_refused_logged_and_counted(
    tmp_path: Path,
    make_host: HostFactory,
    broadcasts: Broadcasts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write(tmp_path, "chatty", guest(CHATTY, STRINGS))
    write(tmp_path, "tap", guest(TAP, {"all": ">"}))
    (tmp_path / "limits.toml").write_text(
        '[chatty]\npublish = ["chat.>"]\nsubscribe = ["chat.>"]\nbroadcast = ["out"]\n'
    )
    host = await make_host(tmp_path)
    await host.quiesce(5)
    chatty = host.modules["chatty"]
    # published chat.room reached the bus (tap rebroadcasts it, and chatty's chat.* sees it)
    assert await broadcasts.wait_for("chat.room", 1) == [b"hi"]
    assert await broadcasts.wait_for("out", 1) == [b"hi"]
    topics = {topic for topic, _ in broadcasts.items}
    assert topics == {"chat.room", "out"}  # not orders, $sys.x or elsewhere
    assert chatty.subscriptions == ["chat.*"]
    # refused: subscribe >, publish orders, publish $sys.x, broadcast elsewhere, broadcast $sys.x
    assert chatty.counters.refused == 5
    assert chatty.counters.published == 1
    snapshot = chatty.snapshot()
    assert snapshot["grants"] == {
        "publish": ["chat.>"],
        "subscribe": ["chat.>"],
        "broadcast": ["out"],
    }
    assert host.modules["tap"].snapshot()["grants"] == {
        "publish": [">"],
        "subscribe": [">"],
        "broadcast": [">"],
    }
    text = caplog.text
    assert "module 'chatty': subscribe refused: '>' is outside the subscribe grant (chat.>)" in text
    assert "(the module's subscribe key in limits.toml)" in text  # warnings: one a second


async def test_system_topics_are_read_only_for_modules_and_the_server_writes_them(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts
) -> None:
    write(tmp_path, "chatty", guest(CHATTY, STRINGS))  # default grants: everything
    write(tmp_path, "tap", guest(ECHO_TO_SEEN, {"all": "$sys.>", "seen": "seen"}))
    host = await make_host(tmp_path)
    await host.quiesce(5)
    assert host.modules["chatty"].counters.refused == 2  # publish and broadcast to $sys.x
    host.bus.publish("$sys.status", b"from the server")
    assert await broadcasts.wait_for("seen", 1) == [b"from the server"]
    assert host.modules["tap"].counters.refused == 0
    assert "$sys.x" not in {topic for topic, _ in broadcasts.items}
