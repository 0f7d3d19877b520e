"""The set of running modules: load a folder, swap, quarantine, stop. A facade over the parts.

- `loader.py` reads the folder (file names, rules, limits, bytes);
- `swapper.py` carries out the swap state machine (`policy/swap.py`) per name;
- `timers.py` holds the quarantine retry timers;
- `registry.py` holds who runs, and gives the web layer a read-only view.

A file that cannot be loaded is refused with a logged reason and never stops
the others. Loading a folder runs in three passes across all files (start,
activate, release; see `runtime/module.py`) so messages published from one
module's `init()` reach every module started with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bus import Bus
from tinywasm_wasi.config import Config
from tinywasm_wasi.exceptions import ModuleLoadError, TinywasmError
from tinywasm_wasi.policy.canary import CanarySettings
from tinywasm_wasi.policy.events import LogEvent, event_extra
from tinywasm_wasi.policy.history import ModuleHistory, Outcome, Trigger, VersionRecord
from tinywasm_wasi.policy.limits import Limits, Replicas
from tinywasm_wasi.policy.names import check_module_name
from tinywasm_wasi.policy.pins import FileVerdict, judge_file
from tinywasm_wasi.policy.placement import Placement
from tinywasm_wasi.policy.quarantine import Quarantine
from tinywasm_wasi.policy.rules import ModuleFileName, parse_file_name
from tinywasm_wasi.policy.scheduling import load_concurrency
from tinywasm_wasi.policy.swap import Request, RequestKind
from tinywasm_wasi.runtime.engine import CompiledModule, Runtime
from tinywasm_wasi.runtime.module import Broadcast, WasmModule
from tinywasm_wasi.supervisor.canary import CanaryRequest, CanaryRun
from tinywasm_wasi.supervisor.deployer import Deployer, DeployResult
from tinywasm_wasi.supervisor.loader import (
    DEFAULT_MAX_MODULE_SIZE,
    ModuleLoader,
    Source,
    is_module_file,
    read_file,
)
from tinywasm_wasi.supervisor.pins import PinStore
from tinywasm_wasi.supervisor.registry import Registry, RegistryView
from tinywasm_wasi.supervisor.state_dir import StateDir
from tinywasm_wasi.supervisor.swapper import EMPTY_SHA256, Swapper, SwapSettings

__all__ = ["ModuleHost", "is_module_file"]

log = logging.getLogger("tinywasm.host")

CLOSE_MARGIN = 0.5  # seconds stop() allows past --drain-timeout to close every module
CLOSE_EACH = 0.005  # and this much more per module and worker thread (closes take turns)


class ModuleHost:
    """Owns every running WasmModule, by name, and every swap of one."""

    def __init__(
        self,
        runtime: Runtime,
        bus: Bus,
        broadcast: Broadcast,
        *,
        mailbox_size: int,
        drain_timeout: float,
        mailbox_bytes: int = Config.mailbox_bytes,
        probation: float = Config.swap_probation,
        limits: Limits | None = None,
        max_module_size: int = DEFAULT_MAX_MODULE_SIZE,
        quarantine: tuple[int, float] = (Config.quarantine_traps, Config.quarantine_window),
        quarantine_backoff: float = Config.quarantine_backoff,
        state: StateDir | None = None,
        placement: Placement | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.runtime = runtime
        # With several workers: which modules run here (the others run on their owner).
        self.placement = placement
        # Modules being handed to this worker by another (web/handover.py): staged and
        # fenced here, not live yet; neither the folder's load nor the fleet starts them.
        self.arriving: set[str] = set()
        self.bus = bus
        self.settings = SwapSettings(
            mailbox_size=mailbox_size,
            mailbox_bytes=mailbox_bytes,
            drain_timeout=drain_timeout,
            probation=probation,
            quarantine=quarantine,
            quarantine_backoff=quarantine_backoff,
        )
        self.loader = ModuleLoader(
            limits or Limits(), max_module_size=max_module_size, environment=environment
        )
        self._registry = Registry(state)
        self.pins = PinStore(state)
        # file_digest's cache: name -> ((path, mtime_ns, size), sha256).
        self._digests: dict[str, tuple[tuple[str, int, int], str]] = {}
        self.swapper = Swapper(
            runtime,
            bus,
            broadcast,
            self.loader,
            self._registry,
            self.settings,
            on_faulty=self._on_faulty,
            retry=self._retry,
            pins=self.pins,
        )
        self.deployer = Deployer(
            self.loader,
            self.swap,
            self.swapper.idle,
            self._registry.view.histories.get,
            self._running_sha,
            self.pins,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[VersionRecord | None]] = set()
        self._stopping = False
        # Loading a folder and bursts of watched changes: this many operations at once.
        self.load_concurrency = load_concurrency(runtime.workers.size)
        self._admitted = asyncio.Semaphore(self.load_concurrency)

    # -- read-only views (the web layer uses `view`) --------------------------------------------

    @property
    def view(self) -> RegistryView:
        return self._registry.view

    def on_record(self, listener: Callable[[str, VersionRecord], None]) -> None:
        """Call `listener(name, record)` on the loop for every new history record."""
        self._registry.listeners.append(listener)

    @property
    def modules(self) -> Mapping[str, WasmModule]:
        return self._registry.view.modules

    @property
    def quarantined(self) -> Mapping[str, Quarantine[CompiledModule]]:
        return self._registry.view.quarantined

    @property
    def refused(self) -> Mapping[str, str]:
        return self._registry.view.refused

    @property
    def histories(self) -> Mapping[str, ModuleHistory]:
        return self._registry.view.histories

    @property
    def changes(self) -> int:
        """Grows on every change to modules, refusals, quarantines or history (see Registry)."""
        return self._registry.view.changes

    @property
    def directory(self) -> Path | None:
        return self.loader.directory

    @property
    def drain_timeout(self) -> float:
        return self.settings.drain_timeout

    @property
    def probation(self) -> float:
        return self.settings.probation

    @probation.setter
    def probation(self, seconds: float) -> None:
        self.settings.probation = seconds

    def middlewares(self) -> list[WasmModule]:
        return self._registry.view.middlewares()

    def live(self) -> list[WasmModule]:
        return self._registry.view.live()

    def find_file(self, name: str) -> ModuleFileName | None:
        return self.loader.find_file(name)

    def file_digest(self, name: str) -> tuple[str, str] | None:
        """(file name, sha256) of the file `name` loads from now; None if there is none.

        Reads the whole file: call it in a worker thread.
        """
        file = self.loader.find_file(name)
        path = self.loader.path_of(file)
        if file is None or path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path), st.st_mtime_ns, st.st_size)
        cached = self._digests.get(name)
        if cached is not None and cached[0] == key:
            return file.file, cached[1]
        try:
            data = self.loader.reader(path)()
        except TinywasmError:
            return None
        if data is None:
            return None
        sha = hashlib.sha256(data).hexdigest()
        self._digests[name] = (key, sha)
        return file.file, sha

    def limits_for(self, name: str) -> Limits:
        return self.loader.limits_for(name)

    def runs_here(self, name: str) -> bool:
        """True if module `name` runs in this process (always, without placement)."""
        if self.placement is None:
            return True
        file = self.find_file(name)
        middleware = file is not None and file.rule is not None
        return self.placement.runs_here(name, self.limits_for(name).replicas, middleware)

    def runs_alone(self, name: str) -> bool:
        """True if `name` is a single-owner module (not a middleware, not ``replicas = "all"``)."""
        file = self.find_file(name)
        middleware = file is not None and file.rule is not None
        return not middleware and self.limits_for(name).replicas is Replicas.ONE

    def remote_owner(self, name: str) -> str | None:
        """The worker that answers for `name` when it is not this one; None when it is
        (it runs here, it should, or there are no other workers)."""
        if self.placement is None or name in self.modules:
            return None
        where = self.placement.where(name)
        return None if where == self.placement.me else where

    def deploy_owner(self, name: str) -> str | None:
        """The worker a deploy of `name` is carried out by when it is not this one
        (`Placement.deploy_target`); None when it is."""
        if self.placement is None or name in self.modules:
            return None
        target = self.placement.deploy_target(name)
        return None if target == self.placement.me else target

    def module_names(self) -> list[str]:
        """The names of the module files in the folder now, sorted (refused ones left out)."""
        directory = self.loader.directory
        if directory is None or not directory.is_dir():
            return []
        names = []
        for path in self.loader.scan(directory).files:
            try:
                names.append(self.loader.with_rule_txt(parse_file_name(path.name)).name)
            except TinywasmError:
                continue
        return names

    # -- loading a folder ----------------------------------------------------------------------

    async def load_dir(self, directory: Path) -> None:
        """Load every module file in `directory` (sorted by name)."""
        self._loop = asyncio.get_running_loop()
        self.loader.directory = directory
        self._registry.restore_history()
        if not directory.is_dir():
            log.error(
                "modules folder %s does not exist: no modules loaded "
                "(set --modules-dir or TINYWASM_MODULES_DIR)",
                directory,
            )
            return
        self.pins.load()
        scan = self.loader.scan(directory)
        for file_name, reason in scan.refused.items():
            self._registry.refuse(file_name, reason)
            log.log(
                LogEvent.REFUSE.level,
                "refused module file %s: %s",
                file_name,
                reason,
                extra=event_extra(LogEvent.REFUSE, file_name, trigger="startup", error=reason),
            )
        files = [p for p in scan.files if self._placed_here(p)]
        started = await self._start_files(files)
        ready = [m for m in started if m is not None]
        for module in [m for m in ready if m.name in self.modules or m.name in self.arriving]:
            # Handed over by another worker while this one loaded its copy: the handed one
            # (with its state) serves; this copy never went live.
            ready.remove(module)
            await module.close()
        for module in ready:
            module.activate()
            self._registry.put(module)
        for module in ready:
            module.release()
        log.info(
            "%d module(s) loaded from %s, %d refused",
            len(ready),
            directory,
            len(files) - len(ready),
        )

    async def _start_files(self, files: list[Path]) -> list[WasmModule | None]:
        """Start `files` a few at a time (`load_concurrency` tasks, not one per file), so
        thousands of files neither flood the loop with tasks nor start thousands at once."""
        started: list[WasmModule | None] = [None] * len(files)
        todo = iter(enumerate(files))

        async def starter() -> None:
            for i, path in todo:  # shared: each file goes to one starter
                started[i] = await self._start_file(path)

        count = min(self.load_concurrency, len(files))
        await asyncio.gather(*(starter() for _ in range(count)))
        return started

    def _placed_here(self, path: Path) -> bool:
        if self.placement is None:
            return True
        try:
            file = self.loader.with_rule_txt(parse_file_name(path.name))
        except TinywasmError:
            return True  # refused where it is started, with the reason
        limits = self.limits_for(file.name)
        may_start = self.placement.may_start(file.name, limits.replicas, file.rule is not None)
        handed = file.name in self.arriving or file.name in self.modules  # by handover
        if may_start and not handed:
            return True
        log.info(
            "module %s runs on worker %s, not here (%s)",
            file.name,
            self.placement.where(file.name) or "(none yet)",
            self.placement.me,
        )
        return False

    async def _start_file(self, path: Path) -> WasmModule | None:
        name = path.name
        begun, at = time.perf_counter(), time.time()
        data, sha = b"", EMPTY_SHA256
        try:
            file = self.loader.with_rule_txt(parse_file_name(path.name))
            name = file.name
            raw = await asyncio.to_thread(read_file(path, self.loader.max_module_size))
            data = raw or b""
            sha = hashlib.sha256(data).hexdigest()  # once: it keys the cache and the history
            data, sha = self._pinned(name, data, sha)
            module = await self.swapper.stage(name, data, path, sha256=sha)
            module.file = file
        except (OSError, TinywasmError) as exc:
            self._registry.refuse(name, str(exc))
            self.swapper.record_startup(name, data, sha, Outcome.REFUSED, begun, at, str(exc))
            log.log(
                LogEvent.REFUSE.level,
                "refused module %s: %s",
                path.name,
                exc,
                extra=event_extra(
                    LogEvent.REFUSE, name, trigger="startup", sha256=sha, error=str(exc)
                ),
            )
            return None
        meta = None if module.metadata is None else module.metadata.to_json()
        self.swapper.record_startup(name, data, sha, Outcome.LOADED, begun, at, None, meta)
        took = (time.perf_counter() - begun) * 1000
        log.log(
            LogEvent.LOAD.level,
            "loaded module %s (%d bytes, sha256 %s, %.1f ms)",
            name,
            len(data),
            module.compiled.sha256[:12],
            took,
            extra=event_extra(
                LogEvent.LOAD,
                name,
                trigger="startup",
                sha256=module.compiled.sha256,
                size=len(data),
                duration_ms=round(took, 3),
            ),
        )
        return module

    def _pinned(self, name: str, data: bytes, sha: str) -> tuple[bytes, str]:
        """At start-up: the pinned version if the file still holds the one rolled back from."""
        pin = self.pins.get(name)
        verdict = judge_file(pin, sha)
        if verdict is FileVerdict.CHANGED:
            self.pins.drop(name, "its file changed while the server was stopped")
        if pin is None or verdict is not FileVerdict.PINNED:
            return data, sha
        pinned = self.pins.data(name)
        if pinned is None:
            self.pins.drop(name, "its pinned bytes are missing")
            return data, sha
        log.warning(
            "module %s: serving pinned version %s, not its file's %s (%s); "
            "POST /api/modules/%s/unpin to serve the file",
            name,
            pin.sha256[:12],
            sha[:12],
            pin.reason,
            name,
        )
        return pinned, pin.sha256

    # -- moves between workers (web/handover.py carries them out) ------------------------------

    def movable(self) -> list[str]:
        """The modules a worker hands over when it stops: those it owns (not middlewares,
        not ``replicas = "all"``), sorted."""
        if self.placement is None:
            return []
        return sorted(name for name in self.modules if self.runs_alone(name))

    async def stage_copy(self, name: str) -> WasmModule:
        """Start `name` from this worker's own file, not live: effects and mailbox held.

        Raises:
            ModuleLoadError: there is no file for `name` here, or it does not start.
        """
        if name in self.modules:
            raise ModuleLoadError(f"module {name!r} already runs on this worker")
        file = await asyncio.to_thread(self.loader.find_file, name)
        path = self.loader.path_of(file)
        if file is None or path is None or file.rule is not None:
            raise ModuleLoadError(f"this worker has no module file for {name!r}")
        data = await asyncio.to_thread(self.loader.reader(path))
        if data is None:
            raise ModuleLoadError(f"the module file for {name!r} is gone")
        module = await self.swapper.stage(name, data, path)
        module.file = file
        module.hold()
        return module

    def adopt(self, module: WasmModule) -> None:
        """A module moved here serves its name (it is live and open already)."""
        self._registry.put(module)
        self.swapper.forget(module.name)

    async def give_up(self, name: str) -> WasmModule:
        """Stop serving `name` here (it moves to another worker): wait for a running swap,
        then take it out of the registry; the caller drains and closes it.

        Raises:
            KeyError: `name` does not run here.
        """
        await self.swapper.idle(name)
        module = self._registry.pop(name)
        self.swapper.forget(name)
        return module

    # -- swaps -----------------------------------------------------------------------------------

    def schedule(self, name: str, trigger: Trigger | str, source: Source | None = None) -> None:
        """Swap `name` to the bytes of `source` (default: its file) in the background."""
        self._submit(name, Request(RequestKind.CHANGE, Trigger(trigger), source))

    async def schedule_admitted(self, name: str, trigger: Trigger | str) -> None:
        """`schedule`, once fewer than `load_concurrency` admitted swaps run.

        The watcher awaits this for each changed file: a folder that gets thousands of
        files at once loads them a few at a time, and its later changes wait their turn.
        """
        await self._admitted.acquire()
        task = self._submit(name, Request(RequestKind.CHANGE, Trigger(trigger), None))
        if task is None:
            self._admitted.release()
        else:
            task.add_done_callback(lambda _task: self._admitted.release())

    def _submit(self, name: str, request: Request) -> asyncio.Task[VersionRecord | None] | None:
        if not self.runs_here(name) and name not in self.modules:
            log.debug("module %s: %s left to its owner worker", name, request.kind.value)
            return None
        if self._stopping:
            log.info("module %s: %s ignored, the server is stopping", name, request.kind.value)
            return None
        task = asyncio.get_running_loop().create_task(self._run(name, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, name: str, request: Request) -> VersionRecord | None:
        if request.trigger is Trigger.WATCHER:
            await self.deployer.settled(name)  # a deploy's own writes are not a second change
        return await self.swapper.run(name, request)

    async def swap(
        self, name: str, trigger: Trigger | str, source: Source | None = None
    ) -> VersionRecord | None:
        """Load, swap or unload `name` from `source` (default: its file; None bytes = unload).

        One operation per name runs at a time; requests meanwhile are coalesced into
        exactly one follow-up, which uses the latest request. Returns the record
        of the attempt this call ran, or None if it was coalesced or changed nothing.
        """
        if source is None and self.loader.directory is None:
            raise RuntimeError("no modules folder: load_dir() first")
        if not self.runs_here(name) and name not in self.modules:
            return None  # its owner worker loads it
        return await self.swapper.run(name, Request(RequestKind.CHANGE, Trigger(trigger), source))

    async def deploy(self, name: str, data: bytes) -> DeployResult:
        """Write `data` as `name`'s file and swap to it (see `supervisor/deployer.py`)."""
        return await self.deployer.deploy(name, data)

    async def undeploy(self, name: str) -> DeployResult:
        """Remove `name`'s file and unload it."""
        return await self.deployer.undeploy(name)

    def _running_sha(self, name: str) -> str | None:
        module = self.modules.get(name)
        return None if module is None else module.compiled.sha256

    async def unpin(self, name: str) -> VersionRecord | None:
        """End `name`'s pin and swap to its file's version.

        Raises:
            ModuleLoadError: `name` is not pinned.
        """
        if not self.pins.drop(name, "by request"):
            raise ModuleLoadError(f"module {name!r} is not pinned: it serves its file's version")
        return await self.swap(name, Trigger.API)

    async def canary(self, name: str, data: bytes, settings: CanarySettings) -> CanaryRun:
        """Start `data` as a canary of live module `name`; returns once it serves.

        Raises:
            ModuleNameError: `name` is outside the documented character set.
            ModuleLoadError: `name` is not live, a canary of it already runs, or the
                version was refused (the reason is the message).
        """
        check_module_name(name)
        if name not in self.modules:
            raise ModuleLoadError(
                f"module {name!r} is not running: deploy it first (a canary runs beside a "
                "live version)"
            )
        if name in self.view.canaries:
            raise ModuleLoadError(f"a canary of {name!r} already runs: promote or abort it first")
        started: asyncio.Future[CanaryRun | str] = asyncio.get_running_loop().create_future()
        request = Request(
            RequestKind.CANARY, Trigger.CANARY, CanaryRequest(data, settings, started)
        )
        task = self._submit(name, request)
        if task is not None:
            waits: set[asyncio.Future[Any]] = {started, task}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            await self.swapper.idle(name)  # coalesced into a running operation
        result = started.result() if started.done() else None
        if isinstance(result, CanaryRun):
            return result
        raise ModuleLoadError(
            f"canary of {name!r} not started: "
            + (result or "the same bytes as the live version, or superseded by a newer change")
        )

    def decide_canary(self, name: str, promote: bool) -> CanaryRun:
        """Promote or abort the canary of `name` (the swap carries it out in the background).

        Raises:
            ModuleLoadError: no canary of `name` runs.
        """
        run = self.view.canaries.get(name)
        if run is None:
            raise ModuleLoadError(f"no canary of {name!r} runs: start one with POST …/canary")
        if promote:
            run.promote()
        else:
            run.abort()
        return run

    async def rollback(self, name: str) -> VersionRecord | None:
        """Return `name` to its previous good version, kept in memory."""
        history = self.histories.get(name)
        previous = history.previous_good() if history else None
        if history is None or previous is None:
            raise ModuleLoadError(f"module {name!r} has no previous good version to return to")
        data = previous[1]
        # Step back rather than toggle: the version rolled away from stops being a target.
        history.forget_current()
        return await self.swap(name, Trigger.ROLLBACK, lambda: data)

    # -- quarantine --------------------------------------------------------------------------

    def _on_faulty(self, module: WasmModule) -> None:
        """From a mailbox worker: it trapped too often; take it out on the loop."""
        loop = self._loop
        if self._registry.view.modules.get(module.name) is not module:
            return  # a canary: its traps count against its window instead
        if loop is not None and not loop.is_closed():
            request = Request(RequestKind.QUARANTINE, Trigger.QUARANTINE)
            loop.call_soon_threadsafe(self._submit, module.name, request)

    def _retry(self, name: str) -> None:
        """On the loop: a quarantined module's backoff elapsed."""
        self._submit(name, Request(RequestKind.RETRY, Trigger.RETRY))

    # -- stopping --------------------------------------------------------------------------------

    async def quiesce(self, timeout: float) -> bool:
        """Wait until every mailbox is empty and idle at once (messages between modules
        settle), or `timeout` passes. Returns True when all were idle."""
        deadline = time.monotonic() + timeout
        while True:
            modules = list(self.modules.values())
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            settled = await asyncio.gather(*(m.settled(left) for m in modules))
            if not all(settled):
                return False
            # One pass settled each mailbox in turn; a message one module sent may have
            # woken another meanwhile, so it counts only if all are idle at once now.
            if all(m.idle for m in self.modules.values()):
                return True

    async def stop(self) -> None:
        """Finish running swaps, let traffic settle, drain and close every module.

        The whole stop takes at most --drain-timeout, plus a short margin to close (0.5 s,
        and 5 ms per module per worker thread: the closes take turns on the pool);
        a module still busy then is closed with what it had queued (logged).
        """
        self._stopping = True
        self.swapper.timers.cancel_all()
        for run in list(self.view.canaries.values()):
            run.abort("the server is stopping")
        timeout = self.settings.drain_timeout
        deadline = time.monotonic() + timeout
        if self._tasks:
            _done, running = await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in running:
                log.warning("stopping: a swap still running after %.1f s is cancelled", timeout)
                task.cancel()
        modules = list(self.modules.values())
        await self.quiesce(max(0.0, deadline - time.monotonic()))
        left = max(0.0, deadline - time.monotonic())
        results = await asyncio.gather(*(m.drain(left) for m in modules))
        # The closes take turns on the worker pool: the margin grows with the modules.
        margin = CLOSE_MARGIN + len(modules) * CLOSE_EACH / self.runtime.workers.size
        discarded = await asyncio.gather(*(m.close(timeout=margin) for m in modules))
        for module, idle, lost in zip(modules, results, discarded, strict=True):
            if not idle:
                log.warning(
                    "module %s: drain timed out after %.1f s; %d queued message(s) discarded",
                    module.name,
                    timeout,
                    lost,
                )
        self._registry.clear()
