"""`tinywasm build` per language, and the loader's checks after the compile, with real toolchains."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from tinywasm_wasi.build import BuildError, build_module
from tinywasm_wasi.policy.authoring import Problem
from tinywasm_wasi.policy.wasm_sections import custom_sections

pytestmark = pytest.mark.timeout(600)  # zig's first build of its runtime fills its cache

RELAY_WAT = """(module
  (import "env" "subscribe" (func $subscribe (param i32 i32 i32)))
  (import "env" "ws_broadcast" (func $ws_broadcast (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "chat")
  (global $next (mut i32) (i32.const 1024))
  (func (export "init") (call $subscribe (i32.const 16) (i32.const 4) (i32.const 0)))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
  (func (export "free") (param i32))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast (i32.const 16) (i32.const 4) (local.get $p) (local.get $n)))
)
"""


def _folder(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(text)
    return folder


def test_wat_builds_with_names_into_the_modules_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "relay", {"relay.wat": RELAY_WAT})
    result = build_module(folder, tmp_path / "modules")
    assert result.path == tmp_path / "modules" / "relay.wasm"
    assert result.language == "wat" and result.warnings == ()
    module = wasmtime.Module(wasmtime.Engine(), result.path.read_bytes())
    assert {e.name for e in module.exports} >= {"init", "malloc", "on_message"}


def test_wat_syntax_error_says_file_and_line(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "bad", {"bad.wat": '(module\n  (func (export "f") i32.cnst 1))\n'})
    with pytest.raises(BuildError) as info:
        build_module(folder, tmp_path / "modules")
    assert f"{folder / 'bad.wat'}:2:" in info.value.output
    assert not (tmp_path / "modules" / "bad.wasm").exists()


def test_a_module_the_server_would_refuse_fails_the_build(tmp_path: Path) -> None:
    no_memory = '(module (func (export "init")))'
    folder = _folder(tmp_path, "nomem", {"nomem.wat": no_memory})
    with pytest.raises(BuildError, match=r"the server would refuse nomem\.wasm: module does not"):
        build_module(folder, tmp_path / "modules")
    unknown = '(module (import "env" "abort" (func (param i32 i32 i32 i32))) (memory (export "memory") 1))'
    folder = _folder(tmp_path, "as", {"as.wat": unknown})
    with pytest.raises(BuildError, match=r"unknown import env\.abort.*build with `--use abort=`"):
        build_module(folder, tmp_path / "modules")
    assert not (tmp_path / "modules").exists() or not list((tmp_path / "modules").iterdir())


def test_a_module_that_cannot_receive_fails_with_the_fix_in_its_language(tmp_path: Path) -> None:
    no_malloc = RELAY_WAT.replace('(export "malloc")', "")
    folder = _folder(tmp_path, "relay", {"relay.wat": no_malloc})
    with pytest.raises(BuildError) as info:
        build_module(folder, tmp_path / "modules")
    assert "exports on_message but no malloc or alloc" in str(info.value)
    assert '(func (export "malloc") (param i32) (result i32))' in str(info.value)

    c_folder = _folder(
        tmp_path,
        "cnomalloc",
        {
            "module.toml": 'language = "c"\n',
            "m.c": '#include "tinywasm.h"\n'
            'TW_EXPORT(init) void init(void) { tw_subscribe_str("chat"); }\n'
            "TW_EXPORT(on_message) void on_message(const char *p, int n) { (void)p; (void)n; }\n",
        },
    )
    with pytest.raises(BuildError, match=r"add `TW_EXPORT_ALLOCATOR\(\);`"):
        build_module(c_folder, tmp_path / "modules")


def test_warnings_do_not_fail_the_build(tmp_path: Path) -> None:
    half = RELAY_WAT.replace('(func (export "free") (param i32))', "")
    folder = _folder(tmp_path, "leaky", {"leaky.wat": half})
    result = build_module(folder, tmp_path / "modules")
    assert [f.problem for f in result.warnings] == [Problem.NO_FREE]


def test_a_trap_in_init_fails_the_build(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        "boom",
        {"boom.wat": '(module (memory (export "memory") 1) (func (export "init") unreachable))'},
    )
    with pytest.raises(
        BuildError, match=r"boom.wasm built, but starting it failed: .*init\(\) \[UNREACHABLE\]"
    ):
        build_module(folder, tmp_path / "modules")


def test_manifest_command_and_limits(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        "custom",
        {
            "module.toml": 'language = "wat"\noutput = "5-custom@[*].wasm"\n'
            '[build]\ncommand = "{python}"\n'
            'args = ["-m", "tinywasm_wasi.wat2wasm", "-o", "{output}", "{sources}"]\n'
            "[limits]\nmemory_limit = 65536\n",
            "custom.wat": '(module (memory (export "memory") 2) (func (export "init")))',
        },
    )
    # Two pages do not fit the manifest's one-page limit: refused as the server would.
    with pytest.raises(BuildError, match="over the 65536 byte limit"):
        build_module(folder, tmp_path / "modules")
    (folder / "custom.wat").write_text(
        '(module (memory (export "memory") 1) (func (export "init")))'
    )
    assert build_module(folder, tmp_path / "modules").path.name == "5-custom@[*].wasm"


ZIG = """
export fn init() void {}
export fn on_message(ptr: [*]const u8, len: u32) void {
    _ = ptr;
    _ = len;
}
export fn malloc(size: usize) ?[*]u8 {
    const mem = std.heap.wasm_allocator.alloc(u8, size) catch return null;
    return mem.ptr;
}
export fn free(ptr: ?[*]u8) void {
    _ = ptr;
}
const std = @import("std");
"""


def test_zig_builds_with_its_function_names(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "zigmod", {"main.zig": ZIG})
    result = build_module(folder, tmp_path / "modules")
    assert result.language == "zig"
    sections = custom_sections(result.path.read_bytes())
    assert "name" in sections and not [s for s in sections if s.startswith(".debug")]
