"""fastcall: guest calls and host callbacks, run against both backends on real wasmtime."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import wasmtime

from tinywasm_wasi.runtime import fastcall
from tinywasm_wasi.runtime.fastcall import (
    Backend,
    CallExit,
    CallTrap,
    GuestFunc,
    HostCaller,
    HostFunctions,
    HostTrap,
    MemoryRangeError,
)

pytestmark = pytest.mark.timeout(60)

I32, I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
PAGE = 65536
Defs = dict[str, tuple[wasmtime.FuncType, Callable[..., int | None]]]

BACKENDS = [
    pytest.param(
        fastcall.FAST,
        id="fast",
        marks=pytest.mark.skipif(fastcall.FAST is None, reason="no unchecked C API"),
    ),
    pytest.param(fastcall.PUBLIC, id="public"),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    be: Backend = request.param
    return be


@pytest.fixture(params=[False, True], ids=["export", "bound"])
def bound(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


def sig(params: str = "", results: str = "") -> wasmtime.FuncType:
    kinds = {"i": I32, "I": I64}
    return wasmtime.FuncType([kinds[c] for c in params], [kinds[c] for c in results])


@dataclass
class Instance:
    backend: Backend
    store: wasmtime.Store
    exports: Mapping[str, object]
    host: HostFunctions

    def func(self, name: str) -> GuestFunc:
        func = self.exports[name]
        assert isinstance(func, wasmtime.Func)
        return self.backend.func(self.store, func)

    def call(self, name: str, *args: int) -> int | None:
        return self.func(name)(*args)

    @property
    def memory(self) -> wasmtime.Memory:
        memory = self.exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        return memory


def instantiate(
    backend: Backend,
    wat: str,
    defs: Defs | None = None,
    *,
    engine: wasmtime.Engine | None = None,
    bind: bool = False,
    wasi: bool = False,
) -> Instance:
    engine = engine or wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    if wasi:
        linker.define_wasi()
    host = backend.host(linker)
    for name, (ty, fn) in (defs or {}).items():
        host.define("env", name, ty, fn)
    store = wasmtime.Store(engine)
    if wasi:
        store.set_wasi(wasmtime.WasiConfig())
    instance = linker.instantiate(store, wasmtime.Module(engine, wat))
    inst = Instance(backend, store, instance.exports(store), host)
    if bind:
        host.bind(store, inst.memory)
    return inst


def rss_kib() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def module(body: str, imports: str = "") -> str:
    return f'(module {imports} (memory (export "memory") 1) {body})'


# -- values -------------------------------------------------------------------------------

ARITH = module("""
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "id64") (param i64) (result i64) (local.get 0))
  (func (export "high") (result i64) (i64.const 0x8000000100000002))
  (func (export "mix") (param i32 i64 i32) (result i64)
    (i64.add (i64.extend_i32_s (local.get 0)) (i64.add (local.get 1) (i64.extend_i32_u (local.get 2)))))
  (func (export "none") (param i32))
""")


def test_i32_arguments_wrap_and_results_are_signed(backend: Backend) -> None:
    inst = instantiate(backend, ARITH)
    add = inst.func("add")
    assert add(2, 3) == 5
    assert add(-7, 2) == -5
    assert add(0xFFFFFFFF, 0) == -1
    assert add(0x7FFFFFFF, 1) == -(2**31)
    assert add(0, 0) == 0


def test_i64_values_keep_their_high_bits(backend: Backend) -> None:
    inst = instantiate(backend, ARITH)
    assert inst.call("high") == 0x8000000100000002 - 2**64
    assert inst.call("id64", 2**40 + 5) == 2**40 + 5
    assert inst.call("id64", 0xFFFFFFFFFFFFFFFF) == -1
    assert inst.call("id64", -(2**63)) == -(2**63)
    assert inst.call("mix", -1, 2**33, 0xFFFFFFFF) == -1 + 2**33 + 0xFFFFFFFF


def test_no_result_is_none_and_argument_count_is_checked(backend: Backend) -> None:
    inst = instantiate(backend, ARITH)
    assert inst.call("none", 1) is None
    with pytest.raises(TypeError, match="takes 1 arguments, 2 given"):
        inst.call("none", 1, 2)
    with pytest.raises(TypeError, match="takes 2 arguments, 0 given"):
        inst.call("add")


def test_float_signatures_are_refused(backend: Backend) -> None:
    inst = instantiate(backend, module('(func (export "f") (param f32))'))
    with pytest.raises(TypeError, match="only i32 and i64"):
        inst.func("f")
    f64 = wasmtime.FuncType([wasmtime.ValType.f64()], [])
    with pytest.raises(TypeError, match="only i32 and i64"):
        backend.host(wasmtime.Linker(wasmtime.Engine())).define("env", "f", f64, lambda c, x: None)


# -- traps --------------------------------------------------------------------------------

TRAPS = module("""
  (func (export "unreachable") unreachable)
  (func (export "oob") (result i32) (i32.load (i32.const 0x7FFFFFF0)))
  (func $deep (export "deep") (param i32) (result i32) (i32.add (call $deep (local.get 0)) (i32.const 1)))
  (func (export "div") (param i32) (result i32) (i32.div_s (i32.const 1) (local.get 0)))
""")


@pytest.mark.parametrize(
    ("export", "args", "code", "words"),
    [
        ("unreachable", (), wasmtime.TrapCode.UNREACHABLE, "unreachable"),
        ("oob", (), wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS, "out of bounds"),
        ("deep", (1,), wasmtime.TrapCode.STACK_OVERFLOW, "call stack exhausted"),
        ("div", (0,), wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO, "divide by zero"),
    ],
)
def test_a_trap_raises_call_trap_with_its_code(
    backend: Backend, export: str, args: tuple[int, ...], code: wasmtime.TrapCode, words: str
) -> None:
    inst = instantiate(backend, TRAPS)
    with pytest.raises(CallTrap) as info:
        inst.call(export, *args)
    assert info.value.trap_code == code
    assert words in info.value.message
    assert "\n" not in info.value.message
    assert "wasm backtrace" in info.value.details
    assert info.value.host_error is None
    assert inst.call("div", 1) == 1  # the store is still usable


def test_epoch_interrupt_from_another_thread_while_guest_code_runs_without_the_gil(
    backend: Backend,
) -> None:
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    started = threading.Event()
    wat = module(
        """
      (func (export "spin") (call $started) (loop $l (br $l)))
      (func (export "one") (result i32) (i32.const 1))
    """,
        '(import "env" "started" (func $started))',
    )
    inst = instantiate(backend, wat, {"started": (sig(), lambda c: started.set())}, engine=engine)
    inst.store.set_epoch_deadline(1)

    def interrupt() -> None:
        # Runs only if the spinning call gave up the GIL.
        if started.wait(10):
            engine.increment_epoch()

    timer = threading.Thread(target=interrupt)
    timer.start()
    with pytest.raises(CallTrap) as info:
        inst.call("spin")
    timer.join()
    assert info.value.trap_code == wasmtime.TrapCode.INTERRUPT
    inst.store.set_epoch_deadline(1)
    assert inst.call("one") == 1


def test_proc_exit_raises_call_exit_with_the_code(backend: Backend) -> None:
    wat = module(
        """
      (func (export "quit") (param i32) (call $exit (local.get 0)))
    """,
        '(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))',
    )
    inst = instantiate(backend, wat, wasi=True)
    for code in (0, 3):
        with pytest.raises(CallExit) as info:
            inst.call("quit", code)
        assert info.value.code == code
        assert info.value.trap_code is None
        assert isinstance(info.value, CallTrap)


# -- host functions ---------------------------------------------------------------------

CALLS = module(
    """
  (data (i32.const 16) "hello")
  (func (export "add") (param i32 i64) (result i64) (call $add (local.get 0) (local.get 1)))
  (func (export "peek") (param i32 i32) (result i32) (call $peek (local.get 0) (local.get 1)))
  (func (export "poke") (param i32) (result i32) (call $poke (local.get 0)) (i32.load8_u (local.get 0)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "store8") (param i32 i32) (i32.store8 (local.get 0) (local.get 1)))
""",
    """
  (import "env" "add" (func $add (param i32 i64) (result i64)))
  (import "env" "peek" (func $peek (param i32 i32) (result i32)))
  (import "env" "poke" (func $poke (param i32)))
""",
)


class Recorder:
    """Host functions for CALLS that remember what they saw."""

    def __init__(self) -> None:
        self.seen: list[object] = []
        self.raise_: BaseException | None = None
        self.add_result: object = None
        self.caller: HostCaller | None = None
        self.sizes: list[int] = []

    def defs(self) -> Defs:
        return {"add": (sig("iI", "I"), self.add), "peek": (sig("ii", "i"), self.peek),
                "poke": (sig("i"), self.poke)}  # fmt: skip

    def add(self, caller: HostCaller, a: int, b: int) -> int:
        self.seen.append((a, b))
        if self.raise_ is not None:
            raise self.raise_
        return a + b if self.add_result is None else self.add_result  # type: ignore[return-value]

    def peek(self, caller: HostCaller, ptr: int, length: int) -> int:
        self.caller = caller
        self.sizes.append(caller.size())
        data = caller.read(ptr, length)
        self.seen.append(data)
        return len(data)

    def poke(self, caller: HostCaller, ptr: int) -> None:
        caller.write(ptr, b"\x2a")


def test_host_function_gets_signed_arguments_and_returns_a_result(backend: Backend) -> None:
    rec = Recorder()
    inst = instantiate(backend, CALLS, rec.defs())
    assert inst.call("add", -5, 2**40) == 2**40 - 5
    assert inst.call("add", 0xFFFFFFFF, -1) == -2
    assert inst.call("add", 0x80000000, 0) == -(2**31)
    assert rec.seen == [(-5, 2**40), (-1, -1), (-(2**31), 0)]


@pytest.mark.parametrize("kinds", ["", "i", "ii", "iii", "iiii", "iiiii", "IiI", "iIiIi"])
def test_host_function_of_any_arity_gets_its_arguments(backend: Backend, kinds: str) -> None:
    values = [-1, 2**31 - 1, -(2**31), 7, 0][: len(kinds)]
    values = [v if k == "i" else v * 2**32 + 5 for v, k in zip(values, kinds, strict=True)]
    wat_types = " ".join("i32" if k == "i" else "i64" for k in kinds)
    consts = " ".join(
        f"(i32.const {v})" if k == "i" else f"(i64.const {v})"
        for v, k in zip(values, kinds, strict=True)
    )
    wat = module(
        f'(func (export "go") (result i32) (call $f {consts}))',
        f'(import "env" "f" (func $f (param {wat_types}) (result i32)))',
    )
    seen: list[tuple[int, ...]] = []

    def f(caller: HostCaller, *args: int) -> int:
        seen.append(args)
        return len(args)

    inst = instantiate(backend, wat, {"f": (sig(kinds, "i"), f)})
    assert inst.call("go") == len(kinds)
    assert seen == [tuple(values)]


def test_host_reads_and_writes_guest_memory(backend: Backend, bound: bool) -> None:
    rec = Recorder()
    inst = instantiate(backend, CALLS, rec.defs(), bind=bound)
    assert inst.call("peek", 16, 5) == 5
    assert inst.call("peek", PAGE, 0) == 0  # empty range at the very end is inside
    assert inst.call("poke", 100) == 42
    assert rec.seen == [b"hello", b""]


def test_host_trap_traps_the_guest_with_its_message(backend: Backend) -> None:
    rec = Recorder()
    rec.raise_ = HostTrap("publish: topic at 0x10 is outside guest memory")
    inst = instantiate(backend, CALLS, rec.defs())
    with pytest.raises(CallTrap) as info:
        inst.call("add", 1, 2)
    assert info.value.message == "publish: topic at 0x10 is outside guest memory"
    assert info.value.trap_code is None
    assert info.value.host_error is rec.raise_


def test_any_host_exception_traps_the_guest_and_comes_back(backend: Backend) -> None:
    rec = Recorder()
    rec.raise_ = ValueError("boom")
    inst = instantiate(backend, CALLS, rec.defs())
    with pytest.raises(CallTrap) as info:
        inst.call("add", 1, 2)
    assert info.value.message == "host function env.add raised ValueError: boom"
    assert info.value.host_error is rec.raise_
    rec.raise_ = None
    assert inst.call("add", 1, 2) == 3  # no stale fault afterwards


def test_a_wrong_result_type_traps_instead_of_returning_garbage(backend: Backend) -> None:
    rec = Recorder()
    rec.add_result = "seven"
    inst = instantiate(backend, CALLS, rec.defs())
    with pytest.raises(CallTrap, match="raised TypeError"):
        inst.call("add", 1, 2)


def test_the_deadline_setter_moves_the_epoch_deadline(backend: Backend) -> None:
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    wat = module('(func (export "one") (result i32) (i32.const 1))')
    inst = instantiate(backend, wat, {}, engine=engine)
    set_deadline = backend.deadline(inst.store)
    set_deadline(2)
    engine.increment_epoch()
    assert inst.call("one") == 1  # one tick of two used
    engine.increment_epoch()
    with pytest.raises(CallTrap) as info:
        inst.call("one")  # the deadline has passed
    assert info.value.trap_code == wasmtime.TrapCode.INTERRUPT
    set_deadline(1)
    assert inst.call("one") == 1


def test_keyboard_interrupt_in_a_host_function_is_raised_again_after_the_call(
    backend: Backend,
) -> None:
    rec = Recorder()
    rec.raise_ = KeyboardInterrupt()
    inst = instantiate(backend, CALLS, rec.defs())
    with pytest.raises(KeyboardInterrupt):
        inst.call("add", 1, 2)


@pytest.mark.parametrize(
    ("ptr", "length"),
    [(PAGE - 4, 5), (PAGE, 1), (0xFFFFFFFF, 2), (-1, 1), (16, -1), (0x7FFFFFFF, 0x7FFFFFFF)],
)
def test_an_out_of_bounds_read_traps_and_reads_nothing(
    backend: Backend, bound: bool, ptr: int, length: int
) -> None:
    rec = Recorder()
    inst = instantiate(backend, CALLS, rec.defs(), bind=bound)
    with pytest.raises(CallTrap) as info:
        inst.call("peek", ptr, length)
    error = info.value.host_error
    assert isinstance(error, MemoryRangeError)
    assert (error.ptr, error.length, error.size) == (ptr & 0xFFFFFFFF, length & 0xFFFFFFFF, PAGE)
    assert "outside guest memory (65536 bytes)" in info.value.message
    assert rec.seen == []


def test_an_out_of_bounds_write_traps_and_writes_nothing(backend: Backend, bound: bool) -> None:
    def poke(caller: HostCaller, ptr: int) -> None:
        caller.write(ptr, b"\xff" * 8)

    rec = Recorder()
    defs = {**rec.defs(), "poke": (sig("i"), poke)}
    inst = instantiate(backend, CALLS, defs, bind=bound)
    with pytest.raises(CallTrap, match="8 bytes at 0xfffc are outside"):
        inst.call("poke", PAGE - 4)
    assert inst.memory.read(inst.store, PAGE - 4, PAGE) == bytearray(4)


def test_memory_growth_between_calls_is_seen(backend: Backend, bound: bool) -> None:
    rec = Recorder()
    inst = instantiate(backend, CALLS, rec.defs(), bind=bound)
    memory = backend.memory(inst.store, inst.memory)
    assert memory.size() == PAGE
    assert inst.call("peek", 16, 5) == 5  # the first data pointer is now known
    assert inst.call("grow", 3) == 1
    inst.call("store8", 4 * PAGE - 1, 7)
    assert inst.call("peek", 4 * PAGE - 1, 1) == 1
    assert rec.seen[-1] == b"\x07"
    assert rec.sizes == [PAGE, 4 * PAGE]
    assert memory.size() == 4 * PAGE
    assert memory.read(4 * PAGE - 1, 1) == b"\x07"


def test_memory_limit_makes_grow_fail_cleanly(backend: Backend) -> None:
    inst = instantiate(backend, CALLS, Recorder().defs())
    inst.store.set_limits(memory_size=2 * PAGE)
    assert inst.call("grow", 1) == 1
    assert inst.call("grow", 1) == -1
    assert backend.memory(inst.store, inst.memory).size() == 2 * PAGE


def test_guest_memory_outside_calls_is_bounds_checked(backend: Backend) -> None:
    inst = instantiate(backend, CALLS, Recorder().defs())
    memory = backend.memory(inst.store, inst.memory)
    memory.write(200, b"abc")
    assert memory.read(200, 3) == b"abc"
    assert memory.read(PAGE, 0) == b""
    with pytest.raises(MemoryRangeError):
        memory.read(PAGE - 1, 2)
    with pytest.raises(MemoryRangeError):
        memory.write(PAGE - 1, b"ab")
    assert memory.read(PAGE - 1, 1) == b"\0"


def test_a_host_caller_kept_past_its_call_refuses_to_work(backend: Backend) -> None:
    rec = Recorder()
    inst = instantiate(backend, CALLS, rec.defs())
    inst.call("peek", 16, 5)
    assert rec.caller is not None
    with pytest.raises(ValueError):
        rec.caller.read(16, 5)


def test_a_closed_store_is_refused(backend: Backend) -> None:
    inst = instantiate(backend, ARITH)
    add = inst.func("add")
    memory = backend.memory(inst.store, inst.memory)
    inst.store.close()
    with pytest.raises(ValueError):
        add(1, 2)
    with pytest.raises(ValueError):
        memory.read(0, 1)


def test_closed_host_functions_refuse_new_definitions_but_keep_working(
    backend: Backend,
) -> None:
    rec = Recorder()
    inst = instantiate(backend, CALLS, rec.defs(), bind=True)
    inst.host.close()
    inst.host.close()
    assert inst.call("peek", 16, 5) == 5  # now found through the export
    with pytest.raises(ValueError, match="closed"):
        inst.host.define("env", "more", sig(), lambda c: None)


def test_a_multi_line_host_error_still_comes_back_as_the_cause(backend: Backend) -> None:
    rec = Recorder()
    rec.raise_ = HostTrap("first line\n  second line")
    inst = instantiate(backend, CALLS, rec.defs())
    with pytest.raises(CallTrap) as info:
        inst.call("add", 1, 2)
    assert info.value.host_error is rec.raise_
    assert info.value.message == "first line\n  second line"


def test_host_functions_run_from_a_start_function_before_anything_is_bound(
    backend: Backend,
) -> None:
    wat = module(
        """
      (data (i32.const 8) "early")
      (func $start (drop (call $peek (i32.const 8) (i32.const 5))))
      (start $start)
    """,
        '(import "env" "peek" (func $peek (param i32 i32) (result i32)))',
    )
    rec = Recorder()
    instantiate(backend, wat, {"peek": (sig("ii", "i"), rec.peek)}, bind=True)
    assert rec.seen == [b"early"]


def test_defining_a_name_twice_is_refused(backend: Backend) -> None:
    live = set(fastcall._live_callbacks)
    host = backend.host(wasmtime.Linker(wasmtime.Engine()))
    host.define("env", "f", sig(), lambda c: None)
    with pytest.raises(wasmtime.WasmtimeError):
        host.define("env", "f", sig(), lambda c: None)
    assert len(set(fastcall._live_callbacks) - live) == (1 if backend is fastcall.FAST else 0)


def test_a_host_function_can_shadow_a_wasi_one(backend: Backend) -> None:
    # guest.py replaces WASI fd_write to turn stdout into log lines.
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    host = backend.host(linker)
    host.define("wasi_snapshot_preview1", "fd_write", sig("iiii", "i"), lambda c, *a: 99)
    wat = module(
        '(func (export "go") (result i32) (call $w (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)))',
        '(import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))',
    )
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    go = linker.instantiate(store, wasmtime.Module(engine, wat)).exports(store)["go"]
    assert isinstance(go, wasmtime.Func)
    assert backend.func(store, go)() == 99


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastcall, "_prefer_fast", True)  # restored after the test
    assert fastcall.backend(False) is fastcall.PUBLIC
    assert fastcall.backend() is (fastcall.FAST or fastcall.PUBLIC)
    monkeypatch.setenv("TINYWASM_FASTPATH", "0")  # only the CLI reads it
    assert fastcall.backend() is (fastcall.FAST or fastcall.PUBLIC)
    fastcall.prefer_fast_path(False)
    assert fastcall.backend() is fastcall.PUBLIC
    if fastcall.FAST is None:
        with pytest.raises(RuntimeError, match="unchecked C API"):
            fastcall.backend(True)
    else:
        assert fastcall.backend(True) is fastcall.FAST


def test_a_module_without_memory_traps_when_the_host_reads(backend: Backend) -> None:
    wat = """(module (import "env" "peek" (func $peek (param i32 i32) (result i32)))
      (func (export "peek") (result i32) (call $peek (i32.const 0) (i32.const 1))))"""
    inst = instantiate(backend, wat, {"peek": (sig("ii", "i"), Recorder().peek)})
    with pytest.raises(CallTrap, match="exports no memory"):
        inst.call("peek")


# -- threads, lifetime, leaks -------------------------------------------------------------


def test_host_faults_in_parallel_threads_each_come_back_to_their_own_call() -> None:
    # Only the fast path: wasmtime-py passes host exceptions through one global.
    if fastcall.FAST is None:
        pytest.skip("no unchecked C API")
    backend = fastcall.FAST
    engine = wasmtime.Engine()
    errors: list[str] = []

    def worker(tag: str) -> None:
        def fail(caller: HostCaller, a: int, b: int) -> int:
            raise HostTrap(f"{tag} {a}")

        defs: Defs = {**Recorder().defs(), "add": (sig("iI", "I"), fail)}
        inst = instantiate(backend, CALLS, defs, engine=engine)
        add = inst.func("add")
        for i in range(300):
            try:
                add(i, 0)
            except CallTrap as exc:
                if exc.message != f"{tag} {i}":
                    errors.append(f"{tag} {i}: {exc.message}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_linker_store_and_callbacks_are_freed_when_dropped(backend: Backend) -> None:
    # Callbacks live as long as wasmtime keeps them: they must not keep the linker alive.
    live = fastcall._live_callbacks
    before = set(live)
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    host = backend.host(linker)
    for name, (ty, fn) in Recorder().defs().items():
        host.define("env", name, ty, fn)
    store = wasmtime.Store(engine)
    exports = linker.instantiate(store, wasmtime.Module(engine, CALLS)).exports(store)
    memory = exports["memory"]
    assert isinstance(memory, wasmtime.Memory)
    host.bind(store, memory)
    ours = set(live) - before
    assert len(ours) == (3 if backend is fastcall.FAST else 0)
    peek = exports["peek"]
    assert isinstance(peek, wasmtime.Func)
    assert backend.func(store, peek)(16, 5) == 5
    refs: list[weakref.ref[object]] = [weakref.ref(linker), weakref.ref(store)]
    del linker, host, store, exports, memory, peek
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert not ours & set(live)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_many_trapping_calls_do_not_leak(backend: Backend) -> None:
    def fail(caller: HostCaller, a: int, b: int) -> int:
        raise HostTrap("nope")  # a new exception each time, as real faults are

    inst = instantiate(backend, CALLS, {**Recorder().defs(), "add": (sig("iI", "I"), fail)})
    traps = instantiate(backend, TRAPS)
    exits = instantiate(
        backend,
        module(
            '(func (export "quit") (call $exit (i32.const 1)))',
            '(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))',
        ),
        wasi=True,
    )
    calls = [(inst.func("add"), (1, 2)), (traps.func("unreachable"), ()), (exits.func("quit"), ())]

    def burst(n: int) -> None:
        trapped = 0
        for _ in range(n):
            for func, args in calls:
                try:
                    func(*args)
                except CallTrap:
                    trapped += 1
        assert trapped == n * len(calls)

    burst(1_000)  # warm up allocators and caches
    gc.collect()
    before = rss_kib()
    burst(10_000)
    gc.collect()
    grown = rss_kib() - before
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 30,000 trapping calls"
