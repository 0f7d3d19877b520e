"""Stopping a server whose modules have a long backlog: bounded by --drain-timeout, no error."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType

from tests.conftest import ServerFactory
from tests.wat import guest, write

DRAIN_TIMEOUT = 1.0
# Generous: the bug this guards against made stop take 7 s (1 module) to 10 s (24 modules).
STOP_BOUND = DRAIN_TIMEOUT + 2.5

# Each delivery spins for a few milliseconds, so 1000 queued messages are seconds of work.
SLOW = guest(
    """
  (func (export "init") (call $subscribe {work} (i32.const 0)))
  (func (export "on_message") (param i32 i32) (local $i i32)
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 20000000)))))
""",
    {"work": "work"},
)


@pytest.mark.parametrize("modules", [1, 50])
async def test_stop_with_a_backlog_takes_the_drain_timeout_and_raises_nothing(
    modules: int,
    tmp_path: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for i in range(modules):
        write(tmp_path, f"slow{i}", SLOW)
    server = await make_server(
        modules_dir=tmp_path, drain_timeout=DRAIN_TIMEOUT, call_timeout=10.0, watch=False
    )
    assert len(server.host.modules) == modules
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{server.url}/ws?topic=news")
        for i in range(1000):
            server.bus.publish("work", str(i).encode())
        slow = server.host.modules["slow0"]
        assert slow.queued > 100, "the backlog is there before stop"

        caplog.set_level(logging.WARNING, logger="tinywasm")
        begun = time.monotonic()
        await server.stop()
        took = time.monotonic() - begun

        message = await ws.receive(timeout=5)
        assert message.type is WSMsgType.CLOSE
        assert message.data == WSCloseCode.GOING_AWAY
    assert took < STOP_BOUND, f"stop took {took:.1f} s with --drain-timeout {DRAIN_TIMEOUT}"
    assert not [r for r in caplog.records if r.exc_info], "stop logged a traceback"
    timed_out = [r.getMessage() for r in caplog.records if "drain timed out" in r.getMessage()]
    assert len(timed_out) == modules  # each module says what it discarded
    assert all("queued message(s) discarded" in line for line in timed_out)
    await server.stop()  # a second stop is a no-op
