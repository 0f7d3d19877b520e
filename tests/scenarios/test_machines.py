"""A fleet of two machines on one NATS: two supervisors, each with its own node name,
modules folder and port, joined to one real nats-server on loopback.

Machine ``alpha`` has chat, echo, echo_http and alpha_only; machine ``beta`` has
chat, echo (another version of the file), echo_http and beta_only. Each module runs
exactly once in the fleet, and only on a worker that has its file; either port
answers for every module and carries the chat both ways. A third supervisor that
reuses the node name ``alpha`` is refused and stops. When beta stops, beta_only
runs nowhere, and alpha says so; what beta ran that alpha has files for moves to
alpha with its state.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.scenarios.cluster import (
    EXAMPLES,
    NEEDS_NATS,
    START,
    Cluster,
    answers_by_worker,
    http,
    launch,
    receive,
    serving,
    stop,
    workers_of,
)
from tests.support import eventually
from tinywasm_wasi.cluster.nats_server import NatsServerProcess
from tinywasm_wasi.server import WORKER_HEADER

__all__ = ["http"]  # a fixture, used by name

pytestmark = [
    pytest.mark.timeout(400),
    NEEDS_NATS,
]

ALPHA, BETA = workers_of(2, "alpha"), workers_of(2, "beta")
SINGLE = ("alpha_only", "beta_only", "chat", "echo")  # echo_http runs on every worker
# A custom section (id 0, 3 bytes: name "v2") makes another version of the same module.
ANOTHER_VERSION = b"\x00\x03\x02v2"


@pytest.fixture
def nats_url() -> Iterator[str]:
    with NatsServerProcess(name="fleet") as server:
        yield server.url


@pytest.fixture
async def machines(tmp_path: Path, nats_url: str) -> AsyncIterator[dict[str, Cluster]]:
    """alpha and beta, each with its own folder and port, on one NATS."""
    started: dict[str, Cluster] = {}
    for node, only, echo in (("alpha", "alpha_only", b""), ("beta", "beta_only", ANOTHER_VERSION)):
        modules = tmp_path / node
        modules.mkdir()
        for name in ("chat", "echo_http"):
            shutil.copy(EXAMPLES / f"{name}.wasm", modules)
        (modules / "echo.wasm").write_bytes((EXAMPLES / "echo.wasm").read_bytes() + echo)
        shutil.copy(EXAMPLES / "echo.wasm", modules / f"{only}.wasm")
        (modules / "limits.toml").write_text('[echo_http]\nreplicas = "all"\n')
        state = tmp_path / f"{node}-state"
        started[node] = launch(
            modules,
            tmp_path / f"{node}-cache",
            *("--nats", nats_url, "--node", node, "--state-dir", str(state)),
        )
    try:
        yield started
    finally:
        for running in started.values():
            stop(running)


async def fleets(http: aiohttp.ClientSession, base: str) -> dict[str, dict[str, Any]]:
    """The ``fleet`` of /api/modules, as each of the 2 workers on `base`'s port answers it."""
    answers = await answers_by_worker(http, f"{base}/api/modules")
    return {worker: json.loads(text)["fleet"] for worker, (_status, text) in answers.items()}


def runs(fleet: dict[str, Any]) -> dict[str, list[str]]:
    """module -> the live workers that say they run it alone."""
    where: dict[str, list[str]] = {}
    for worker, row in fleet["workers"].items():
        if row["state"] == "live":
            for name in row["owned"]:
                where.setdefault(name, []).append(worker)
    return where


def placed_once(fleet: dict[str, Any]) -> bool:
    where = runs(fleet)
    return (
        fleet["live"] == sorted(ALPHA + BETA)
        and sorted(where) == sorted(SINGLE)
        and all(len(workers) == 1 for workers in where.values())
    )


async def test_two_machines_on_one_nats_run_each_module_once_where_its_file_is(
    machines: dict[str, Cluster], http: aiohttp.ClientSession, tmp_path: Path, nats_url: str
) -> None:
    alpha, beta = machines["alpha"], machines["beta"]
    bases = {"alpha": await serving(alpha, 2), "beta": await serving(beta, 2)}

    # /api/modules on either machine shows all 4 workers, and each module once.
    async def agreed() -> bool:
        seen = [f for base in bases.values() for f in (await fleets(http, base)).values()]
        return (
            all(placed_once(f) for f in seen)
            and len({json.dumps(runs(f), sort_keys=True) for f in seen}) == 1
        )

    await eventually(agreed, "both machines to agree on one placement", timeout=60)
    fleet = next(iter((await fleets(http, bases["alpha"])).values()))
    where = {name: workers[0] for name, workers in runs(fleet).items()}
    assert where["alpha_only"] in ALPHA, where  # only where its file is
    assert where["beta_only"] in BETA, where
    for worker in ALPHA + BETA:
        assert fleet["workers"][worker]["replicas"] == ["echo_http"], fleet
        files = fleet["workers"][worker]["files"]
        assert sorted(files) == sorted(
            ["chat", "echo", "echo_http", "alpha_only" if worker in ALPHA else "beta_only"]
        ), (worker, files)
    # The two versions of echo are visible; each worker runs its own file.
    differing = fleet["differing"]
    assert list(differing) == ["echo"], differing
    assert sorted(sorted(w) for w in differing["echo"].values()) == [list(ALPHA), list(BETA)]
    assert alpha.count(r"module echo: its file differs between workers") >= 1, alpha.log()

    # HTTP for each machine's own module through the other machine's port.
    for base, name in ((bases["alpha"], "beta_only"), (bases["beta"], "alpha_only")):
        answers = await answers_by_worker(http, f"{base}/m/{name}")
        for worker, (status, text) in answers.items():
            assert (status, text) == (200, f"echo: GET /m/{name}\n"), (worker, text)

    # Reload of beta's module asked on alpha: relayed to the worker that runs it.
    async with http.post(f"{bases['alpha']}/api/modules/beta_only/reload") as response:
        assert response.status == 200, await response.text()
        assert response.headers["X-Tinywasm-Owner"] == where["beta_only"]

    # A browser on alpha and one on beta see each other's chat.
    sockets = {node: await http.ws_connect(f"{base}/ws?topic=chat") for node, base in bases.items()}
    for sender in ("alpha", "beta"):
        payload = f"hello from {sender}".encode()
        await sockets[sender].send_bytes(payload)
        for node, ws in sockets.items():
            line = await receive(ws)
            assert payload in line, (node, line)

    # A third machine that reuses the node name alpha is refused and stops; the fleet
    # does not notice it.
    clash_dir = tmp_path / "clash"
    shutil.copytree(tmp_path / "alpha", clash_dir)
    clash = launch(clash_dir, tmp_path / "clash-cache", "--nats", nats_url, "--node", "alpha")
    try:
        await eventually(lambda: clash.proc.poll() is not None, "the clash to stop", timeout=START)
        assert clash.proc.returncode == 1, clash.log()
        assert clash.count(r"worker name alpha-w\d is taken") >= 1, clash.log()
        assert clash.count(r"give each machine of the fleet its own --node") >= 1, clash.log()
        assert clash.count(r"\] serving") == 0, clash.log()
    finally:
        stop(clash)
    for f in (await fleets(http, bases["alpha"])).values():
        assert placed_once(f) and f["clashes"] == [], f
    # Its supervisor's stop-all reached alpha's workers under their names: ignored, it
    # is not their parent (otherwise they would not hand anything over below).
    assert alpha.count(r"ignoring a stop-all from supervisor pid") >= 1, alpha.log()

    # beta stops: what it ran and alpha has a file for is handed to alpha with its
    # state; beta_only runs nowhere, and alpha says so.
    for ws in sockets.values():
        await ws.close()
    stop(beta)
    assert beta.proc.returncode == 0, beta.log()
    for name in ("chat", "echo"):
        if where[name] in BETA:
            assert beta.count(rf"module {name} handed over to alpha-w\d") == 1, beta.log()
            assert alpha.count(rf"module {name} taken over from {where[name]}") == 1
    assert beta.count(r"no other live worker outside node beta has the file of beta_only")

    async def beta_gone() -> dict[str, Any] | None:
        seen = list((await fleets(http, bases["alpha"])).values())
        done = all(
            f["live"] == list(ALPHA)
            and f["nowhere"].get("beta_only") in BETA
            and sorted(runs(f)) == ["alpha_only", "chat", "echo"]
            for f in seen
        )
        return seen[0] if done else None

    await eventually(beta_gone, "alpha to take over what it can", timeout=60)
    await eventually(
        lambda: alpha.count(r"module beta_only runs nowhere: beta-w\d, the last worker") >= 1,
        "the log line",
    )
    for worker, (status, _text) in (
        await answers_by_worker(http, f"{bases['alpha']}/m/echo")
    ).items():
        assert status == 200, worker
    answers = await answers_by_worker(http, f"{bases['alpha']}/m/beta_only")
    for worker, (status, text) in answers.items():
        assert status == 503 and "runs nowhere" in text, (worker, status, text)
    async with http.get(f"{bases['alpha']}/healthz") as response:
        assert response.headers[WORKER_HEADER] in ALPHA
