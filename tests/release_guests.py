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
