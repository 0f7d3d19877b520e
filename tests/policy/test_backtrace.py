"""Reading wasmtime's trap text into function names (policy/backtrace.py)."""

from __future__ import annotations

from tinywasm_wasi.policy.backtrace import MAX_FRAMES, describe, frames

WASMTIME = """error while executing at wasm backtrace:
    0:     0x44 - m!parse_number
    1:     0x4c - m!handle_cmd
    2:     0x53 - <unknown>!<wasm function 2>
note: using the `WASMTIME_BACKTRACE_DETAILS=1` environment variable may show more debugging information

Caused by:
    0: memory fault at wasm address 0x7ffffff0 in linear memory of size 0x10000
    1: wasm trap: out of bounds memory access
"""


def test_frames_innermost_first() -> None:
    assert frames(WASMTIME) == ("parse_number", "handle_cmd", "<wasm function 2>")
    assert frames("wasm trap: unreachable") == ()
    assert frames("") == ()


def test_describe() -> None:
    assert describe(("a", "b", "c")) == "a ← b ← c"
    assert describe(()) == ""
    assert describe(("<wasm function 7>", "<wasm function 2>")) == "", "no names: nothing to show"
    assert describe(("<wasm function 7>", "on_message")) == "<wasm function 7> ← on_message"
    deep = tuple(f"f{i}" for i in range(MAX_FRAMES + 3))
    assert describe(deep).endswith("f7 ← (3 more)")
