"""Tests for tinywasm_wasi.build: the example modules compile and honour the guest interface."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
import wasmtime

from tinywasm_wasi.build import BuildError, build_module, load_manifest
from tinywasm_wasi.build.compile import BuildContext
from tinywasm_wasi.build.languages import TOOLCHAINS
from tinywasm_wasi.cli import build as main  # `tinywasm build`: reports what build_module returns
from tinywasm_wasi.policy.http_abi import HttpResponse, PassOn, parse_response
from tinywasm_wasi.policy.manifest import Language, check_output_name
from tinywasm_wasi.policy.wasm_sections import custom_sections

# The first zig build on a machine fills its cache (about 20 s); later ones take ~50 ms.
pytestmark = pytest.mark.timeout(300)

MODULES = Path(__file__).resolve().parent.parent / "modules"
EXAMPLES = {
    "sender": None,
    "receiver": "on_message",
    "chat": "on_message",
    "monitor": "on_topic_message",
}
# HTTP examples: output file (module.toml names the middlewares') and HTTP export.
HTTP_EXAMPLES = {
    "echo": ("echo.wasm", "handle"),
    "echo_http": ("echo_http.wasm", "handle_http"),
    "auth": ("20-auth@[echo_http].wasm", "handle_http"),
    "tag": ("10-tag@[*].wasm", "handle_http"),
}
HOST_IMPORTS = {"publish", "subscribe", "unsubscribe", "ws_broadcast", "log"}
HOST_IMPORTS_I32 = {"config_get", "message_sender"}
I32 = wasmtime.ValType.i32()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out_dir = tmp_path_factory.mktemp("dist")
    return {
        name: build_module(MODULES / name, out_dir).path for name in [*EXAMPLES, *HTTP_EXAMPLES]
    }


def output_name(module_dir: Path) -> str:
    return load_manifest(module_dir).output


def _params(t: wasmtime.FuncType) -> list[str]:
    return [str(p) for p in t.params]


def _results(t: wasmtime.FuncType) -> list[str]:
    return [str(r) for r in t.results]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_follows_guest_interface(built: dict[str, Path], name: str) -> None:
    path = built[name]
    assert path == path.parent / f"{name}.wasm"
    assert 0 < path.stat().st_size < 4096
    assert custom_sections(path.read_bytes())[0] == "name", "names kept for backtraces"
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(path))

    for imp in module.imports:
        if imp.module == "env":
            assert imp.name in HOST_IMPORTS or imp.name in HOST_IMPORTS_I32, (
                f"{name} imports unknown env.{imp.name}"
            )
            assert isinstance(imp.type, wasmtime.FuncType)
            results = ["i32"] if imp.name in HOST_IMPORTS_I32 else []
            assert set(_params(imp.type)) == {"i32"} and _results(imp.type) == results
        else:
            assert imp.module == "wasi_snapshot_preview1", f"{name} imports {imp.module}"

    exports = {exp.name: exp.type for exp in module.exports}
    assert isinstance(exports["memory"], wasmtime.MemoryType)
    expected = {"_initialize": ([], []), "init": ([], []), "malloc": (["i32"], ["i32"])}
    expected["free"] = (["i32"], [])
    handler = EXAMPLES[name]
    if handler == "on_message":
        expected[handler] = (["i32"] * 2, [])
    elif handler == "on_topic_message":
        expected[handler] = (["i32"] * 4, [])
    for export, (params, results) in expected.items():
        func_type = exports.get(export)
        assert isinstance(func_type, wasmtime.FuncType), f"{name} does not export {export}"
        assert (_params(func_type), _results(func_type)) == (params, results), export


class _Host:
    """Stub host functions that record what a guest called."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module) -> None:
        self.calls: list[tuple[str, bytes, bytes]] = []
        self.store = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        arity = {"publish": 4, "ws_broadcast": 4, "subscribe": 3, "log": 2}
        for name, count in arity.items():
            func_type = wasmtime.FuncType([I32] * count, [])
            linker.define_func("env", name, func_type, self._record(name), access_caller=True)
        # Version 2: no message here has a sender (the server's own publishes).
        sender_type = wasmtime.FuncType([I32, I32], [I32])
        linker.define_func("env", "message_sender", sender_type, lambda _ptr, _len: -1)
        self.exports = linker.instantiate(self.store, module).exports(self.store)
        memory = self.exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self.call("_initialize")
        self.call("init")

    def _record(self, name: str) -> Callable[..., None]:
        def host(caller: wasmtime.Caller, ptr: int, length: int, *rest: int) -> None:
            def read(at: int, size: int) -> bytes:
                return bytes(self.memory.read(caller, at, at + size))

            self.calls.append((name, read(ptr, length), read(*rest) if len(rest) == 2 else b""))

        return host

    def call(self, export: str, *args: int) -> Any:
        func = self.exports[export]
        assert isinstance(func, wasmtime.Func), export
        return func(self.store, *args)

    def deliver(self, *parts: bytes) -> int:
        data = b"".join(parts)
        ptr = self.call("malloc", len(data) or 1)
        assert isinstance(ptr, int) and ptr > 0
        self.memory.write(self.store, data, ptr)
        offsets, at = [], ptr
        for part in parts:
            offsets += [at, len(part)]
            at += len(part)
        self.call("on_topic_message" if len(parts) == 2 else "on_message", *offsets)
        self.call("free", ptr)
        return ptr


def test_examples_run_against_a_stub_host(built: dict[str, Path]) -> None:
    engine = wasmtime.Engine()

    def load(name: str) -> _Host:
        return _Host(engine, wasmtime.Module.from_file(engine, str(built[name])))

    sender = load("sender")
    assert sender.calls[0] == ("publish", b"events", b"hello from sender")
    assert sender.calls[1][0] == "log"

    chat = load("chat")
    assert chat.calls == [("subscribe", b"chat", b"")]
    first = chat.deliver(b"hi all")
    assert chat.deliver(b"again") == first, "free() should let malloc reuse the block"
    assert chat.calls[1:] == [
        ("ws_broadcast", b"chat", b"hi all"),
        ("ws_broadcast", b"chat", b"again"),
    ]

    receiver = load("receiver")
    receiver.deliver(b"x")
    assert receiver.calls == [("subscribe", b"events", b""), ("ws_broadcast", b"events", b"x")]

    monitor = load("monitor")
    monitor.deliver(b"users.created", b"{}")
    monitor.deliver(b"big", b"y" * 5000)
    assert monitor.calls[0] == ("subscribe", b">", b"")
    assert monitor.calls[1] == ("ws_broadcast", b"monitor", b"users.created: {}")
    assert monitor.calls[2][1:] == (b"monitor", (b"big: " + b"y" * 5000)[:1024])


@pytest.mark.parametrize("name", sorted(HTTP_EXAMPLES))
def test_http_example_is_named_by_its_manifest_and_exports_its_handler(
    built: dict[str, Path], name: str
) -> None:
    file_name, export = HTTP_EXAMPLES[name]
    assert built[name].name == file_name == output_name(MODULES / name)
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(built[name]))
    exports = {exp.name: exp.type for exp in module.exports}
    handler = exports[export]
    assert isinstance(handler, wasmtime.FuncType)
    result = "i32" if export == "handle" else "i64"
    assert (_params(handler), _results(handler)) == (["i32", "i32"], [result])
    assert {"malloc", "free", "memory"} <= set(exports)
    assert not [i for i in module.imports if i.module == "env"], "HTTP examples need no host calls"


def test_committed_dist_is_built_from_current_sources(built: dict[str, Path]) -> None:
    source_dirs = sorted(p.parent.name for p in MODULES.glob("*/*.c"))
    assert set(EXAMPLES) | set(HTTP_EXAMPLES) <= set(source_dirs)
    for name in source_dirs:
        committed = MODULES / "dist" / output_name(MODULES / name)
        assert committed.is_file(), f"missing {committed}: run python -m cmd.tinywasm build"
        if name in built:
            assert committed.read_bytes() == built[name].read_bytes(), (
                f"{committed} is stale: run python -m cmd.tinywasm build modules/{name}"
            )


def test_c_toolchain_command_keeps_names(tmp_path: Path) -> None:
    ctx = BuildContext(
        name="m",
        module_dir=tmp_path,
        sources=(Path("a.c"), Path("b.c")),
        output=Path("out.wasm"),
        scratch=tmp_path,
        cache_dir=tmp_path,
        include_dir=Path("inc"),
    )
    (step,) = TOOLCHAINS[Language.C].steps(ctx, ("-DX",))
    assert step.argv[1:5] == ["-m", "ziglang", "cc", "--target=wasm32-wasi"]
    assert "-mexec-model=reactor" in step.argv and "-s" not in step.argv
    assert step.argv[-6:] == ["inc", "-DX", "-o", "out.wasm", "a.c", "b.c"]


def test_directory_without_sources(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match=r"cannot build .*empty: it has no module.toml"):
        build_module(tmp_path / "empty", tmp_path)
    with pytest.raises(BuildError, match="is not a folder"):
        build_module(tmp_path / "missing", tmp_path)
    (tmp_path / "empty" / "module.toml").write_text('language = "c"\n')
    with pytest.raises(BuildError, match=r"no source files match \*\.c"):
        build_module(tmp_path / "empty", tmp_path)


def test_syntax_error_shows_compiler_output(tmp_path: Path) -> None:
    module_dir = tmp_path / "broken"
    module_dir.mkdir()
    (module_dir / "broken.c").write_text("int f(void) { return 1 }\n")
    out_dir = tmp_path / "dist"
    with pytest.raises(BuildError) as info:
        build_module(module_dir, out_dir)
    message = str(info.value)
    assert message.startswith("building broken failed: ziglang exited with code 1")
    assert "broken.c:1:" in message and "error: expected ';'" in message
    assert "broken.c:1:" in info.value.output
    assert not out_dir.exists() or list(out_dir.iterdir()) == [], "nothing may be left behind"


def test_main_builds_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    assert main([str(MODULES / "chat"), "-o", str(out_dir)]) == 0
    output = out_dir / "chat.wasm"
    assert output.is_file()
    assert capsys.readouterr().out.startswith(f"built {output} ({output.stat().st_size} bytes, c, ")

    assert main([str(tmp_path / "nothing"), "-o", str(out_dir)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"building {tmp_path / 'nothing'} into ")  # progress first
    assert "\nerror: cannot build " in captured.err


def test_output_name_comes_from_the_manifest(tmp_path: Path) -> None:
    module_dir = tmp_path / "mw"
    module_dir.mkdir()
    (module_dir / "mw.c").write_text("")
    assert output_name(module_dir) == "mw.wasm"
    (module_dir / "module.toml").write_text('language = "c"\noutput = "5-mw@[*, -admin].wasm"\n')
    assert output_name(module_dir) == "5-mw@[*, -admin].wasm"
    (module_dir / "module.toml").write_text('language = "c"\noutput = "mw@[].wasm"\n')
    with pytest.raises(BuildError) as info:
        output_name(module_dir)
    assert str(info.value).startswith(str(module_dir / "module.toml"))
    assert "empty middleware rule" in str(info.value)


def test_output_name_flag_renames_one_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    tag = MODULES / "tag"
    assert main([str(tag), "-o", str(out_dir), "--output-name", "11-tag2@[echo].wasm"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["11-tag2@[echo].wasm"]
    capsys.readouterr()
    assert main([str(tag), "-o", str(out_dir), "-n", "tag@[].wasm"]) == 1
    assert "output name 'tag@[].wasm'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tag), str(MODULES / "echo"), "-n", "x.wasm"])
    assert "--output-name names one output" in capsys.readouterr().err
    assert check_output_name("x.wasm") == "x.wasm"


class _HttpGuest:
    """An HTTP example instantiated with WASI only, called the way the host calls it."""

    def __init__(self, path: Path) -> None:
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        self.store.set_wasi(wasmtime.WasiConfig())
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        module = wasmtime.Module.from_file(engine, str(path))
        self.exports = linker.instantiate(self.store, module).exports(self.store)
        memory = self.exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self._call("_initialize")

    def _call(self, export: str, *args: int) -> Any:
        func = self.exports[export]
        assert isinstance(func, wasmtime.Func), export
        return func(self.store, *args)

    def raw_answer(self, request: bytes) -> bytes:
        """The bytes handle_http points at (b"" for a 0 return)."""
        ptr = self._call("malloc", len(request) or 1)
        self.memory.write(self.store, request, ptr)
        packed = self._call("handle_http", ptr, len(request)) & 0xFFFFFFFFFFFFFFFF
        self._call("free", ptr)
        at, size = packed >> 32, packed & 0xFFFFFFFF
        return bytes(self.memory.read(self.store, at, at + size))

    def handle_http(self, request: bytes) -> Any:
        return cbor2.loads(self.raw_answer(request))


def test_http_examples_read_requests_with_tw_cbor(built: dict[str, Path]) -> None:
    request = {
        "method": "GET",
        "path": "/m/echo_http/x",
        "route": "echo_http",
        "query": "",
        # A key added later, with nested items tc_skip() must step over.
        "later": [{"a": [-1, 2**40, 1.5, None, True]}, cbor2.CBORTag(99, b"\x00")],
        "headers": {"authorization": "Bearer t"},
        "body": b"\x00\xff",
    }
    echo = _HttpGuest(built["echo_http"])
    answer = echo.handle_http(cbor2.dumps(request))
    assert answer["status"] == 200
    assert answer["headers"] == {"content-type": "application/json", "x-echo": "echo_http"}
    echoed = json.loads(answer["body"])
    assert echoed["headers"] == {"authorization": "Bearer t"}
    assert (echoed["path"], echoed["body_size"], echoed["body"]) == (
        "/m/echo_http/x",
        2,
        "\x00\xff",
    )
    truncated = cbor2.dumps(request)[:-3]
    assert echo.handle_http(truncated) == {"status": 400, "body": "echo_http: unreadable request\n"}

    auth = _HttpGuest(built["auth"])
    assert auth.handle_http(cbor2.dumps(request)) == {
        "next": True,
        "headers": {"x-auth": "present"},
    }
    anonymous = cbor2.dumps({**request, "headers": {"x-other": "1"}})
    assert auth.handle_http(anonymous)["status"] == 401
    tag = _HttpGuest(built["tag"])
    assert tag.handle_http(b"") == {"next": True, "headers": {"x-tag": "tag"}}
    # Indefinite lengths are malformed for tw_cbor.h's reader, at the top or nested: a 400.
    unreadable = {"status": 400, "body": "echo_http: unreadable request\n"}
    indefinite_map = b"\xbf" + cbor2.dumps(request)[1:] + b"\xff"
    assert echo.handle_http(indefinite_map) == unreadable
    known = {key: value for key, value in request.items() if key != "later"}
    last_null = cbor2.dumps({**known, "later": None})  # ends with null (0xf6)
    assert echo.handle_http(last_null)["status"] == 200
    nested = last_null[:-1] + b"\x9f\x01\xff"  # null -> an indefinite array [1]
    assert echo.handle_http(nested) == unreadable


# A guest that answers through every tinywasm_http.h answer helper, picked by x-want.
HELPERS_C = r"""
#define TW_HTTP_RESPONSE_MAX 512
#include "tinywasm.h"
#include "tinywasm_http.h"

TW_EXPORT_ALLOCATOR();

static tw_http_request request;
static tw_http_pair list[4];
static char big[600];

TW_EXPORT(handle_http) uint64_t handle_http(const void *req, int len) {
    const tw_str *want;
    size_t n;
    if (!tw_http_parse(req, len, &request)) return tw_http_respond(400, TW_NO_HEADERS, "bad\n");
    want = tw_http_header(&request, "x-want");
    if (!want) return 0;
    if (tc_eq(want->p, (size_t)want->len, "several"))
        return tw_http_respond(201,
                               TW_HEADERS({"content-type", "text/csv"}, {"x-a", "1"},
                                          {"Set-Cookie", "a=1"}, {"x-empty", ""},
                                          {"set-cookie", "b=2"}, {"x-b", "two words"}),
                               "a,b\n");
    if (tc_eq(want->p, (size_t)want->len, "next"))
        return tw_http_next(TW_HEADERS({"x-user", "ann"}, {"x-role", "admin"}, {"x-c", "3"}));
    if (tc_eq(want->p, (size_t)want->len, "next-bare")) return tw_http_next(TW_NO_HEADERS);
    if (tc_eq(want->p, (size_t)want->len, "nothing")) return tw_http_respond(204, TW_NO_HEADERS, 0);
    if (tc_eq(want->p, (size_t)want->len, "bytes"))
        return tw_http_respond_bytes(200, TW_HEADERS({"x-n", "2"}), "\0\377", 2);
    if (tc_eq(want->p, (size_t)want->len, "run-time")) {
        for (n = 0; n < 3; n++) {
            list[n].name = n == 1 ? "x-second" : "x-other";
            list[n].value = n == 0 ? "zero" : n == 1 ? "one" : "two";
        }
        return tw_http_respond(200, (tw_http_headers){list, n}, "");
    }
    memset(big, 'x', sizeof big - 1);
    return tw_http_respond(200, TW_NO_HEADERS, big); /* over TW_HTTP_RESPONSE_MAX */
}
"""


def test_http_helpers_count_the_answer_map_for_the_author(tmp_path: Path) -> None:
    module_dir = tmp_path / "helpers"
    module_dir.mkdir()
    (module_dir / "helpers.c").write_text(HELPERS_C)
    guest = _HttpGuest(build_module(module_dir, tmp_path / "dist").path)

    def answer(want: str) -> tuple[bytes, HttpResponse | PassOn]:
        request = {"method": "GET", "path": "/m/x", "route": "x", "query": "", "body": b""}
        raw = guest.raw_answer(cbor2.dumps({**request, "headers": {"x-want": want}}))
        # The host's own check: exactly one map with the right pair counts, nothing after it.
        return raw, parse_response(raw, max_body=1 << 20, middleware=True)

    raw, response = answer("several")
    assert cbor2.loads(raw) == {
        "status": 201,
        "headers": {
            "content-type": "text/csv",
            "x-a": "1",
            "Set-Cookie": ["a=1", "b=2"],
            "x-empty": "",
            "x-b": "two words",
        },
        "body": "a,b\n",
    }
    assert response == HttpResponse(
        201,
        (
            ("content-type", "text/csv"),
            ("x-a", "1"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-empty", ""),
            ("x-b", "two words"),
        ),
        b"a,b\n",
    )
    raw, response = answer("next")
    assert cbor2.loads(raw) == {
        "next": True,
        "headers": {"x-user": "ann", "x-role": "admin", "x-c": "3"},
    }
    assert response == PassOn({"x-user": "ann", "x-role": "admin", "x-c": "3"})
    assert cbor2.loads(answer("next-bare")[0]) == {"next": True}
    assert cbor2.loads(answer("nothing")[0]) == {"status": 204}
    raw, response = answer("bytes")
    assert cbor2.loads(raw) == {"status": 200, "headers": {"x-n": "2"}, "body": b"\x00\xff"}
    assert response == HttpResponse(
        200, (("x-n", "2"), ("content-type", "application/octet-stream")), b"\x00\xff"
    )
    raw, response = answer("run-time")
    assert cbor2.loads(raw) == {
        "status": 200,
        "headers": {"x-other": ["zero", "two"], "x-second": "one"},
        "body": "",
    }
    raw, response = answer("big")
    assert cbor2.loads(raw) == {"status": 500, "body": "response buffer too small"}
    assert guest.raw_answer(b"") == cbor2.dumps({"status": 400, "body": "bad\n"})
