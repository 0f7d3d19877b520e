"""The call deadline: what it bounds (guest code) and what it forgives (host functions)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.wat import binary, guest
from tinywasm_wasi.exceptions import GuestTrap
from tinywasm_wasi.policy.limits import Limits
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.runtime.guest import HARD_LIMIT, Guest

TIMEOUT = 0.05  # seconds: the call deadline in these tests

BODY = """
  (func (export "spin") (loop $l (br $l)))
  (func (export "chatty") (loop $l (call $log {hi}) (br $l)))
  (func (export "logs") (param $n i32)
    (loop $l
      (call $log {hi})
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $n) (i32.const 0)))))
"""


class SlowLog:
    """Guest effects whose `log` takes `delay` seconds, like a host function under load."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lines = 0

    def publish(self, topic: bytes, payload: bytes) -> None: ...
    def broadcast(self, topic: bytes, payload: bytes) -> None: ...
    def subscribe(self, pattern: bytes) -> None: ...
    def unsubscribe(self, pattern: bytes) -> None: ...
    def refuse(self, call: str, reason: str) -> None: ...

    def log(self, line: str, *, stream: str) -> None:
        self.lines += 1
        if self.delay:
            time.sleep(self.delay)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    runtime = Runtime()
    yield runtime
    runtime.close()


def make(runtime: Runtime, effects: SlowLog) -> Guest:
    compiled = runtime.compile_module("d", binary(guest(BODY, {"hi": "hi"})))
    return Guest(
        "d",
        runtime.engine,
        compiled.module,
        compiled.interface,
        effects,
        Limits(call_timeout=TIMEOUT),
    )


def test_a_loop_in_guest_code_is_interrupted_at_the_deadline(runtime: Runtime) -> None:
    g = make(runtime, SlowLog())
    begun = time.monotonic()
    with pytest.raises(GuestTrap) as info:
        g.call("spin")
    assert info.value.code == "INTERRUPT"
    assert "ran past its 50 ms deadline" in str(info.value)
    assert time.monotonic() - begun < HARD_LIMIT * TIMEOUT  # the soft deadline, not the cap


def test_time_spent_in_host_functions_does_not_count_against_the_deadline(
    runtime: Runtime,
) -> None:
    effects = SlowLog(delay=0.01)
    g = make(runtime, effects)
    begun = time.monotonic()
    g.call("logs", 15)  # 150 ms in the host, three times the deadline: not interrupted
    assert time.monotonic() - begun >= 0.15
    assert effects.lines == 15


def test_a_call_that_keeps_calling_the_host_is_stopped_at_the_cap(runtime: Runtime) -> None:
    effects = SlowLog()
    g = make(runtime, effects)
    begun = time.monotonic()
    with pytest.raises(GuestTrap) as info:
        g.call("chatty")
    elapsed = time.monotonic() - begun
    assert info.value.code == "INTERRUPT"
    assert HARD_LIMIT * TIMEOUT <= elapsed < HARD_LIMIT * TIMEOUT + 2.0
    assert effects.lines > 0
