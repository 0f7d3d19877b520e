"""A library of hostile and broken modules, built from inline WAT, for the isolation tests.

Each entry says what it does and what the server must report. They are written
against the limits in `LIMITS` (a small memory cap, a 50 ms call deadline, a
4 KiB payload cap, a 256 KiB file cap), which the tests pass to the server.

- `REFUSED`: files the server must refuse at load, with the reason it gives;
  `LOADED`: alarming but valid files that must load.
- `ON_MESSAGE`: modules that misbehave once per message on `TOPIC`, and what
  each message must add to their counters (a trap, a refusal, a suppressed log).
- `WILD_POINTERS` / `FD_WRITE_FAULTS`: one module each, trying a table of bad
  pointers and lengths on every host function, one entry per message (the
  payload's first byte picks the entry).
- `HTTP`, `DRAIN_LOOP`, `SAVE_STATE`, `RESTORE_STATE`: exports the host calls
  outside deliveries (an HTTP request, an unload, a hot swap).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tests.wat import ALLOCATOR, IMPORTS, binary, guest, padded
from tinywasm_wasi.config import DEFAULT_MODULES_DIR, KiB, MiB

TOPIC = "hostile"  # every message-triggered hostile module subscribes to it
PAGE = 64 * KiB
MEMORY = 2 * PAGE  # the memory of every hostile guest built with `guest()`
FLOOD = 3000  # publishes, broadcasts or log lines per call in the flood modules

LIMITS = {
    "memory_limit": 1 * MiB,
    "call_timeout": 0.05,
    "max_payload": 4 * KiB,
    "max_module_size": 256 * KiB,
}
MEMORY_LIMIT = LIMITS["memory_limit"]
MAX_PAYLOAD = LIMITS["max_payload"]
MAX_MODULE_SIZE = LIMITS["max_module_size"]
DEADLINE = "ran past its 50 ms deadline"
# A generous per-module deadline (limits.toml) for modules whose floods take longer than 50 ms.
SLOW_OK = "call_timeout = 10.0"

FD_WRITE = (
    '\n  (import "wasi_snapshot_preview1" "fd_write" '
    "(func $fd_write (param i32 i32 i32 i32) (result i32)))"
)
WASI_MORE = (
    '\n  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))'
    '\n  (import "wasi_snapshot_preview1" "random_get" '
    "(func $random_get (param i32 i32) (result i32)))"
    '\n  (import "wasi_snapshot_preview1" "poll_oneoff" '
    "(func $poll_oneoff (param i32 i32 i32 i32) (result i32)))"
)
SUBSCRIBE = '(func (export "init") (call $subscribe {topic} (i32.const 0)))'
LOOP = "(loop $forever (br $forever))"

# The healthy module: every ping comes back as a pong (through its own memory).
HEALTHY = binary(
    guest(
        SUBSCRIBE
        + """
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {pong} (local.get $p) (local.get $n)))
""",
        {"topic": "ping", "pong": "pong"},
    )
)


def on_message(
    code: str,
    strings: dict[str, str] | None = None,
    *,
    extra: str = "",
    local: str = "",
    imports: str = IMPORTS,
    allocator: str = ALLOCATOR,
    pages: int = 2,
) -> bytes:
    """A module subscribed to TOPIC whose on_message runs `code`; `extra` is more module fields."""
    body = (
        SUBSCRIBE
        + f'\n  (func (export "on_message") (param $p i32) (param $n i32) {local}\n    {code})'
        + f"\n  {extra}"
    )
    strings = {"topic": TOPIC, **(strings or {})}
    return binary(guest(body, strings, imports=imports, allocator=allocator, pages=pages))


def with_init(code: str) -> bytes:
    """A module whose init() runs `code`."""
    return binary(guest(f'(func (export "init") {code})'))


def allocator_with(malloc: str, free: str = "") -> str:
    """An allocator whose malloc runs `malloc` (leaving the pointer) and free runs `free`."""
    return (
        f'(func (export "malloc") (param $size i32) (result i32) {malloc})\n'
        f'  (func (export "free") (param $ptr i32) {free})'
    )


# -- refused at load ------------------------------------------------------------------------


@dataclass(frozen=True)
class BadFile:
    """A hostile file and text the reason it is refused with must contain (none: it loads)."""

    name: str
    what: str
    data: bytes
    reason: tuple[str, ...]


def _random(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


_VALID = (DEFAULT_MODULES_DIR / "receiver.wasm").read_bytes()
_BOMB = "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable"

REFUSED = [
    BadFile(
        "start_loop",
        "a (start) function that loops forever",
        binary(guest(f"(func $start {LOOP}) (start $start)")),
        ("start() [INTERRUPT]", DEADLINE),
    ),
    BadFile(
        "initialize_loop",
        "an _initialize that loops forever",
        binary(guest(f'(func (export "_initialize") {LOOP})')),
        ("_initialize() [INTERRUPT]", DEADLINE),
    ),
    BadFile(
        "underscore_start_loop",
        "a _start that loops forever",
        binary(guest(f'(func (export "_start") {LOOP})')),
        ("_start() [INTERRUPT]", DEADLINE),
    ),
    BadFile("init_loop", "an init() that loops forever", with_init(LOOP), ("init() [INTERRUPT]",)),
    BadFile(
        "init_unreachable", "a trap in init()", with_init("unreachable"), ("init() [UNREACHABLE]",)
    ),
    BadFile(
        "init_out_of_bounds",
        "an out-of-bounds load in init()",
        with_init("(drop (i32.load (i32.const -4)))"),
        ("init() [MEMORY_OUT_OF_BOUNDS]",),
    ),
    BadFile(
        "init_divide_by_zero",
        "a division by zero in init()",
        with_init("(drop (i32.div_u (i32.const 1) (i32.const 0)))"),
        ("init() [INTEGER_DIVISION_BY_ZERO]",),
    ),
    BadFile(
        "init_host_fault",
        "a bad pointer to publish from init()",
        with_init("(call $publish (i32.const -1) (i32.const 4) (i32.const 0) (i32.const 1))"),
        (
            "init() [host fault]",
            "publish: topic at 0xffffffff with length 4 is outside guest memory",
        ),
    ),
    BadFile(
        "init_recursion",
        "unbounded recursion in init()",
        binary(guest('(func $deeper (call $deeper)) (func (export "init") (call $deeper))')),
        ("init() [STACK_OVERFLOW]",),
    ),
    BadFile(
        "init_memory_bomb",
        "memory.grow in init() until it fails, then a trap",
        with_init(_BOMB),
        ("init() [UNREACHABLE]",),
    ),
    BadFile(
        "init_memory_bomb_forever",
        "memory.grow in init() forever, ignoring the failures",
        with_init("(loop $grow (drop (memory.grow (i32.const 1))) (br $grow))"),
        ("init() [INTERRUPT]",),
    ),
    BadFile(
        "huge_initial_memory",
        "an initial memory one page over the memory limit",
        binary(f'(module (memory (export "memory") {MEMORY_LIMIT // PAGE + 1}))'),
        ("cannot instantiate", "exceeds memory limits", f"over the {MEMORY_LIMIT} byte limit"),
    ),
    BadFile(
        "huge_initial_memory_4gib",
        "an initial memory of 4 GiB",
        binary('(module (memory (export "memory") 65536))'),
        ("cannot instantiate", "exceeds memory limits"),
    ),
    BadFile(
        "data_segment_out_of_bounds",
        "a data segment running past the end of memory",
        binary('(module (memory (export "memory") 1) (data (i32.const 65530) "0123456789"))'),
        ("start() [MEMORY_OUT_OF_BOUNDS]",),
    ),
    BadFile(
        "element_segment_out_of_bounds",
        "an element segment past the end of its table",
        binary(
            '(module (memory (export "memory") 1) (table 1 funcref) (func $f) '
            "(elem (i32.const 5) $f))"
        ),
        ("start() [TABLE_OUT_OF_BOUNDS]",),
    ),
    BadFile(
        "truncated",
        "a valid module (modules/dist/receiver.wasm) cut in half",
        _VALID[: len(_VALID) // 2],
        ("invalid WebAssembly",),
    ),
    BadFile(
        "truncated_header",
        "only the first 6 bytes of a module",
        _VALID[:6],
        ("invalid WebAssembly",),
    ),
    BadFile(
        "random_bytes",
        "4 KiB of random bytes",
        _random(1, 4 * KiB),
        ("not a WebAssembly binary", "no \\0asm magic"),
    ),
    BadFile(
        "random_after_header",
        "a valid header followed by 4 KiB of random bytes",
        _VALID[:8] + _random(2, 4 * KiB),
        ("invalid WebAssembly",),
    ),
    BadFile(
        "wrong_magic",
        "a valid module with its magic changed to \\0asn",
        b"\0asn" + _VALID[4:],
        ("not a WebAssembly binary",),
    ),
    BadFile(
        "wrong_version",
        "a valid module with binary version 2",
        _VALID[:4] + b"\x02\0\0\0" + _VALID[8:],
        ("invalid WebAssembly",),
    ),
    BadFile("empty", "an empty file", b"", ("empty",)),
    BadFile(
        "thousands_of_unknown_imports",
        "5000 imports the host does not provide",
        binary(
            "(module "
            + "".join(f'(import "env" "missing_{i}" (func))' for i in range(5000))
            + ' (memory (export "memory") 1))'
        ),
        ("unknown import env.missing_0",),
    ),
    BadFile(
        "over_max_module_size",
        "a valid module padded one byte over max_module_size",
        padded(HEALTHY, MAX_MODULE_SIZE + 1),
        (f"over the {MAX_MODULE_SIZE} byte limit for modules",),
    ),
    BadFile(
        "wrong_export_type",
        "on_message exported with i64 parameters",
        binary('(module (memory (export "memory") 1) (func (export "on_message") (param i64)))'),
        ("export 'on_message' has the wrong type",),
    ),
    BadFile(
        "no_memory",
        "no exported memory",
        binary('(module (func (export "init")))'),
        ("does not export its memory",),
    ),
    BadFile(
        "two_memories",
        "two memories (the store allows one)",
        binary('(module (memory 1) (memory (export "memory") 1))'),
        ("cannot instantiate", "memory count"),
    ),
]

# Files that look alarming but are valid and harmless: they load and the others keep serving.
LOADED = [
    BadFile(
        "thousands_of_imports",
        "5000 imports of env.log",
        binary(
            "(module "
            + "".join('(import "env" "log" (func (param i32 i32)))' for _ in range(5000))
            + ' (memory (export "memory") 1))'
        ),
        (),
    ),
    BadFile(
        "huge_maximum_memory",
        "a memory declared with a 4 GiB maximum (growth is still capped)",
        binary('(module (memory (export "memory") 1 65536))'),
        (),
    ),
]


# -- misbehaving once per message --------------------------------------------------------------


@dataclass(frozen=True)
class OnMessage:
    """A module that misbehaves on each message on TOPIC.

    `error`: text `last_error` must contain (empty: it must not trap).
    `counters`: what each message adds to these counters, exactly.
    """

    name: str
    what: str
    data: bytes
    error: tuple[str, ...] = ()
    counters: dict[str, int] = field(default_factory=dict)
    limits: str = ""  # its table in limits.toml
    log_flood: bool = False  # its log lines must be suppressed
    memory_bytes: int | None = None  # its memory size afterwards
    payload: bytes = b"boom"  # what each trigger sends


TRAP = {"delivered": 0, "failed": 1, "traps": 1, "interrupted": 0}
INTERRUPTED = {**TRAP, "interrupted": 1}
FINE = {"delivered": 1, "failed": 0, "traps": 0}

# 256 and 300 byte topics of valid characters, at 8192 (over the 255-byte cap).
_LONG = f'(data (i32.const 8192) "{"a" * 300}")'
# Invalid UTF-8 at 4000 (0xff 0xfe), 4004 (an overlong '/'), 4008 (a lone surrogate).
_NON_UTF8 = '(data (i32.const 4000) "\\ff\\fe") (data (i32.const 4004) "\\c0\\af") (data (i32.const 4008) "\\ed\\a0\\80")'
_ALL_FOUR = """
    (call $publish (i32.const {at}) (i32.const {n}) (i32.const 0) (i32.const 1))
    (call $subscribe (i32.const {at}) (i32.const {n}) (i32.const 0))
    (call $unsubscribe (i32.const {at}) (i32.const {n}))
    (call $ws_broadcast (i32.const {at}) (i32.const {n}) (i32.const 0) (i32.const 1))"""


def _repeat(times: int, code: str) -> str:
    """`code` run `times` times in a counted loop (local $i must be declared)."""
    return f"""(local.set $i (i32.const 0))
    (loop $again
      {code}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {times}))))"""


def _flood(code: str, strings: dict[str, str] | None = None, **options: str) -> bytes:
    """on_message runs `code` FLOOD times."""
    return on_message(_repeat(FLOOD, code), strings, local="(local $i i32)", **options)


_LINES = "x\\0a" * FLOOD  # FLOOD lines of "x", WAT-escaped


def _le32(value: int) -> str:
    return "".join(f"\\{b:02x}" for b in value.to_bytes(4, "little"))


ON_MESSAGE = [
    OnMessage(
        "loop_on_message",
        "an infinite loop in on_message",
        on_message(LOOP),
        ("on_message() [INTERRUPT]", DEADLINE),
        INTERRUPTED,
    ),
    OnMessage(
        "loop_on_topic_message",
        "an infinite loop in on_topic_message",
        binary(
            guest(
                SUBSCRIBE
                + '(func (export "on_topic_message") (param i32 i32 i32 i32) '
                + LOOP
                + ")",
                {"topic": TOPIC},
            )
        ),
        ("on_topic_message() [INTERRUPT]", DEADLINE),
        INTERRUPTED,
    ),
    OnMessage(
        "loop_malloc",
        "an infinite loop in malloc",
        on_message("nop", allocator=allocator_with(f"{LOOP} (i32.const 0)")),
        ("malloc() [INTERRUPT]", DEADLINE),
        INTERRUPTED,
    ),
    OnMessage(
        "loop_free",
        "an infinite loop in free (a 65 KiB message: the host frees blocks over 64 KiB)",
        on_message("nop", allocator=allocator_with("(i32.const 1024)", LOOP)),
        ("free() [INTERRUPT]", DEADLINE),
        INTERRUPTED,
        payload=bytes(65 * 1024),
    ),
    OnMessage(
        "recursion",
        "unbounded recursion in on_message",
        on_message("(call $deeper)", extra="(func $deeper (call $deeper))"),
        ("on_message() [STACK_OVERFLOW]",),
        TRAP,
    ),
    OnMessage(
        "memory_bomb",
        "memory.grow until it fails, then a trap",
        on_message(_BOMB),
        ("on_message() [UNREACHABLE]",),
        TRAP,
        memory_bytes=MEMORY_LIMIT,
    ),
    OnMessage(
        "memory_bomb_forever",
        "memory.grow forever, ignoring the failures",
        on_message("(loop $grow (drop (memory.grow (i32.const 1))) (br $grow))"),
        ("on_message() [INTERRUPT]", DEADLINE),
        INTERRUPTED,
        memory_bytes=MEMORY_LIMIT,
    ),
    OnMessage(
        "out_of_bounds_load",
        "a load from 0xfffffffc in on_message",
        on_message("(drop (i32.load (i32.const -4)))"),
        ("on_message() [MEMORY_OUT_OF_BOUNDS]",),
        TRAP,
    ),
    OnMessage(
        "malloc_garbage",
        "malloc returning 0xfffffff0",
        on_message("nop", allocator=allocator_with("(i32.const -16)")),
        ("malloc()", "returned 0xfffffff0, outside its memory"),
        TRAP,
    ),
    OnMessage(
        "malloc_zero",
        "malloc returning 0",
        on_message("nop", allocator=allocator_with("(i32.const 0)")),
        ("malloc()", "returned 0 for 256 bytes"),  # the smallest block the host keeps
        TRAP,
    ),
    OnMessage(
        "malloc_past_end",
        "malloc returning a block that runs 2 bytes past the end of memory",
        on_message("nop", allocator=allocator_with(f"(i32.const {MEMORY - 2})")),
        ("malloc()", f"returned {MEMORY - 2:#x}, outside its memory"),
        TRAP,
    ),
    OnMessage(
        "non_utf8_topics",
        "topics that are not UTF-8 (0xff 0xfe, an overlong '/', a lone surrogate) "
        "to publish, subscribe, unsubscribe and ws_broadcast; a non-UTF-8 log line",
        on_message(
            _ALL_FOUR.format(at=4000, n=2)
            + _ALL_FOUR.format(at=4004, n=2)
            + _ALL_FOUR.format(at=4008, n=3)
            + "(call $log (i32.const 4000) (i32.const 11))",
            extra=_NON_UTF8,
        ),
        (),
        {**FINE, "invalid_topics": 12},
    ),
    OnMessage(
        "publish_flood",
        f"{FLOOD} publishes per call",
        _flood("(call $publish {sink} (local.get $p) (local.get $n))", {"sink": "flood.sink"}),
        (),
        {**FINE, "published": FLOOD},
        limits=SLOW_OK,
    ),
    OnMessage(
        "broadcast_flood",
        f"{FLOOD} ws_broadcasts per call",
        _flood("(call $ws_broadcast {sink} (local.get $p) (local.get $n))", {"sink": "flood.sink"}),
        (),
        {**FINE, "broadcast": FLOOD},
        limits=SLOW_OK,
    ),
    OnMessage(
        "oversized_payload",
        f"a publish and a ws_broadcast of {MAX_PAYLOAD + 1} bytes (over max_payload)",
        on_message(
            f"(call $publish {{sink}} (i32.const 4096) (i32.const {MAX_PAYLOAD + 1}))"
            f"(call $ws_broadcast {{sink}} (i32.const 4096) (i32.const {MAX_PAYLOAD + 1}))",
            {"sink": "flood.sink"},
        ),
        (),
        {**FINE, "refused": 2, "published": 0, "broadcast": 0},
    ),
    OnMessage(
        "topic_over_255_bytes",
        "topics of 256 and 300 bytes to publish, subscribe, unsubscribe and ws_broadcast",
        on_message(
            _ALL_FOUR.format(at=8192, n=256) + _ALL_FOUR.format(at=8192, n=300), extra=_LONG
        ),
        (),
        {**FINE, "refused": 8, "invalid_topics": 0, "published": 0},
    ),
    OnMessage(
        "log_flood",
        f"{FLOOD} log lines per call",
        _flood("(call $log (local.get $p) (local.get $n))"),
        (),
        FINE,
        limits=SLOW_OK,
        log_flood=True,
    ),
    OnMessage(
        "stdout_flood",
        f"one fd_write of {FLOOD} lines to stdout per call",
        on_message(
            "(drop (call $fd_write (i32.const 1) (i32.const 512) (i32.const 1) (i32.const 520)))",
            extra=f'(data (i32.const 16384) "{_LINES}")'
            f'(data (i32.const 512) "{_le32(16384)}{_le32(2 * FLOOD)}")',
            imports=FD_WRITE + IMPORTS,
        ),
        (),
        FINE,
        limits=SLOW_OK,
        log_flood=True,
    ),
    OnMessage(
        "stderr_flood_calls",
        f"{FLOOD} fd_write calls of one line each to stderr per call",
        _flood(
            "(drop (call $fd_write (i32.const 2) (i32.const 512) (i32.const 1) (i32.const 520)))",
            imports=FD_WRITE + IMPORTS,
            extra=f'(data (i32.const 16384) "y\\0a") (data (i32.const 512) "{_le32(16384)}{_le32(2)}")',
        ),
        (),
        FINE,
        limits=SLOW_OK,
        log_flood=True,
    ),
    OnMessage(
        "proc_exit_in_handler",
        "proc_exit(7) from on_message",
        on_message("(call $proc_exit (i32.const 7))", imports=WASI_MORE + IMPORTS),
        ("on_message() [exit 7]", "proc_exit(7)"),
        TRAP,
    ),
    OnMessage(
        "wasi_bad_pointer",
        "random_get (wasmtime's own WASI) into 0xfffffff0",
        on_message(
            "(drop (call $random_get (i32.const -16) (i32.const 32)))", imports=WASI_MORE + IMPORTS
        ),
        ("on_message()", "out of bounds"),
        TRAP,
    ),
    OnMessage(
        "long_log_line",
        "a log line of 100000 bytes (cut to 4096)",
        on_message("(call $log (i32.const 0) (i32.const 100000))"),
        (),
        FINE,
    ),
]


# -- bad pointers and lengths to every host function ----------------------------------------------


@dataclass(frozen=True)
class WildPointer:
    """One bad (pointer, length) passed to one host function, and the fault it must give."""

    func: str
    what: str  # "topic", "payload" or "message"
    ptr: int
    length: int
    label: str

    @property
    def call(self) -> str:
        bad = f"(i32.const {self.ptr}) (i32.const {self.length})"
        good = "(i32.const 1024) (i32.const 2)"
        return {
            ("publish", "topic"): f"(call $publish {bad} {good})",
            ("publish", "payload"): f"(call $publish {good} {bad})",
            ("ws_broadcast", "topic"): f"(call $ws_broadcast {bad} {good})",
            ("ws_broadcast", "payload"): f"(call $ws_broadcast {good} {bad})",
            ("subscribe", "topic"): f"(call $subscribe {bad} (i32.const 0))",
            ("unsubscribe", "topic"): f"(call $unsubscribe {bad})",
            ("log", "message"): f"(call $log {bad})",
        }[self.func, self.what]

    @property
    def fault(self) -> str:
        """The exact host fault message."""
        length = self.length & 0xFFFFFFFF
        if self.func == "log":
            length = min(length, 4096)  # log lines are cut before they are read
        return (
            f"{self.func}: {self.what} at {self.ptr & 0xFFFFFFFF:#x} with length {length} "
            f"is outside guest memory ({MEMORY} bytes)"
        )


_VARIANTS = [
    ("negative pointer", -1, 4),
    ("pointer + length overflowing 32 bits", -16, 0x20),
    ("length running 1 byte past the end", MEMORY - 3, 4),
    ("pointer at the end", MEMORY, 1),
    ("pointer past the end", MEMORY + 4096, 1),
]
_LENGTHS = [
    ("negative length", 1024, -1),
    ("length of memory + 1", 0, MEMORY + 1),
    ("length overflowing 32 bits with the pointer", 0x10000, -0x10000 + 1),
]
_FIELDS = [
    ("publish", "topic"),
    ("publish", "payload"),
    ("ws_broadcast", "topic"),
    ("ws_broadcast", "payload"),
    ("subscribe", "topic"),
    ("unsubscribe", "topic"),
    ("log", "message"),
]
WILD_POINTERS = [
    WildPointer(func, what, ptr, length, label)
    for func, what in _FIELDS
    for label, ptr, length in _VARIANTS + ([] if func == "log" else _LENGTHS)
]
# log reads at most 4096 bytes, so these lengths go unchecked (see test_hostile.py).
LOG_WILD_LENGTHS = [WildPointer("log", "message", ptr, n, label) for label, ptr, n in _LENGTHS]


def dispatch(calls: list[str], imports: str = IMPORTS) -> bytes:
    """A module subscribed to TOPIC whose on_message runs `calls[payload[0]]`."""
    # $c0 is the innermost block: leaving it runs calls[0].
    blocks = "".join(f"(block $c{i} " for i in reversed(range(len(calls))))
    table = " ".join(f"$c{i}" for i in range(len(calls)))
    cases = "".join(f") {call} return" for call in calls)
    code = f"{blocks}(br_table {table} $c0 (i32.load8_u (local.get $p))){cases}"
    return on_message(code, {"ok": "ok"}, imports=imports)


def wild_pointers(entries: list[WildPointer]) -> bytes:
    """The module that makes `entries[i]`'s call on a message whose first byte is i."""
    return dispatch([e.call for e in entries])


@dataclass(frozen=True)
class FdWriteFault:
    """A bad fd_write: it must return `errno` (the guest traps otherwise), never trap."""

    label: str
    fd: int
    iovs: int
    count: int
    nwritten: int
    iovec: tuple[int, int] = (1024, 2)  # stored at 512 before the call
    errno: int = 21  # EFAULT

    @property
    def call(self) -> str:
        ptr, length = self.iovec
        return (
            f"(i32.store (i32.const 512) (i32.const {ptr}))"
            f"(i32.store (i32.const 516) (i32.const {length}))"
            f"(if (i32.ne (call $fd_write (i32.const {self.fd}) (i32.const {self.iovs}) "
            f"(i32.const {self.count}) (i32.const {self.nwritten})) (i32.const {self.errno})) "
            "(then unreachable))"
        )


FD_WRITE_FAULTS = [
    FdWriteFault("iovec array at a negative pointer", 1, -1, 1, 600),
    FdWriteFault("iovec array running past the end", 1, MEMORY - 4, 1, 600),
    FdWriteFault("iovec count of 2^31-1 (over IOV_MAX: EINVAL)", 1, 512, 0x7FFFFFFF, 600, errno=28),
    FdWriteFault("negative iovec count (EINVAL)", 1, 512, -1, 600, errno=28),
    FdWriteFault("buffer running past the end", 1, 512, 1, 600, (MEMORY - 2, 4)),
    FdWriteFault("buffer at a negative pointer", 2, 512, 1, 600, (-1, 1)),
    FdWriteFault("buffer pointer + length overflowing", 2, 512, 1, 600, (-16, 0x20)),
    FdWriteFault("nwritten at a negative pointer", 1, 512, 1, -1),
    FdWriteFault("nwritten running past the end", 1, 512, 1, MEMORY - 2),
    FdWriteFault("file descriptor 3 (EBADF)", 3, 512, 1, 600, errno=8),
    FdWriteFault("file descriptor -1 (EBADF)", -1, 512, 1, 600, errno=8),
]


def fd_write_faults(entries: list[FdWriteFault]) -> bytes:
    return dispatch([e.call for e in entries], imports=FD_WRITE + IMPORTS)


# -- exports the host calls outside deliveries -------------------------------------------------


@dataclass(frozen=True)
class Http:
    """A module whose HTTP export misbehaves.

    `GET /m/<name>` must answer `status` with `answer` in the body, and the
    module's `last_error` must contain `error`.
    """

    name: str
    what: str
    data: bytes
    status: int
    answer: str
    error: tuple[str, ...]
    interrupted: bool = False


def _http(export: str, result: str) -> bytes:
    returns = "i64" if export == "handle_http" else "i32"
    return binary(guest(f'(func (export "{export}") (param i32 i32) (result {returns}) {result})'))


HTTP = [
    Http(
        "loop_handle",
        "an infinite loop in handle",
        _http("handle", f"{LOOP} (i32.const 0)"),
        504,
        "module 'loop_handle' did not answer within 50 ms",
        ("handle() [INTERRUPT]", DEADLINE),
        interrupted=True,
    ),
    Http(
        "loop_handle_http",
        "an infinite loop in handle_http",
        _http("handle_http", f"{LOOP} (i64.const 0)"),
        504,
        "module 'loop_handle_http' did not answer within 50 ms",
        ("handle_http() [INTERRUPT]", DEADLINE),
        interrupted=True,
    ),
    Http(
        "handle_garbage",
        "handle returning 0xfffffff0",
        _http("handle", "(i32.const -16)"),
        500,
        "returned 0xfffffff0, outside its memory",
        ("handle()", "returned 0xfffffff0, outside its memory"),
    ),
    Http(
        "handle_http_out_of_bounds",
        "handle_http returning 16 bytes at 0xffff0000",
        _http("handle_http", "(i64.const 0xffff000000000010)"),
        500,
        "returned 0xffff0000+16, outside its memory",
        ("handle_http() [host fault]", "returned 0xffff0000+16, outside its memory"),
    ),
    Http(
        "handle_http_too_long",
        "handle_http returning 4 GiB - 1 bytes at 0",
        _http("handle_http", "(i64.const 0x00000000ffffffff)"),
        500,
        "returned 4294967295 bytes, over the",
        ("handle_http()", "returned 4294967295 bytes, over the"),
    ),
]

DRAIN_LOOP = binary(guest(f'(func (export "drain") (result i32) {LOOP} (i32.const 0))'))


def relay(version: int, extra: str = "") -> bytes:
    """A well-behaved module on TOPIC: it broadcasts each payload on "relay.<version>"."""
    return on_message(
        "(call $ws_broadcast {out} (local.get $p) (local.get $n))",
        {"out": f"relay.{version}"},
        extra=extra,
    )


SAVE_STATE = [
    (
        "loop_save_state",
        "an infinite loop in save_state",
        f'(func (export "save_state") (result i64) {LOOP} (i64.const 0))',
        ("save_state() [INTERRUPT]",),
    ),
    (
        "save_state_out_of_bounds",
        "save_state returning 16 bytes at 0xffff0000",
        '(func (export "save_state") (result i64) (i64.const 0xffff000000000010))',
        ("save_state()", "returned 0xffff0000+16, outside its memory"),
    ),
    (
        "save_state_too_long",
        "save_state returning 4 GiB - 1 bytes",
        '(func (export "save_state") (result i64) (i64.const 0x00000000ffffffff))',
        ("save_state()", "returned 4294967295 bytes, over the"),
    ),
]
RESTORE_STATE = [
    (
        "loop_restore_state",
        "an infinite loop in restore_state",
        f'(func (export "restore_state") (param i32 i32) {LOOP})',
        ("restore_state() [INTERRUPT]",),
    ),
    (
        "trap_restore_state",
        "a trap in restore_state",
        '(func (export "restore_state") (param i32 i32) unreachable)',
        ("restore_state() [UNREACHABLE]",),
    ),
]
# save_state's state: 5 bytes at 3000.
STATE = '(func (export "save_state") (result i64) (i64.const 0x00000bb800000005))'

# A table bomb: grows a table by 10 million entries (80 MB of host memory) on each message,
# and broadcasts what table.grow returned on "table.grow".
TABLE_BOMB = on_message(
    "(i32.store (i32.const 600) (table.grow $t (ref.null func) (i32.const 10000000)))"
    "(call $ws_broadcast {out} (i32.const 600) (i32.const 4))",
    {"out": "table.grow"},
    extra="(table $t 0 funcref)",
)


def sleeper(seconds: float) -> bytes:
    """A module whose init() sleeps `seconds` in WASI poll_oneoff (a relative clock wait)."""
    # The subscription at 2048: userdata, tag 0 (clock), clock id 1, timeout (ns), precision.
    return binary(
        guest(
            f"""(func (export "init")
      (i32.store8 (i32.const 2056) (i32.const 0))
      (i32.store (i32.const 2064) (i32.const 1))
      (i64.store (i32.const 2072) (i64.const {int(seconds * 1e9)}))
      (drop (call $poll_oneoff (i32.const 2048) (i32.const 4096) (i32.const 1) (i32.const 8192))))""",
            imports=WASI_MORE + IMPORTS,
        )
    )
