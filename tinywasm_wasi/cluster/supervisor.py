"""``--workers N``: N worker processes on one port, joined over NATS, kept running.

The supervisor runs no modules itself. It:

1. starts a real nats-server on 127.0.0.1 and a free port (`NatsServerProcess`),
   unless ``--nats URL`` names one to join;
2. picks the port (a free one for ``--port 0``) and starts workers ``<node>-w0``
   … ``<node>-w{N-1}`` (``--node``, by default the host's short name, keeps them
   apart from another machine's workers on the same NATS): the same command line,
   plus ``--port``, ``--worker-index``, ``--node`` and ``--nats``. Each listens
   on the port with SO_REUSEPORT, so the kernel spreads connections over them, and
   runs the modules placement gives it (policy/placement.py);
3. restarts a worker that dies, under the same index, after a backoff that
   doubles while it keeps dying (policy/restart.py); its modules come back with it.
   A worker that cannot listen at its first start, or whose name another live
   process already has (`WORKER_ID_TAKEN`), stops them all: exit status 1;
4. on SIGTERM or SIGINT, sends SIGTERM to every worker (each drains its modules
   and closes its browsers with 1001), waits for them (killing one that takes
   longer than the drain timeout plus `STOP_MARGIN`), then stops nats-server;
5. on SIGHUP, or a request on ``tw.ctl.restart.<node>`` (``tinywasm restart --rolling``),
   replaces the workers one at a time (`rolling_restart`): SIGTERM to one, which
   hands its modules to the others before it exits (web/handover.py); it is
   started again at once, takes its modules back, says it is ready on
   ``tw.ctl.ready``, and only then is the next one stopped.

It writes where it is (pid, NATS URL, port, node) to ``supervisor.json`` in the
state folder, for ``tinywasm restart``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from tinywasm_wasi.cluster.nats_server import (
    NatsServerError,
    NatsServerProcess,
    free_port,
    port_taken,
)
from tinywasm_wasi.config import WORKER_CANNOT_LISTEN, WORKER_ID_TAKEN, Config
from tinywasm_wasi.policy.placement import worker_name
from tinywasm_wasi.policy.restart import restart_delay
from tinywasm_wasi.supervisor.state_dir import StateDir
from tinywasm_wasi.web.handover import READY_SUBJECT, stopping_request, subject_for

__all__ = ["RESTART_SUBJECT", "STATUS_FILE", "STOP_MARGIN", "Supervisor", "restart_subject"]

RESTART_SUBJECT = "tw.ctl.restart"  # + .<node>: a rolling restart (`tinywasm restart --rolling`)
STATUS_FILE = "supervisor.json"  # in the state folder: pid, NATS URL, port, workers
READY_TIMEOUT = 120.0  # seconds a restarted worker has to listen and take its modules back

log = logging.getLogger("tinywasm.supervisor")

STOP_MARGIN = 10.0  # seconds a worker gets past --drain-timeout to exit on SIGTERM


def restart_subject(node: str) -> str:
    """Where the supervisor of `node` takes rolling restart requests."""
    return f"{RESTART_SUBJECT}.{node}" if node else RESTART_SUBJECT


class Supervisor:
    """Starts, restarts and stops the workers (and the embedded nats-server)."""

    def __init__(self, config: Config, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.config = config
        self._argv = list(argv)
        self._env = dict(env)
        self._stopping = asyncio.Event()
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._replacing: int | None = None  # the worker a rolling restart is replacing
        self._ready: dict[str, asyncio.Event] = {}
        self._rolling: asyncio.Task[dict[str, Any]] | None = None
        self._nc: Client | None = None
        self._status = 0  # the exit status: 1 once a worker could not listen at start

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status."""
        return asyncio.run(self._main())

    async def _main(self) -> int:
        config = self.config
        nats: NatsServerProcess | None = None
        taken = port_taken(config.host, config.port) if config.port else None
        if taken is not None:
            # Workers listen with SO_REUSEPORT, so a second fleet on the port would share
            # it silently: the kernel would spread its clients over both fleets.
            log.error(
                "cannot listen on %s:%d (%s): another server or --workers fleet listens "
                "there; stop it, or choose another port with --port / TINYWASM_PORT",
                config.host,
                config.port,
                taken.strerror or taken,
            )
            return 1
        if config.nats:
            urls = ",".join(config.nats)
        else:
            try:
                nats = NatsServerProcess(name="tinywasm-embedded")
                urls = await asyncio.to_thread(nats.start)
            except NatsServerError as exc:
                log.error("cannot start the embedded nats-server: %s", exc)
                return 1
            log.info("embedded nats-server on %s", urls)
        port = config.port or free_port(config.host)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._start_rolling)
        await self._connect(urls)
        state = StateDir(config.state_path, create_parents=config.state_dir is not None)
        status = {
            "pid": os.getpid(),
            "nats": urls,
            "port": port,
            "workers": config.workers,
            "node": config.node,
        }
        state.write(STATUS_FILE, json.dumps(status).encode())
        log.info(
            "supervising %d workers on http://%s:%d (NATS %s, node %s)",
            config.workers,
            config.host,
            port,
            urls,
            config.node or "unnamed",
        )
        try:
            keepers = [
                asyncio.create_task(self._keep(i, port, urls), name=f"worker {self._name(i)}")
                for i in range(config.workers)
            ]
            await self._stopping.wait()
            log.info("closing: stopping %d workers", len(self._procs))
            await self._tell_stopping()
            await self._stop_all()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            state.remove(STATUS_FILE)
            if self._nc is not None:
                with contextlib.suppress(NatsError, TimeoutError, OSError):
                    await self._nc.close()
            if nats is not None:
                await asyncio.to_thread(nats.stop)
        log.info("closed")
        return self._status

    def _name(self, index: int) -> str:
        return worker_name(index, self.config.node)

    def _command(self, index: int, port: int, urls: str) -> list[str]:
        extra = ["--port", str(port), "--worker-index", str(index), "--nats", urls]
        if self.config.node:
            extra += ["--node", self.config.node]
        return [sys.executable, "-m", "tinywasm_wasi", *self._argv, *extra]

    async def _keep(self, index: int, port: int, urls: str) -> None:
        """Run worker `index`; start it again whenever it dies, until the supervisor stops."""
        name = self._name(index)
        deaths = 0
        first = True
        while not self._stopping.is_set():
            begun = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self._command(index, port, urls),
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                process_group=0,  # a terminal's Ctrl-C is the supervisor's to pass on
            )
            self._procs[index] = proc
            log.info("worker %s started (pid %d)", name, proc.pid)
            code = await proc.wait()
            if self._stopping.is_set():
                return
            if first and code == WORKER_CANNOT_LISTEN:
                # The port is taken (its line above says so): restarting cannot help.
                log.error(
                    "worker %s cannot listen on port %d: stopping every worker; free the "
                    "port or choose another with --port / TINYWASM_PORT",
                    name,
                    port,
                )
                self._status = 1
                self._stopping.set()
                return
            if code == WORKER_ID_TAKEN:
                # Another machine runs a worker under this name (its line above says so).
                log.error(
                    "worker %s: its name is taken by another live process on NATS %s: "
                    "stopping every worker; give each machine of the fleet its own "
                    "--node / TINYWASM_NODE",
                    name,
                    urls,
                )
                self._status = 1
                self._stopping.set()
                return
            first = False
            if self._replacing == index or code == 0:
                # Stopped on purpose (a rolling restart, or SIGTERM to this worker alone):
                # it handed its modules over first; it comes back at once and takes them back.
                log.info("worker %s stopped (status %d): starting it again", name, code)
                continue
            delay, deaths = restart_delay(deaths, time.monotonic() - begun)
            self.restarts += 1
            how = f"signal {-code}" if code < 0 else f"status {code}"
            log.error(
                "worker %s (pid %d) died with %s: what it had in flight is lost; "
                "restarting it in %.1f s (restart %d)",
                name,
                proc.pid,
                how,
                delay,
                self.restarts,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    # -- rolling restart ------------------------------------------------------------------------

    async def _connect(self, urls: str) -> None:
        """The supervisor's own NATS connection: workers' ready messages, restart requests."""
        try:
            self._nc = await nats.connect(urls.split(","), name="tinywasm-supervisor")
        except (TimeoutError, NatsError, OSError) as exc:
            log.warning("no NATS connection for rolling restarts: %s", exc)
            return
        await self._nc.subscribe(READY_SUBJECT, cb=self._on_ready)
        await self._nc.subscribe(restart_subject(self.config.node), cb=self._on_restart)

    async def _tell_stopping(self) -> None:
        """Every worker stops: none of them hands its modules to another of them (only to
        another node's workers, in a fleet of machines)."""
        nc = self._nc
        if nc is None:
            return
        names = [self._name(i) for i in range(self.config.workers)]
        request = stopping_request(self.config.node, os.getpid())
        await asyncio.gather(
            *(nc.request(subject_for(name), request, timeout=2) for name in names),
            return_exceptions=True,  # a worker that does not answer is stopped all the same
        )

    async def _on_ready(self, msg: Msg) -> None:
        name = msg.data.decode(errors="replace")
        self._ready.setdefault(name, asyncio.Event()).set()

    async def _on_restart(self, msg: Msg) -> None:
        self._start_rolling()
        assert self._rolling is not None
        try:
            report = await asyncio.shield(self._rolling)
        except Exception as exc:  # the restart itself logs
            report = {"ok": False, "error": str(exc)}
        with contextlib.suppress(NatsError):
            await msg.respond(json.dumps(report).encode())

    def _start_rolling(self) -> None:
        """SIGHUP or a restart request: start a rolling restart unless one runs."""
        if self._rolling is None or self._rolling.done():
            self._rolling = asyncio.get_running_loop().create_task(self.rolling_restart())

    async def rolling_restart(self) -> dict[str, Any]:
        """Replace the workers one at a time; each is back (listening, with its modules)
        before the next one stops. Returns a report."""
        begun = time.monotonic()
        log.info("rolling restart of %d workers", self.config.workers)
        replaced: list[dict[str, Any]] = []
        for index in range(self.config.workers):
            if self._stopping.is_set():
                break
            name = self._name(index)
            proc = self._procs.get(index)
            if proc is None or proc.returncode is not None:
                continue
            started = time.monotonic()
            ready = self._ready[name] = asyncio.Event()
            self._replacing = index
            try:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(READY_TIMEOUT + self.config.drain_timeout):
                        await ready.wait()
                except TimeoutError:
                    log.error(
                        "rolling restart: worker %s was not back within %.0f s; stopped there",
                        name,
                        READY_TIMEOUT,
                    )
                    return {"ok": False, "error": f"worker {name} did not come back"}
            finally:
                self._replacing = None
            took = time.monotonic() - started
            replaced.append({"worker": name, "seconds": round(took, 3)})
            log.info("rolling restart: worker %s replaced in %.1f s", name, took)
        took = time.monotonic() - begun
        log.info("rolling restart done in %.1f s", took)
        return {"ok": True, "workers": replaced, "seconds": round(took, 3)}

    async def _stop_all(self) -> None:
        procs = [p for p in self._procs.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        limit = self.config.drain_timeout + STOP_MARGIN
        for proc in procs:
            try:
                async with asyncio.timeout(limit):
                    await proc.wait()
            except TimeoutError:
                log.warning("worker pid %d did not stop within %.0f s: killed", proc.pid, limit)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
