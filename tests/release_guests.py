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
