"""``--workers N``: N worker processes on one port, joined over NATS, kept running.

The supervisor runs no modules itself. It:

1. starts a real nats-server on 127.0.0.1 and a free port (`NatsServerProcess`),
   unless ``--nats URL`` names one to join;
2. picks the port (a free one for ``--port 0``) and starts workers ``w0`` …
   ``w{N-1}``: the same command line, plus ``--port``, ``--worker-index`` and
   ``--nats``. Each listens on the port with SO_REUSEPORT, so the kernel spreads
   connections over them, and runs the modules placement gives it
   (policy/placement.py);
3. restarts a worker that dies, under the same index, after a backoff that
   doubles while it keeps dying (policy/restart.py); its modules come back with it;
4. on SIGTERM or SIGINT, sends SIGTERM to every worker (each drains its modules
   and closes its browsers with 1001), waits for them (killing one that takes
   longer than the drain timeout plus `STOP_MARGIN`), then stops nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence

from tinywasm_wasi.cluster.nats_server import NatsServerError, NatsServerProcess, free_port
from tinywasm_wasi.config import Config
from tinywasm_wasi.policy.placement import worker_name
from tinywasm_wasi.policy.restart import restart_delay

__all__ = ["STOP_MARGIN", "Supervisor"]

log = logging.getLogger("tinywasm.supervisor")

STOP_MARGIN = 10.0  # seconds a worker gets past --drain-timeout to exit on SIGTERM


class Supervisor:
    """Starts, restarts and stops the workers (and the embedded nats-server)."""

    def __init__(self, config: Config, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.config = config
        self._argv = list(argv)
        self._env = dict(env)
        self._stopping = asyncio.Event()
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit status."""
        return asyncio.run(self._main())

    async def _main(self) -> int:
        config = self.config
        nats: NatsServerProcess | None = None
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
        log.info(
            "supervising %d workers on http://%s:%d (NATS %s)",
            config.workers,
            config.host,
            port,
            urls,
        )
        try:
            keepers = [
                asyncio.create_task(self._keep(i, port, urls), name=f"worker {worker_name(i)}")
                for i in range(config.workers)
            ]
            await self._stopping.wait()
            log.info("closing: stopping %d workers", len(self._procs))
            await self._stop_all()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if nats is not None:
                await asyncio.to_thread(nats.stop)
        log.info("closed")
        return 0

    def _command(self, index: int, port: int, urls: str) -> list[str]:
        extra = ["--port", str(port), "--worker-index", str(index), "--nats", urls]
        return [sys.executable, "-m", "tinywasm_wasi", *self._argv, *extra]

    async def _keep(self, index: int, port: int, urls: str) -> None:
        """Run worker `index`; start it again whenever it dies, until the supervisor stops."""
        name = worker_name(index)
        deaths = 0
        while not self._stopping.is_set():
            begun = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self._command(index, port, urls), env=self._env, stdin=asyncio.subprocess.DEVNULL
            )
            self._procs[index] = proc
            log.info("worker %s started (pid %d)", name, proc.pid)
            code = await proc.wait()
            if self._stopping.is_set():
                return
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
