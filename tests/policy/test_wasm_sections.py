"""Section reading and DWARF stripping (policy/wasm_sections.py)."""

from __future__ import annotations

import pytest
import wasmtime

from tinywasm_wasi.policy.wasm_sections import (
    WasmFormatError,
    custom_sections,
    sections,
    strip_debug,
)


def _custom(name: str, body: bytes) -> bytes:
    payload = bytes([len(name)]) + name.encode() + body
    assert len(payload) < 128
    return b"\x00" + bytes([len(payload)]) + payload


def test_strip_debug_keeps_names_and_code() -> None:
    base = wasmtime.wat2wasm('(module $m (func $f (export "f") (result i32) i32.const 7))')
    data = base + _custom(".debug_info", b"\x01\x02") + _custom("producers", b"")
    assert custom_sections(data) == ["name", ".debug_info", "producers"]
    stripped = strip_debug(data)
    assert custom_sections(stripped) == ["name", "producers"]
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, stripped), [])
    f = instance.exports(store)["f"]
    assert isinstance(f, wasmtime.Func) and f(store) == 7
    assert strip_debug(base) == base


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "not a WebAssembly binary"),
        (b"\0asm\1\0\0\0\1\x05\0", "runs past the end"),
        (b"\0asm\1\0\0\0\1\xff\xff\xff\xff\xff\x01", "bad LEB128"),
    ],
)
def test_malformed_binaries(data: bytes, says: str) -> None:
    with pytest.raises(WasmFormatError, match=says):
        list(sections(data))
