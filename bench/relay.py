"""Browser → /ws → module → `ws_broadcast` → browser: the demo chat relay under load.

A real `WasiServer` on 127.0.0.1 loads the demo ``chat`` module
(``modules/dist/chat.wasm``: every message on bus topic ``chat`` is broadcast to
the WebSocket clients on ``chat``, wrapped as ``{"from", "data"}`` with its
sender since guest interface 2: the receiver unwraps it), with the per-connection
inbound rate limit off. A client process, separate from the server, holds one receiving
connection on ``/ws?topic=chat`` and S sending connections. The senders connect
with ``envelope=cbor`` to a topic nothing broadcasts to and publish CBOR
messages on ``chat``: a raw-frame sender would have to sit on ``chat`` itself
and would receive every broadcast too, turning the relay into a fan-out. Each
payload carries a sequence number and its send time (``time.monotonic_ns()``),
so the receiver records one latency per message.

Two phases, each with a fresh client process:

- **max**: send flat out, at most W messages in flight (sent, not yet
  received), until M messages or T seconds; messages/s relayed.
- **paced**: a fixed rate (1,000 messages/s) for N messages; p50/p99 latency.

    python -m bench.relay [--messages M] [--rate R] [--window W] [--record] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import struct
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Children,
    CpuSampler,
    Machine,
    add_common_flags,
    command_line,
    fail_on,
    markdown_grid,
    percentile,
    record,
)
from bus import Message, encode_message
from tinywasm_wasi.config import DEFAULT_MODULES_DIR, Config
from tinywasm_wasi.server import WasiServer

CHAT_WASM = DEFAULT_MODULES_DIR / "chat.wasm"
CHAT = "chat"  # the topic the demo module subscribes to and broadcasts on
QUIET = "bench.relay.senders"  # the senders' subscription: nothing is broadcast there
HEAD = struct.Struct("<QQ")  # sequence number, send time (monotonic ns)
PROBE = 2**64 - 1  # sequence number of the frames that check the path before a phase
PROBE_TIMEOUT = 10.0  # seconds for a probe to come back through the module

WRAP_HEAD, WRAP_DATA, WRAP_END = b'{"from":"', b'","data":"', b'"}'
ESCAPED = {ord('"'): b'"', ord("\\"): b"\\"}


def unwrap(line: bytes) -> bytes:
    """The payload inside chat's ``{"from":"...","data":"..."}`` line, unescaped.

    The demo chat names the sender of each browser message (guest interface 2) and
    escapes the payload as the inside of a JSON string: ``\\"``, ``\\\\`` and
    ``\\u00XX`` for control bytes; bytes from 0x80 up pass through. A line that is
    not wrapped (the server's own messages) is returned as it is.
    """
    if not (line.startswith(WRAP_HEAD) and line.endswith(WRAP_END)):
        return line
    start = line.index(WRAP_DATA) + len(WRAP_DATA)
    data, out, i = line[start : -len(WRAP_END)], bytearray(), 0
    while i < len(data):
        c = data[i]
        if c != 0x5C:  # not a backslash
            out.append(c)
            i += 1
        elif data[i + 1] == ord("u"):
            out.append(int(data[i + 2 : i + 6], 16))
            i += 6
        else:
            out += ESCAPED[data[i + 1]]
            i += 2
    return bytes(out)


STALL_TIMEOUT = 5.0  # seconds without a frame received before a phase gives up
CHILD_MARGIN = 30.0  # seconds a client process may take beyond its phase (spawn, connect)


@dataclass(frozen=True, slots=True)
class Phase:
    """One load pattern, run by one client process."""

    name: str
    messages: int
    rate: float  # messages/s; 0 = flat out, bounded by `window`
    window: int  # messages in flight (sent, not yet received) at most
    seconds: float  # sending stops after this long, whatever the count
    size: int  # payload bytes
    senders: int


# -- the client process ---------------------------------------------------------------------


async def relay_clients(url: str, phase: Phase) -> dict[str, Any]:
    """Connect the receiver and the senders, run `phase`, return what was received."""
    latencies = array("q")
    state = {"received": 0, "out_of_order": 0, "last_ns": 0, "probed": False}
    last_seq = [-1] * phase.senders  # order holds per sender: seq % senders is the sender
    progress = asyncio.Event()
    # The CBOR envelope ends with the payload, so a frame is a fixed prefix + the payload.
    pad = b"\0" * (phase.size - HEAD.size)
    prefix = encode_message(Message(topic=CHAT, payload=bytes(phase.size)))[: -phase.size]

    def frame(seq: int) -> bytes:
        return prefix + HEAD.pack(seq, time.monotonic_ns()) + pad

    async with aiohttp.ClientSession() as session:
        rx = await session.ws_connect(f"{url}/ws?topic={CHAT}", heartbeat=None, max_msg_size=0)
        txs = [
            await session.ws_connect(f"{url}/ws?topic={QUIET}&envelope=cbor", heartbeat=None)
            for _ in range(phase.senders)
        ]

        async def receive() -> None:
            async for msg in rx:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    continue
                now = time.monotonic_ns()
                seq, sent = HEAD.unpack_from(unwrap(msg.data))
                if seq == PROBE:
                    state["probed"] = True
                else:
                    latencies.append(now - sent)
                    state["received"] += 1
                    state["last_ns"] = now
                    if seq <= last_seq[seq % phase.senders]:
                        state["out_of_order"] += 1
                    last_seq[seq % phase.senders] = seq
                progress.set()

        receiver = asyncio.create_task(receive())
        try:
            # The path works (and the receiver is subscribed) once a probe comes back.
            async with asyncio.timeout(PROBE_TIMEOUT):
                while not state["probed"]:
                    await txs[0].send_bytes(frame(PROBE))
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)  # let the late probes through
            progress.clear()
            cpu_begun, first_ns = time.process_time(), time.monotonic_ns()
            sent = await _send(phase, txs, frame, state, progress)
            send_ns = time.monotonic_ns() - first_ns
            while state["received"] < sent:
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), STALL_TIMEOUT)
                except TimeoutError:
                    break
            cpu, ended_ns = time.process_time() - cpu_begun, time.monotonic_ns()
        finally:
            for ws in [*txs, rx]:
                await ws.close()  # closing rx ends the receiver's loop
            await asyncio.wait_for(receiver, STALL_TIMEOUT)
    return {
        "sent": sent,
        "send_ns": send_ns,
        "first_ns": first_ns,
        "ended_ns": ended_ns,
        "last_ns": state["last_ns"],
        "latencies": latencies.tobytes(),
        "out_of_order": state["out_of_order"],
        "cpu": cpu,
        "closed": {str(ws.close_code) for ws in [*txs, rx] if ws.close_code != 1000},
    }


async def _send(
    phase: Phase,
    txs: list[aiohttp.ClientWebSocketResponse],
    frame: Callable[[int], bytes],
    state: dict[str, Any],
    progress: asyncio.Event,
) -> int:
    """Send the phase's messages round-robin over `txs`; return how many were sent."""
    begun = time.monotonic_ns()
    deadline = begun + int(phase.seconds * 1e9)
    interval = 1e9 / phase.rate if phase.rate > 0 else 0.0
    seq = 0
    while seq < phase.messages and time.monotonic_ns() < deadline:
        if interval:
            ahead = begun + seq * interval - time.monotonic_ns()
            if ahead > 0:
                await asyncio.sleep(ahead / 1e9)
        if seq - state["received"] >= phase.window:
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), STALL_TIMEOUT)
            except TimeoutError:
                break
            continue
        await txs[seq % len(txs)].send_bytes(frame(seq))
        seq += 1
        if seq % 32 == 0:
            await asyncio.sleep(0)  # let the receiver run between bursts
    return seq


# -- the server process ---------------------------------------------------------------------


@dataclass(slots=True)
class PhaseResult:
    phase: Phase
    sent: int
    send_s: float
    span_s: float  # first send → last frame received
    latencies_ms: list[float] = field(repr=False)
    out_of_order: int
    closed: set[str]
    client_cpu_s: float
    server_cpu_s: float
    inbound_published: int
    inbound_refused: int
    module_delivered: int
    module_failed: int
    dropped: int


async def run(phases: list[Phase], modules_dir: Path) -> list[PhaseResult]:
    """Start the server, run each phase with its own client process, stop the server."""
    server = WasiServer(
        Config(
            host="127.0.0.1",
            port=0,
            modules_dir=modules_dir,
            ws_inbound=(CHAT,),
            ws_rate_limit=0,  # the limit guards real browsers; this is the load generator
            ws_queue_size=100_000,
            mailbox_size=100_000,
            watch=False,
            log_level="WARNING",
        )
    )
    await server.start()
    try:
        async with CpuSampler() as cpu:
            return await _phases(server, phases, cpu)
    finally:
        await server.stop()


async def _phases(server: WasiServer, phases: list[Phase], cpu: CpuSampler) -> list[PhaseResult]:
    """Run each phase with its own client process; the server is running."""
    if list(server.host.modules) != ["chat"]:
        raise RuntimeError(f"the chat module did not load: {server.host.refused}")
    chat = server.host.modules["chat"]
    results = []
    for phase in phases:
        hub0, bus0, mod0 = server.hub.stats(), server.bus.stats(), chat.counters.as_dict()
        (out,) = await asyncio.to_thread(_drive, server.url, phase)
        hub1, bus1 = server.hub.stats(), server.bus.stats()
        latencies = array("q")
        latencies.frombytes(out["latencies"])
        results.append(
            PhaseResult(
                phase=phase,
                sent=out["sent"],
                send_s=out["send_ns"] / 1e9,
                span_s=max(1, out["last_ns"] - out["first_ns"]) / 1e9,
                latencies_ms=sorted(v / 1e6 for v in latencies),
                out_of_order=out["out_of_order"],
                closed=out["closed"],
                client_cpu_s=out["cpu"],
                server_cpu_s=cpu.between(out["first_ns"], out["ended_ns"]),
                inbound_published=hub1.inbound_published - hub0.inbound_published,
                inbound_refused=hub1.inbound_refused - hub0.inbound_refused,
                module_delivered=chat.counters.delivered - mod0["delivered"],
                module_failed=chat.counters.failed - mod0["failed"],
                dropped=bus1.dropped - bus0.dropped,
            )
        )
    return results


def _drive(url: str, phase: Phase) -> list[Any]:
    """Run one client process to completion (blocking: call from a thread)."""
    with Children() as children:
        children.start(relay_clients, url, phase, name=f"bench-relay-{phase.name}")
        return children.results(phase.seconds + STALL_TIMEOUT + CHILD_MARGIN)


# -- report ---------------------------------------------------------------------------------


def rows(results: list[PhaseResult]) -> list[list[str]]:
    def line(metric: str, cell: Any) -> list[str]:
        return [metric, *(cell(r) for r in results)]

    def lat(r: PhaseResult) -> str:
        v = r.latencies_ms
        last = v[-1] if v else float("nan")
        return f"{percentile(v, 0.5):.2f} / {percentile(v, 0.99):.2f} / {last:.1f} ms"

    return [
        line("rate asked", lambda r: _rate(r.phase)),
        line("messages sent / received", lambda r: f"{r.sent:,} / {len(r.latencies_ms):,}"),
        line("sending took", lambda r: f"{r.send_s:.2f} s"),
        line("messages/s sent", lambda r: f"{r.sent / r.send_s:,.0f}"),
        line("messages/s relayed (first send → last frame)", lambda r: _relayed(r)),
        line("latency p50 / p99 / max", lat),
        line("server CPU per message", lambda r: _per_message(r.server_cpu_s, r)),
        line("client process CPU per message", lambda r: _per_message(r.client_cpu_s, r)),
        line(
            "inbound published / refused",
            lambda r: f"{r.inbound_published:,} / {r.inbound_refused:,}",
        ),
        line(
            "module deliveries / traps / bus drops",
            lambda r: f"{r.module_delivered:,} / {r.module_failed} / {r.dropped}",
        ),
        line("out of order / abnormal closes", lambda r: f"{r.out_of_order} / {_closes(r)}"),
    ]


def _rate(phase: Phase) -> str:
    if phase.rate > 0:
        return f"{phase.rate:,.0f}/s"
    return f"flat out, {phase.window:,} in flight"


def _relayed(r: PhaseResult) -> str:
    return f"{len(r.latencies_ms) / r.span_s:,.0f}"


def _per_message(cpu_s: float, r: PhaseResult) -> str:
    return f"{cpu_s / max(1, len(r.latencies_ms)) * 1e6:.0f} µs"


def _closes(r: PhaseResult) -> str:
    return ", ".join(sorted(r.closed)) or "none"


def problems(results: list[PhaseResult]) -> list[str]:
    found = []
    for r in results:
        missing = r.sent - len(r.latencies_ms)
        if missing:
            found.append(f"{r.phase.name}: {missing:,} message(s) not received")
        if r.inbound_refused or r.closed:
            found.append(
                f"{r.phase.name}: {r.inbound_refused} frame(s) refused, "
                f"closes {_closes(r)} (is the inbound rate limit off?)"
            )
        if r.module_failed or r.dropped:
            found.append(f"{r.phase.name}: {r.module_failed} trap(s), {r.dropped} bus drop(s)")
        if r.out_of_order:
            found.append(f"{r.phase.name}: {r.out_of_order} message(s) out of order")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--messages", type=int, default=20_000, help="max phase: messages (20000)")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="max phase: sending time limit, s (10)"
    )
    parser.add_argument("--window", type=int, default=100, help="max phase: in flight (100)")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced phase: msg/s (1000)")
    parser.add_argument(
        "--paced-messages", type=int, default=5_000, help="paced phase: messages (5000)"
    )
    parser.add_argument("--size", type=int, default=64, help="payload bytes, at least 16 (64)")
    parser.add_argument("--senders", type=int, default=1, help="sending connections (1)")
    add_common_flags(parser)
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.seconds, args.paced_messages = 500, 3.0, 300
    if not (1 <= args.messages <= 1_000_000 and 1 <= args.paced_messages <= 1_000_000):
        parser.error("--messages and --paced-messages must be 1..1000000")
    if not (0 < args.seconds <= 300 and 0 < args.rate <= 100_000 and args.window >= 1):
        parser.error("need 0 < --seconds <= 300, 0 < --rate <= 100000, --window >= 1")
    if not (1 <= args.senders <= 100 and HEAD.size <= args.size <= 65_536):
        parser.error(f"need 1 <= --senders <= 100 and {HEAD.size} <= --size <= 65536")
    if not CHAT_WASM.is_file():
        parser.error(
            f"{CHAT_WASM} is missing: build it with python -m cmd.tinywasm build modules/chat"
        )
    common = {"size": args.size, "senders": args.senders}
    phases = [
        Phase("max", args.messages, 0.0, args.window, args.seconds, **common),
        Phase(
            "paced",
            args.paced_messages,
            args.rate,
            1_000_000,  # no window: the rate alone paces
            args.paced_messages / args.rate * 2 + 1,
            **common,
        ),
    ]

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    machine = Machine.detect()
    print(f"# {machine.describe()}")
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        shutil.copy(CHAT_WASM, tmp)
        results = asyncio.run(run(phases, Path(tmp)))
    header = ["metric", *(p.name for p in phases)]
    table = rows(results)
    print(markdown_grid(header, table))
    fail_on(problems(results), "bench.relay")
    if args.record:
        record(
            "relay: browser → /ws → chat module → ws_broadcast → browser",
            command_line("bench.relay"),
            table,
            machine=machine,
            header=header,
        )


if __name__ == "__main__":
    main()
