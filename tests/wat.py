"""Build tiny guest modules from WAT for tests.

`guest(body, strings=...)` wraps `body` in a module that imports every host
function, exports `memory`, a bump `malloc` and a `free` that counts calls
(exported global `frees`). Strings are placed in a data segment and referred to
in `body` as `{name}` → `(i32.const ptr) (i32.const len)`.
"""

from __future__ import annotations

from pathlib import Path

import wasmtime

IMPORTS = """
  (import "env" "publish" (func $publish (param i32 i32 i32 i32)))
  (import "env" "subscribe" (func $subscribe (param i32 i32 i32)))
  (import "env" "unsubscribe" (func $unsubscribe (param i32 i32)))
  (import "env" "ws_broadcast" (func $ws_broadcast (param i32 i32 i32 i32)))
  (import "env" "log" (func $log (param i32 i32)))
"""

ALLOCATOR = """
  (global $heap (mut i32) (i32.const 65536))
  (global $frees (export "frees") (mut i32) (i32.const 0))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "free") (param $p i32)
    (global.set $frees (i32.add (global.get $frees) (i32.const 1)))
    (global.set $heap (i32.const 65536)))
"""


def _escape(text: str) -> str:
    return "".join(
        c if c.isalnum() or c in " .-_:>*" else f"\\{b:02x}" for c in text for b in c.encode()
    )


def guest(
    body: str,
    strings: dict[str, str] | None = None,
    *,
    imports: str = IMPORTS,
    allocator: str = ALLOCATOR,
    pages: int = 2,
) -> str:
    """WAT text of a test guest."""
    segments = []
    refs = {}
    offset = 1024
    for name, text in (strings or {}).items():
        size = len(text.encode())
        segments.append(f'  (data (i32.const {offset}) "{_escape(text)}")')
        refs[name] = f"(i32.const {offset}) (i32.const {size})"
        offset += size + 8
    return (
        f'(module{imports}\n  (memory (export "memory") {pages})\n'
        + "\n".join(segments)
        + f"\n{allocator.format(**refs)}\n{body.format(**refs)}\n)"
    )


def write(directory: Path, name: str, wat: str) -> Path:
    """Compile `wat` and write it as `directory/name.wasm`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def binary(wat: str) -> bytes:
    """The WebAssembly binary of `wat`."""
    return bytes(wasmtime.wat2wasm(wat))


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def padded(data: bytes, size: int, name: str = "padding") -> bytes:
    """Module binary `data` grown to exactly `size` bytes by a custom section (still valid)."""
    label = _leb128(len(name.encode())) + name.encode()
    for content in range(max(0, size - len(data) - len(label) - 6), size):
        body = label + bytes(content)
        section = b"\x00" + _leb128(len(body)) + body
        if len(data) + len(section) == size:
            return data + section
    raise ValueError(f"cannot pad a {len(data)} byte module to {size} bytes")
