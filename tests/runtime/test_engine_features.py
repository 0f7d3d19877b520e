"""Proposals whose value types wasmtime's C API cannot describe are refused at compile.

Reading such a type (v128, a typed or GC reference, exnref) in an import or export
signature made wasmtime abort the whole process: the fuzz test found it. With the
proposals off, the module is refused with a reason and the server goes on.
"""

from __future__ import annotations

import pytest
import wasmtime

from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.runtime.engine import Runtime

SIGNATURE = """(module (type $f (func))
  (import "env" "log" (func (param {t} {t})))
  (memory (export "memory") 1))"""


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(cache_dir=None)


@pytest.mark.parametrize(
    ("valtype", "proposal"),
    [
        ("v128", "SIMD"),
        ("(ref any)", "reference"),
        ("anyref", "reference"),
        ("i31ref", "reference"),
        ("(ref extern)", "reference"),
        ("(ref $f)", "reference"),
        ("exnref", "exceptions"),
    ],
)
def test_a_signature_with_an_unsupported_type_is_refused_not_fatal(
    runtime: Runtime, valtype: str, proposal: str
) -> None:
    data = bytes(wasmtime.wat2wasm(SIGNATURE.format(t=valtype)))
    with pytest.raises(ModuleLoadError, match="invalid WebAssembly") as info:
        runtime.compile_module("typed", data)
    reason = str(info.value).lower()
    assert "caused by:" in reason  # wasmtime's reason is kept, not cut at a blank line
    assert any(words in reason for words in ("not enabled", "not supported", "required")), reason


def test_plain_types_still_compile(runtime: Runtime) -> None:
    compiled = runtime.compile_module("plain", bytes(wasmtime.wat2wasm(SIGNATURE.format(t="i32"))))
    assert compiled.interface.handler is None  # reached our own interface check
