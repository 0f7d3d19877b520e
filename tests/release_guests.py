"""WAT guests for the release tests: versioned relays that also answer HTTP."""

from __future__ import annotations

import hashlib

import wasmtime

from tests.wat import guest

# Subscribes to "nums" and broadcasts each payload on "out"; /m/<name> answers "vN".
VERSIONED = """
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
  (func (export "handle") (param i32 i32) (result i32) {answer} drop)
  EXTRA
"""


def versioned(version: int, extra: str = "") -> bytes:
    """Version `version` of the relay; `extra` adds WAT functions (e.g. health_check)."""
    wat = guest(
        VERSIONED.replace("EXTRA", extra),
        {"t": "nums", "out": "out", "answer": f"v{version}"},
    )
    return bytes(wasmtime.wat2wasm(wat))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# State handoff: the old version's save_state hands over "s"; a version with
# RESTORE_TRAPS traps in restore_state, so its swap is rolled back after cut-over.
SAVES_STATE = """
  (data (i32.const 3000) "s")
  (func (export "save_state") (result i64) (i64.const 12884901888001))
  (func (export "restore_state") (param i32 i32))
"""
RESTORE_TRAPS = """
  (func (export "save_state") (result i64) (i64.const 0))
  (func (export "restore_state") (param i32 i32) unreachable)
"""


def health(result: str) -> str:
    """A `health_check` export whose body is `result` (WAT leaving an i32)."""
    return f'(func (export "health_check") (result i32) {result})'


HEALTHY = health("(i32.const 0)")
# Healthy until a message on "sick" sets its first byte as the health result.
TOGGLED = """
  (global $health (mut i32) (i32.const 0))
  (func (export "init") (call $subscribe {sick} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (global.set $health (i32.load8_u (local.get $p))))
  (func (export "health_check") (result i32) (global.get $health))
"""

META_AT = 5000


def metadata(raw: bytes) -> str:
    """A `get_metadata` export returning `raw` from a data segment."""
    escaped = "".join(f"\\{b:02x}" for b in raw)
    packed = META_AT << 32 | len(raw)
    return (
        f'(data (i32.const {META_AT}) "{escaped}")\n'
        f'(func (export "get_metadata") (result i64) (i64.const {packed}))'
    )


def toggled() -> bytes:
    return bytes(wasmtime.wat2wasm(guest(TOGGLED, {"sick": "sick"})))


# Answers "vN" but traps on every `every`-th request.
FLAKY = """
  (global $calls (mut i32) (i32.const 0))
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {out} (local.get $p) (local.get $n)))
  (func (export "handle") (param i32 i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.eqz (i32.rem_u (global.get $calls) (i32.const EVERY))) (then unreachable))
    {answer} drop)
"""


def flaky(version: int, every: int) -> bytes:
    wat = guest(
        FLAKY.replace("EVERY", str(every)), {"t": "nums", "out": "out", "answer": f"v{version}"}
    )
    return bytes(wasmtime.wat2wasm(wat))
