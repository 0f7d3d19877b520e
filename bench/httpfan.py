"""Fan-out driven through HTTP, so any server that speaks the reference's interface can be measured.

The ``fan`` guest exports ``handle``: each ``GET /m/fan/<hex>`` broadcasts the
request text (``"GET\\n/m/fan/<hex>\\n"``) on ``fan.out`` with ``ws_broadcast`` and
answers 204. It imports only ``ws_broadcast`` and its ``malloc`` always returns the
same block, so it runs unchanged on our server and on the Go reference (which never
frees what it asks ``malloc`` for). `HttpPublisher` sends the bench's stamped payloads
(`bench.fanout.HEAD`: sequence number and send time) as that hex, pipelined on one
keep-alive connection at the asked rate; the clients of `bench.fanout` read them back from
the frames (``Target(in_path=True)``). With ``--workers N`` the publisher keeps a
connection that landed on the module's owner (``X-Tinywasm-Worker``), so a broadcast
costs one module call there, never an HTTP forward.

`ServerProcess` is a server under test in processes of its own: its CPU and memory
are read from /proc over the process and its descendants.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

from bench.common import process_cpu_s, process_rss_kib
from bench.fanout import OUT_TOPIC, Server, Target
from tests.wat import guest, write
from tinywasm_wasi.server import WORKER_HEADER

FAN = "fan"
# Only the import the guest uses: the reference's "env" has no unsubscribe.
FAN_IMPORTS = '\n  (import "env" "ws_broadcast" (func $ws_broadcast (param i32 i32 i32 i32)))\n'
FAN_ALLOCATOR = """
  (func (export "malloc") (param i32) (result i32) (i32.const 65536))
  (func (export "free") (param i32))
"""
FAN_WAT = guest(
    """
  (func (export "handle") (param $p i32) (param $n i32) (result i32)
    (call $ws_broadcast {dst} (local.get $p) (local.get $n))
    (i32.const 0))
""",
    {"dst": OUT_TOPIC},
    imports=FAN_IMPORTS,
    allocator=FAN_ALLOCATOR,
)
OWNER_TRIES = 64  # new connections tried before giving up on reaching the owner worker


def write_fan(directory: Path) -> Path:
    """The fan guest as ``directory/fan.wasm``."""
    return write(directory, FAN, FAN_WAT)


class HttpPublisher:
    """``GET /m/fan/<hex>`` pipelined on one keep-alive connection, for the publishing thread.

    `publish` only sends (open loop: a slow server shows as latency, not as a lower
    publish rate); a reader thread reads the answers, and `flush` waits until every
    request is answered. With `owner` (a worker name), connections are opened until one
    is answered by that worker, and that one is kept.
    """

    def __init__(self, port: int, owner: str | None = None, timeout: float = 30.0) -> None:
        self._timeout = timeout
        self._sent = 0
        self._answered = 0
        self._failures: list[str] = []
        self._buf = bytearray()
        self._cond = threading.Condition()
        for _ in range(OWNER_TRIES):
            self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            self._send("00" * 16)
            answered_by = self._read_answer()
            if owner is None or answered_by == owner:
                break
            self._sock.close()
        else:
            raise RuntimeError(f"{OWNER_TRIES} connections to port {port} never reached {owner}")
        self._answered = self._sent
        self._reader = threading.Thread(target=self._read_all, daemon=True)
        self._reader.start()

    def _send(self, stamp: str) -> None:
        self._sock.sendall(
            f"GET /m/{FAN}/{stamp} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii")
        )
        self._sent += 1

    def _read_answer(self) -> str:
        """One answer off the socket; returns its X-Tinywasm-Worker ("" if none)."""
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the publisher's connection")
            self._buf += data
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        size = int(fields.get("content-length", "0"))
        while len(self._buf) < end + 4 + size:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the publisher's connection")
            self._buf += data
        del self._buf[: end + 4 + size]
        status = head[0].split(" ", 2)
        if len(status) < 2 or status[1] not in ("200", "204"):
            self._failures.append(head[0])
        return fields.get(WORKER_HEADER.lower(), "")

    def _read_all(self) -> None:
        try:
            while True:
                self._read_answer()
                with self._cond:
                    self._answered += 1
                    self._cond.notify_all()
        except (OSError, ValueError) as exc:
            with self._cond:
                self._failures.append(f"{type(exc).__name__}: {exc}")
                self._cond.notify_all()

    def publish(self, payload: bytes) -> None:
        self._send(payload.hex())

    def flush(self) -> None:
        """Wait until every request sent has its answer; raise if any failed."""
        deadline = time.monotonic() + self._timeout
        with self._cond:
            while self._answered < self._sent and not self._failures:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._sent - self._answered} publishes unanswered")
                self._cond.wait(left)
        if self._failures:
            raise RuntimeError(f"publishing failed: {self._failures[:3]}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(5)


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


class ServerProcess:
    """CPU and memory of a server that runs as process `pid` and its descendants."""

    def __init__(self, pid: int, port: int, kind: str) -> None:
        self.pid, self.port, self.kind = pid, port, kind

    def pids(self) -> list[int]:
        return descendants(self.pid)

    def cpu_s(self) -> float:
        return sum(process_cpu_s(p) for p in self.pids())

    def rss_kib(self) -> int:
        return sum(process_rss_kib(p) for p in self.pids())

    def fan_server(self, publisher: HttpPublisher, clients: int) -> Server:
        """What `bench.fanout.drive` needs, for the fan guest on this server."""
        url = f"http://127.0.0.1:{self.port}/ws?topic={OUT_TOPIC}"

        def ready(connected: int) -> bool:
            return connected >= clients

        return Server(
            target=Target(self.kind, url, in_path=True),
            publish=publisher.publish,
            flush=publisher.flush,
            ready=ready,
            rss_kib=self.rss_kib,
            cpu_s=self.cpu_s,
            slow_disconnects=lambda: None,
        )
