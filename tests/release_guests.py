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


# Reads config key "greeting" into its answer (at 6000, NUL-terminated) on each request,
# and counts messages on "nums" (its state, handed over in a swap). /m/<name> answers
# "<greeting>|<count>". validate_config refuses a config without "greeting".
CONFIGURED = """
  (global $count (mut i32) (i32.const 0))
  (func (export "init") (call $subscribe {t} (i32.const 0)))
  (func (export "on_message") (param i32 i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1))))
  (func (export "validate_config") (result i32)
    (if (result i32) (i32.lt_s (call $config_get {key} (i32.const 7000) (i32.const 0)) (i32.const 0))
      (then (i32.const 1)) (else (i32.const 0))))
  (func (export "handle") (param i32 i32) (result i32) (local $n i32) (local $p i32)
    (local.set $n (call $config_get {key} (i32.const 6000) (i32.const 200)))
    (local.set $p (i32.add (i32.const 6000) (local.get $n)))
    (i32.store8 (local.get $p) (i32.const 124))
    (i32.store8 (i32.add (local.get $p) (i32.const 1))
      (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
    (i32.store8 (i32.add (local.get $p) (i32.const 2)) (i32.const 0))
    (i32.const 6000))
  (func (export "save_state") (result i64)
    (i32.store (i32.const 5000) (global.get $count))
    (i64.const 21474836480004))
  (func (export "restore_state") (param $p i32) (param i32)
    (global.set $count (i32.load (local.get $p))))
"""
CONFIG_IMPORT = (
    '\n  (import "env" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))'
)


def configured() -> bytes:
    from tests.wat import IMPORTS

    wat = guest(CONFIGURED, {"t": "nums", "key": "greeting"}, imports=IMPORTS + CONFIG_IMPORT)
    return bytes(wasmtime.wat2wasm(wat))
