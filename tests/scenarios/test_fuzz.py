"""Fuzzing the loader and the host functions with hypothesis (bounded in time).

- Random bytes and mutated valid modules at `Runtime.compile_module` and through
  `ModuleHost` staging: each either loads or is refused with a reason; nothing
  crashes or hangs, and a healthy module loaded beside them keeps answering.
- Random pointers and lengths at every host function, through a module that
  passes its parameters straight to the import: the call succeeds with exactly
  the bytes of guest memory in range, is refused over a cap, or traps with the
  message naming the function; the host never reads outside guest memory.
- Two modules side by side: what one writes or traps on never shows in the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bus import Bus
from tests.conftest import Broadcasts
from tests.scenarios.hostile import FD_WRITE, HEALTHY, ON_MESSAGE, REFUSED
from tests.support import eventually
from tests.wat import IMPORTS, binary, guest
from tinywasm_wasi.config import DEFAULT_MODULES_DIR
from tinywasm_wasi.exceptions import GuestTrap, ModuleLoadError
from tinywasm_wasi.policy.history import Outcome, Trigger
from tinywasm_wasi.policy.limits import MAX_LOG_LINE, Limits
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.runtime.guest import Guest
from tinywasm_wasi.supervisor.host import ModuleHost

pytestmark = pytest.mark.timeout(60)

U32 = 0xFFFFFFFF
MEM = 65536  # the pass-through module's memory: one page
MAX_PAYLOAD = 4096
# No fuzz test is about deadlines: a generous call_timeout keeps a busy machine from
# turning a slow store32 into a deadline trap.
LIMITS = Limits(memory_limit=1024 * 1024, call_timeout=2.0, max_payload=MAX_PAYLOAD)
FAST = settings(
    max_examples=300,
    deadline=None,  # what is asserted is the outcome; time under a loaded machine is not
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SLOW = settings(FAST, max_examples=40)

# -- the loader -------------------------------------------------------------------------------

SEEDS = [p.read_bytes() for p in sorted(DEFAULT_MODULES_DIR.glob("*.wasm"))] + [
    HEALTHY,
    *(c.data for c in ON_MESSAGE[:6]),
    *(c.data for c in REFUSED[:4]),
]
REASONS = (
    "empty",
    "not a WebAssembly binary",
    "invalid WebAssembly",
    "unknown import",
    "import ",
    "module does not export its memory",
    "export ",
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid module (an example, the healthy or a hostile one) with a few mutations."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        kind = draw(
            st.sampled_from(["flip"] * 4 + ["truncate", "splice", "overwrite", "insert", "cut"])
        )
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            data[at:] = other[draw(st.integers(0, len(other))) :]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


HEADER = b"\0asm\x01\0\0\0"
files = st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=2048).map(lambda tail: HEADER + tail),
    mutated(),
    mutated(),
)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    runtime = Runtime()
    yield runtime
    runtime.close()


@FAST
@given(data=files)
def test_any_bytes_compile_or_are_refused_with_a_reason(runtime: Runtime, data: bytes) -> None:
    try:
        compiled = runtime.compile_module("fuzz", data)
    except ModuleLoadError as exc:
        assert str(exc).startswith(REASONS), str(exc)
        event(f"refused: {str(exc)[:24]}")
        return
    event("compiled")
    assert compiled.size == len(data)
    assert "memory" in compiled.interface.exports


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[tuple[ModuleHost, Broadcasts]]:
    """A ModuleHost with the healthy module loaded (ping -> pong), small limits."""
    broadcasts = Broadcasts()
    (tmp_path / "healthy.wasm").write_bytes(HEALTHY)
    (tmp_path / "limits.toml").write_text("[healthy]\ncall_timeout = 2.0\n")
    host = ModuleHost(
        Runtime(),
        Bus(),
        broadcasts,
        mailbox_size=1000,
        drain_timeout=0.2,
        probation=0.0,
        limits=LIMITS,
        max_module_size=64 * 1024,
        quarantine=(10_000, 60.0),
    )
    await host.load_dir(tmp_path)
    assert list(host.modules) == ["healthy"]
    yield host, broadcasts
    await host.stop()
    host.runtime.close()


async def healthy_answers(host: ModuleHost, broadcasts: Broadcasts, tag: bytes) -> None:
    host.bus.publish("ping", tag)
    await eventually(lambda: tag in broadcasts.on("pong"), f"the healthy module's pong {tag!r}")


@settings(SLOW, max_examples=60)
@given(data=st.one_of(mutated(), st.binary(max_size=256)))
async def test_staging_any_bytes_loads_or_refuses_and_the_healthy_module_keeps_answering(
    host: tuple[ModuleHost, Broadcasts], data: bytes
) -> None:
    modules, broadcasts = host
    record = await modules.swap("fuzzed", Trigger.API, lambda: data)
    assert record is not None
    event(record.outcome.value if record.error is None else f"refused: {record.error[:24]}")
    if record.outcome is Outcome.LOADED:
        assert "fuzzed" in modules.modules
        unload = await modules.swap("fuzzed", Trigger.API, lambda: None)
        assert unload is not None and unload.outcome is Outcome.UNLOADED
    else:
        assert record.outcome is Outcome.REFUSED
        assert record.error, "refused without a reason"
        assert modules.refused["fuzzed"] == record.error
    assert list(modules.modules) == ["healthy"]
    await healthy_answers(modules, broadcasts, b"after %d bytes" % len(data))


# -- host functions ---------------------------------------------------------------------------

PASS_THROUGH = binary(
    f"""(module {FD_WRITE}{IMPORTS}
  (memory (export "memory") 1)
  ;; memory[i] = i % 251, so any range's expected bytes are known
  (func (export "init") (local $i i32)
    (loop $fill
      (i32.store8 (local.get $i) (i32.rem_u (local.get $i) (i32.const 251)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const {MEM})))))
  (func (export "call_publish") (param i32 i32 i32 i32)
    (call $publish (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "call_ws_broadcast") (param i32 i32 i32 i32)
    (call $ws_broadcast (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "call_subscribe") (param i32 i32 i32)
    (call $subscribe (local.get 0) (local.get 1) (local.get 2)))
  (func (export "call_unsubscribe") (param i32 i32)
    (call $unsubscribe (local.get 0) (local.get 1)))
  (func (export "call_log") (param i32 i32) (call $log (local.get 0) (local.get 1)))
  (func (export "call_fd_write") (param i32 i32 i32 i32) (result i32)
    (call $fd_write (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "store32") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
  (func (export "load32") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
)"""
)
PATTERN = bytes(i % 251 for i in range(MEM))


class Recorder:
    """The GuestEffects side of a Guest: records what the host functions passed on."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def publish(self, topic: bytes, payload: bytes) -> None:
        self.calls.append(("publish", topic, payload))

    def broadcast(self, topic: bytes, payload: bytes) -> None:
        self.calls.append(("ws_broadcast", topic, payload))

    def subscribe(self, pattern: bytes) -> None:
        self.calls.append(("subscribe", pattern))

    def unsubscribe(self, pattern: bytes) -> None:
        self.calls.append(("unsubscribe", pattern))

    def log(self, line: str, *, stream: str) -> None:
        self.calls.append(("log", line, stream))

    def refuse(self, call: str, reason: str) -> None:
        self.calls.append(("refuse", call))


def instance(runtime: Runtime) -> tuple[Guest, Recorder]:
    """A started instance of the pass-through module (its memory holds PATTERN)."""
    compiled = runtime.compile_module("fuzz", PASS_THROUGH)
    recorder = Recorder()
    guest_ = Guest("fuzz", runtime.engine, compiled.module, compiled.interface, recorder, LIMITS)
    guest_.start()
    return guest_, recorder


@pytest.fixture(scope="module")
def pass_through(runtime: Runtime) -> Iterator[tuple[Guest, Recorder]]:
    """Shared by the tests that only read its memory."""
    pair = instance(runtime)
    yield pair
    pair[0].close()


@pytest.fixture(scope="module")
def writable(runtime: Runtime) -> Iterator[tuple[Guest, Recorder]]:
    """For the fd_write test, which writes iovecs and counts into its memory."""
    pair = instance(runtime)
    yield pair
    pair[0].close()


EDGES = [0, 1, 2, 255, 256, 4095, 4096, 4097, MEM - 2, MEM - 1, MEM, MEM + 1]
EDGES += [-1, -2, -16, -MEM, 2**31 - 1, -(2**31)]
pointers = st.one_of(
    st.sampled_from(EDGES), st.integers(0, MEM + 8), st.integers(-(2**31), 2**31 - 1)
)
lengths = st.one_of(st.sampled_from(EDGES), st.integers(0, 300), st.integers(-(2**31), 2**31 - 1))


def fault(func: str, what: str, ptr: int, length: int) -> str:
    return (
        f"module 'fuzz' trapped in call_{func}() [host fault]: {func}: {what} at "
        f"{ptr & U32:#x} with length {length & U32} is outside guest memory ({MEM} bytes)"
    )


def run(pass_through: tuple[Guest, Recorder], func: str, *args: int) -> tuple[Any, ...]:
    """Call the pass-through export; ("trap", message) or ("ok", what the host passed on)."""
    guest_, recorder = pass_through
    recorder.calls.clear()
    try:
        guest_.call(f"call_{func}", *args)
    except GuestTrap as exc:
        assert not recorder.calls, "a trapping call passed something on"
        return ("trap", str(exc))
    return ("ok", *recorder.calls)


def topic_call(func: str, tp: int, tl: int, pp: int = 0, pl: int = 0) -> tuple[Any, ...]:
    """What the host must do for `func` with a topic range and a payload range."""
    t, n, p, m = tp & U32, tl & U32, pp & U32, pl & U32
    if t + n > MEM:
        return ("trap", fault(func, "topic", tp, tl))
    if p + m > MEM:
        return ("trap", fault(func, "payload", pp, pl))
    if n > 255 or m > MAX_PAYLOAD:
        return ("ok", ("refuse", func))
    if func in ("subscribe", "unsubscribe"):
        return ("ok", (func, PATTERN[t : t + n]))
    return ("ok", (func, PATTERN[t : t + n], PATTERN[p : p + m]))


@FAST
@given(func=st.sampled_from(["publish", "ws_broadcast"]), args=st.tuples(*[pointers, lengths] * 2))
def test_publish_and_ws_broadcast_read_exactly_guest_memory_or_trap(
    pass_through: tuple[Guest, Recorder], func: str, args: tuple[int, int, int, int]
) -> None:
    assert run(pass_through, func, *args) == topic_call(func, *args)


@FAST
@given(ptr=pointers, length=lengths, handler=st.integers(-(2**31), 2**31 - 1))
def test_subscribe_reads_exactly_guest_memory_or_traps(
    pass_through: tuple[Guest, Recorder], ptr: int, length: int, handler: int
) -> None:
    assert run(pass_through, "subscribe", ptr, length, handler) == topic_call(
        "subscribe", ptr, length
    )


@FAST
@given(ptr=pointers, length=lengths)
def test_unsubscribe_reads_exactly_guest_memory_or_traps(
    pass_through: tuple[Guest, Recorder], ptr: int, length: int
) -> None:
    assert run(pass_through, "unsubscribe", ptr, length) == topic_call("unsubscribe", ptr, length)


@FAST
@given(ptr=pointers, length=lengths)
def test_log_reads_exactly_guest_memory_or_traps(
    pass_through: tuple[Guest, Recorder], ptr: int, length: int
) -> None:
    p, n = ptr & U32, length & U32
    cut = min(n, MAX_LOG_LINE)  # a longer line is cut, but the whole range must be in memory
    got = run(pass_through, "log", ptr, length)
    if p + n > MEM:
        assert got == ("trap", fault("log", "message", ptr, length))
    else:
        line = ("log", PATTERN[p : p + cut].decode("utf-8", "replace"), "log")
        # A cut line is also reported as refused (counted, with a warning).
        assert got == (("ok", ("refuse", "log"), line) if n > MAX_LOG_LINE else ("ok", line))


iovecs = st.lists(st.tuples(pointers, st.one_of(st.integers(0, 600), lengths)), max_size=4)


@FAST
@given(
    fd=st.sampled_from([0, 1, 2, 3, -1]),
    iovs=st.one_of(st.sampled_from([512, MEM - 8, MEM - 4, -1, -8]), pointers),
    count=st.one_of(st.integers(0, 5), lengths),
    nwritten=st.one_of(st.sampled_from([600, MEM - 4, MEM - 3, -1]), pointers),
    table=iovecs,
)
def test_fd_write_returns_the_right_errno_and_never_traps(
    writable: tuple[Guest, Recorder],
    fd: int,
    iovs: int,
    count: int,
    nwritten: int,
    table: list[tuple[int, int]],
) -> None:
    guest_, _recorder = writable
    guest_.call("init")  # the pattern again: earlier examples wrote iovecs and counts
    memory = bytearray(PATTERN)
    base = iovs & U32
    for i, (ptr, length) in enumerate(table):  # the iovecs, where they fit
        for offset, value in ((0, ptr), (4, length)):
            at = base + 8 * i + offset
            if at + 4 <= MEM:
                guest_.call("store32", at, value)
                memory[at : at + 4] = (value & U32).to_bytes(4, "little")
    # WASI: EBADF for other descriptors, EINVAL for more than IOV_MAX (1024) iovecs,
    # EFAULT for any range outside memory.
    errno, total = 0, 0
    n, w = count & U32, nwritten & U32
    if fd not in (1, 2):
        errno = 8
    elif n > 1024:
        errno = 28
    elif base + 8 * n > MEM or w + 4 > MEM:
        errno = 21
    else:
        for i in range(n):
            entry = memory[base + 8 * i : base + 8 * i + 8]
            ptr, length = int.from_bytes(entry[:4], "little"), int.from_bytes(entry[4:], "little")
            if ptr + length > MEM:
                errno = 21
                break
            total += length
    try:
        result = guest_.call("call_fd_write", fd, iovs, count, nwritten)
    except GuestTrap as exc:
        pytest.fail(f"fd_write trapped instead of returning an errno: {exc}")
    assert result == errno
    if errno == 0:
        assert guest_.call("load32", nwritten) & U32 == total


# -- no leak between modules ------------------------------------------------------------------

ops = st.tuples(
    st.sampled_from(["left", "right"]),
    st.sampled_from(["store", "trap", "grow"]),
    st.integers(0, MEM - 4),
    st.integers(-(2**31), 2**31 - 1),
)


@pytest.fixture(scope="module")
def two_instances(runtime: Runtime) -> Iterator[dict[str, Guest]]:
    """Two instances of the same compiled pass-through module."""
    pair = {name: instance(runtime)[0] for name in ("left", "right")}
    yield pair
    for guest_ in pair.values():
        guest_.close()


@FAST
@given(actions=st.lists(ops, max_size=12))
def test_two_instances_of_one_module_share_nothing(
    two_instances: dict[str, Guest], actions: list[tuple[str, str, int, int]]
) -> None:
    memory = {}
    for name, guest_ in two_instances.items():
        guest_.call("init")
        memory[name] = bytearray(PATTERN)
    for name, op, at, value in actions:
        guest_ = two_instances[name]
        if op == "store":
            guest_.call("store32", at, value)
            memory[name][at : at + 4] = (value & U32).to_bytes(4, "little")
        elif op == "trap":
            with pytest.raises(GuestTrap, match="outside guest memory"):
                guest_.call("call_publish", -1, 4, at, 1)
        else:
            guest_.call("grow", 1)
    for name, guest_ in two_instances.items():
        touched = {at for _n, op, at, _v in actions if op == "store"}
        for at in touched:
            want = int.from_bytes(memory[name][at : at + 4], "little")
            assert guest_.call("load32", at) & U32 == want, (name, at)


def side(topic: str) -> bytes:
    """A module on `topic`; each message is [op, addr lo, addr hi, value].

    op 0 stores value at 8192 + addr % 4096, 1 broadcasts that byte on "<topic>.peek",
    2 passes a bad pointer to publish (host fault), 3 traps, 4 grows memory by a page.
    """
    return binary(
        guest(
            """
  (func (export "init") (call $subscribe {topic} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32) (local $at i32)
    (local.set $at
      (i32.add (i32.const 8192) (i32.and (i32.load16_u offset=1 (local.get $p)) (i32.const 4095))))
    (block $peek (block $store (block $unreachable (block $fault (block $grow
      (br_table $store $peek $fault $unreachable $grow (i32.load8_u (local.get $p))))
      (drop (memory.grow (i32.const 1))) return)
      (call $publish (i32.const -1) (i32.const 4) (i32.const 0) (i32.const 1)) return)
      unreachable)
      (i32.store8 (local.get $at) (i32.load8_u offset=3 (local.get $p))) return)
    (call $ws_broadcast {peek} (local.get $at) (i32.const 1)))
""",
            {"topic": topic, "peek": f"{topic}.peek"},
        )
    )


SIDES = {"left": side("left"), "right": side("right")}
messages = st.lists(
    st.tuples(
        st.sampled_from(["left", "right"]),
        st.sampled_from([0, 0, 0, 2, 3, 4]),
        st.integers(0, 4095),
        st.integers(0, 255),
    ),
    max_size=20,
)


@SLOW
@given(actions=messages)
async def test_a_module_never_sees_another_modules_writes_or_traps(
    host: tuple[ModuleHost, Broadcasts], actions: list[tuple[str, int, int, int]]
) -> None:
    modules, broadcasts = host
    for name, data in SIDES.items():  # fresh instances for each example
        await modules.swap(name, Trigger.API, lambda: None)
        record = await modules.swap(name, Trigger.API, lambda data=data: data)
        assert record is not None and record.outcome is Outcome.LOADED
    broadcasts.items.clear()
    stored: dict[str, dict[int, int]] = {"left": {}, "right": {}}
    traps = {"left": 0, "right": 0}
    for name, op, at, value in actions:
        modules.bus.publish(name, bytes([op, at & 0xFF, at >> 8, value]))
        if op == 0:
            stored[name][at] = value
        elif op in (2, 3):
            traps[name] += 1
    touched = sorted({at for _n, op, at, _v in actions if op == 0})
    for name in SIDES:  # read back every touched byte from both
        for at in touched:
            modules.bus.publish(name, bytes([1, at & 0xFF, at >> 8, 0]))
    assert await modules.quiesce(10)
    for name in SIDES:
        counters = modules.modules[name].counters
        assert counters.traps == traps[name]
        assert counters.delivered == len(actions) + len(touched) - traps[name] - sum(
            1 for n, *_ in actions if n != name
        )
        # untouched bytes are 0: the other module's stores never show here
        want = [bytes([stored[name].get(at, 0)]) for at in touched]
        assert broadcasts.on(f"{name}.peek") == want
