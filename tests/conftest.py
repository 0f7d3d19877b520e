"""Shared fixtures: a module host or a whole server on loopback, on real modules."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bus import Bus
from tests.support import eventually
from tinywasm_wasi.build import build_module
from tinywasm_wasi.cli import fast_path
from tinywasm_wasi.config import DEFAULT_MODULES_DIR, Config
from tinywasm_wasi.policy.limits import Limits
from tinywasm_wasi.runtime import fastcall
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.server import WasiServer
from tinywasm_wasi.supervisor.host import ModuleHost


def pytest_configure(config: pytest.Config) -> None:
    # As the CLI does: `TINYWASM_FASTPATH=0 python -m pytest` runs every module on the public API.
    fastcall.prefer_fast_path(fast_path(os.environ))


class Broadcasts:
    """Collects what modules ws_broadcast, thread-safely, and waits for it."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.items.append((topic, payload))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.items if t == topic]

    async def wait_for(self, topic: str, count: int, timeout: float = 10.0) -> list[bytes]:
        await eventually(
            lambda: len(self.on(topic)) >= count,
            f"{count} broadcast(s) on {topic!r}",
            timeout=timeout,
            interval=0.002,
        )
        return self.on(topic)


@pytest.fixture(scope="session")
def rebuilt_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example modules compiled afresh from their C sources."""
    out = tmp_path_factory.mktemp("rebuilt")
    sources = DEFAULT_MODULES_DIR.parent
    for src in sorted(sources.iterdir()):
        if src.is_dir() and any(src.glob("*.c")):
            build_module(src, out)
    return out


@pytest.fixture(params=["committed", "rebuilt"])
def example_modules(request: pytest.FixtureRequest, rebuilt_modules: Path) -> Path:
    """The examples as committed in modules/dist, then as rebuilt from source."""
    return DEFAULT_MODULES_DIR if request.param == "committed" else rebuilt_modules


HostFactory = Callable[..., Awaitable[ModuleHost]]


@pytest.fixture
def broadcasts() -> Broadcasts:
    return Broadcasts()


@pytest.fixture
async def make_host(broadcasts: Broadcasts) -> AsyncIterator[HostFactory]:
    """Load a folder of modules into a ModuleHost on a real bus; stopped after the test."""
    hosts: list[ModuleHost] = []

    async def make(
        directory: Path,
        *,
        mailbox_size: int = 10_000,
        drain_timeout: float = 2.0,
        runtime: Runtime | None = None,
        limits: Limits | None = None,
    ) -> ModuleHost:
        host = ModuleHost(
            runtime or Runtime(),
            Bus(),
            broadcasts,
            mailbox_size=mailbox_size,
            drain_timeout=drain_timeout,
            limits=limits,
        )
        hosts.append(host)
        await host.load_dir(directory)
        return host

    yield make
    for host in hosts:
        await host.stop()


ServerFactory = Callable[..., Awaitable[WasiServer]]


@pytest.fixture
async def make_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServerFactory]:
    """Start a WasiServer on 127.0.0.1 and a free port; stopped after the test."""
    servers: list[WasiServer] = []

    async def make(**settings: object) -> WasiServer:
        settings.setdefault("port", 0)
        settings.setdefault("host", "127.0.0.1")
        # A fresh compiled-module cache per server, never the user's ~/.cache.
        settings.setdefault("cache_dir", tmp_path_factory.mktemp("module-cache"))
        # The shipped examples' folder is shared by every test: give each server its own
        # state folder (history, pins) rather than modules/dist/.tinywasm/. A test's own
        # modules folder keeps the default <folder>/.tinywasm/, so a restart finds it.
        if settings.get("modules_dir", DEFAULT_MODULES_DIR) == DEFAULT_MODULES_DIR:
            settings.setdefault("state_dir", tmp_path_factory.mktemp("state"))
        server = WasiServer(Config(**settings))  # type: ignore[arg-type]
        servers.append(server)
        await server.start()
        return server

    yield make
    for server in servers:
        await server.stop()
