"""``--workers 2`` as a user runs it: a supervisor, two worker processes, an embedded nats-server.

Real processes on loopback: the example modules (chat, echo, echo_http) in a folder of
their own, ``echo_http`` declared ``replicas = "all"``. The kernel spreads connections
over the workers (SO_REUSEPORT); each answer names its worker in ``X-Tinywasm-Worker``,
so the test opens connections until it has one on each.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import eventually
from tinywasm_wasi.cluster.nats_server import NatsServerProcess, find_nats_server
from tinywasm_wasi.policy.placement import owner, worker_names
from tinywasm_wasi.server import WORKER_HEADER

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "modules" / "dist"
START = 90.0  # seconds for the workers to serve: two interpreters starting on a busy machine
PICK_TRIES = 200  # connections opened, at most, to find one on each worker

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(find_nats_server() is None, reason="nats-server is not installed"),
]


class Cluster:
    """The supervisor's process and what its (and its workers') log said."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._changed:
            return sum(1 for line in self.lines if regex.search(line))

    def find(self, pattern: str) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self._changed:
            return [m for line in self.lines if (m := regex.search(line))]

    def close(self) -> None:
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start ``--workers 2`` (plus `extra` flags) on the example modules; stopped after."""
    started: list[Cluster] = []

    def start(*extra: str) -> Cluster:
        modules = tmp_path / "modules"
        modules.mkdir()
        for name in ("chat", "echo", "echo_http"):
            shutil.copy(EXAMPLES / f"{name}.wasm", modules)
        (modules / "limits.toml").write_text('[echo_http]\nreplicas = "all"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYWASM_")}
        env.update(TINYWASM_SERVER="wasi", TINYWASM_CACHE_DIR=str(tmp_path / "cache"))
        command = [sys.executable, "-m", "cmd.tinywasm", "--workers", "2", "--port", "0"]
        command += ["--modules-dir", str(modules), "--no-watch", "--drain-timeout", "1", *extra]
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        started.append(Cluster(proc))
        return started[-1]

    yield start
    for running in started:
        proc = running.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        running.close()


@pytest.fixture
def cluster(start_cluster: ClusterFactory) -> Cluster:
    return start_cluster()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(force_close=True)  # every request a new connection
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def serving(cluster: Cluster, workers: int) -> str:
    """Wait until `workers` workers serve; return the base URL."""
    await eventually(
        lambda: (
            cluster.count(r"\] serving \d+ module") >= workers or cluster.proc.poll() is not None
        ),
        "the workers to serve",
        timeout=START,
    )
    assert cluster.proc.poll() is None, cluster.log()
    port = cluster.find(r"supervising 2 workers on http://127\.0\.0\.1:(\d+)")[0].group(1)
    return f"http://127.0.0.1:{port}"


async def chat_on_each_worker(
    http: aiohttp.ClientSession, base: str
) -> dict[str, aiohttp.ClientWebSocketResponse]:
    """One chat WebSocket on each worker (the others opened on the way are closed)."""
    found: dict[str, aiohttp.ClientWebSocketResponse] = {}
    for _ in range(PICK_TRIES):
        ws = await http.ws_connect(f"{base}/ws?topic=chat")
        worker = ws._response.headers[WORKER_HEADER]
        if worker in found:
            await ws.close()
        else:
            found[worker] = ws
        if len(found) == 2:
            return found
    raise AssertionError(f"{PICK_TRIES} connections all went to {list(found)}")


async def answers_by_worker(
    http: aiohttp.ClientSession, url: str, method: str = "GET"
) -> dict[str, tuple[int, str]]:
    """`method` `url` on new connections until both workers have answered."""
    seen: dict[str, tuple[int, str]] = {}
    for _ in range(PICK_TRIES):
        async with http.request(method, url) as response:
            seen[response.headers[WORKER_HEADER]] = (response.status, await response.text())
        if len(seen) == 2:
            return seen
    raise AssertionError(f"{PICK_TRIES} requests all went to {list(seen)}")


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 15.0) -> bytes:
    async with asyncio.timeout(timeout):
        msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    return bytes(msg.data)


async def chat_works(sockets: dict[str, aiohttp.ClientWebSocketResponse], text: str) -> None:
    """A frame from each worker's browser reaches both browsers, once."""
    for sender in sorted(sockets):
        payload = f"{text} from {sender}".encode()
        await sockets[sender].send_bytes(payload)
        for worker in sorted(sockets):
            assert await receive(sockets[worker]) == payload, worker


async def test_two_workers_share_the_port_the_chat_and_the_modules(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    base = await serving(cluster, 2)
    names = worker_names(2)
    chat_owner, echo_owner = owner("chat", names), owner("echo", names)

    # Browsers on different workers see each other's chat: the chat module runs on
    # its owner only; the other worker's browser publishes and receives over NATS.
    sockets = await chat_on_each_worker(http, base)
    await chat_works(sockets, "hello")

    # echo runs on its owner only and answers through either worker, same status and body.
    for worker, (status, text) in (await answers_by_worker(http, f"{base}/m/echo")).items():
        assert (status, text) == (200, "echo: GET /m/echo\n"), worker
    # echo_http (replicas = "all") runs in both and answers where the request landed.
    for worker, (status, _text) in (await answers_by_worker(http, f"{base}/m/echo_http")).items():
        assert status == 200, worker
    for worker, (status, text) in (await answers_by_worker(http, f"{base}/api/modules")).items():
        assert status == 200
        loaded = set(re.findall(r'"name": "(\w+)"', text))
        assert "echo_http" in loaded, worker
        assert ("echo" in loaded) is (worker == echo_owner), (worker, loaded)
        assert ("chat" in loaded) is (worker == chat_owner), (worker, loaded)

    # Reload is the owner's: another worker says which one (421).
    reloads = await answers_by_worker(http, f"{base}/api/modules/echo/reload", "POST")
    for worker, (status, text) in reloads.items():
        if worker == echo_owner:
            assert status == 200, text
        else:
            assert status == 421 and f"runs on worker {echo_owner}" in text, text

    # kill -9 the chat owner: the supervisor restarts it; the other worker's browser
    # stays connected and gets the chat again once the owner is back.
    pid = int(cluster.find(rf"worker {chat_owner} started \(pid (\d+)\)")[-1].group(1))
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    await eventually(
        lambda: cluster.count(rf"\[{chat_owner}\] serving") >= 2, "the restart", timeout=START
    )
    back_in = time.monotonic() - killed
    assert cluster.count(rf"worker {chat_owner} \(pid {pid}\) died with signal 9") == 1
    survivor_name = next(w for w in names if w != chat_owner)
    survivor = sockets[survivor_name]
    assert not survivor.closed
    await sockets[chat_owner].close()
    fresh = await chat_on_each_worker(http, base)
    await fresh[survivor_name].close()
    sockets = {survivor_name: survivor, chat_owner: fresh[chat_owner]}
    await chat_works(sockets, "again")
    print(f"chat owner back {back_in:.2f} s after kill -9")

    # SIGTERM: every worker drains and closes its browsers with 1001, then all exit.
    cluster.proc.send_signal(signal.SIGTERM)
    for ws in sockets.values():
        async with asyncio.timeout(30):
            msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
    await asyncio.to_thread(cluster.proc.wait, 30)
    assert cluster.proc.returncode == 0, cluster.log()
    log = cluster.log()
    assert log.count("] closed") == 2 and log.rstrip().endswith("tinywasm.supervisor: closed")


async def health_of_each_worker(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    return {
        worker: text
        for worker, (_status, text) in (await answers_by_worker(http, f"{base}/healthz")).items()
    }


async def test_workers_joined_to_a_nats_server_that_restarts(
    start_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    # --nats joins a server of ours: the supervisor starts none. While it is away,
    # each worker keeps serving its own browsers; when it is back, the chat crosses again.
    with NatsServerProcess() as nats:
        cluster = start_cluster("--nats", nats.url)
        base = await serving(cluster, 2)
        assert cluster.count("embedded nats-server") == 0
        chat_owner = owner("chat", worker_names(2))
        sockets = await chat_on_each_worker(http, base)
        other = next(w for w in sockets if w != chat_owner)
        await chat_works(sockets, "before")

        nats.stop()

        async def both_degraded() -> bool:
            health = await health_of_each_worker(http, base)
            return all('"degraded"' in text for text in health.values())

        await eventually(both_degraded, "both workers to say degraded", timeout=30)
        # The chat owner's own browser still gets the chat: local delivery never waits.
        await sockets[chat_owner].send_bytes(b"during")
        assert await receive(sockets[chat_owner]) == b"during"

        nats.start()

        async def both_ok() -> bool:
            health = await health_of_each_worker(http, base)
            return all('"ok"' in text for text in health.values())

        await eventually(both_ok, "both workers to reconnect", timeout=60)
        # Held messages may arrive first (once each, in order); then new ones cross again.
        for sender in (chat_owner, other):
            payload = f"after from {sender}".encode()
            await sockets[sender].send_bytes(payload)
            for worker in (chat_owner, other):
                got = await receive(sockets[worker])
                while got == b"during" and worker == other:
                    got = await receive(sockets[worker])
                assert got == payload, (worker, got)
