"""The set of running modules: loading a folder, swapping, unloading, stopping.

A file that cannot be loaded is refused with a logged reason and never stops
the others. Loading a folder runs in three passes across all files (start,
activate, release; see `module.py`) so messages published from one module's
`init()` reach every module started with it.

A swap replaces a running version without losing or duplicating a message:

1. stage: compile, validate, instantiate and `init()` the new version; its
   subscriptions are recorded and its effects held. Failure: the old version
   keeps serving and the attempt is recorded as refused.
2. cut over: one `Bus.swap` moves the subscriptions from old to new; from then
   every message goes to the new version's mailbox, which is held closed.
3. drain the old version: its queued messages, then its `drain()` export, up
   to the drain timeout (then its leftover messages move to the new version).
4. hand over state: old `save_state()` bytes → new `restore_state()`.
5. open the new mailbox on probation; close the old version once the new one
   has survived the probation window. A trap in `restore_state` or during
   probation rolls back: the old version takes its subscriptions back, and the
   new version's queued messages (the failed one first) move to the old one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from bus import Bus
from tinywasm_wasi.exceptions import GuestTrap, ModuleLoadError, TinywasmError
from tinywasm_wasi.history import ModuleHistory, Outcome, SwapGate, VersionRecord
from tinywasm_wasi.module import Broadcast, ModuleState, WasmModule
from tinywasm_wasi.runtime import Runtime

__all__ = ["ModuleHost", "is_module_file"]

log = logging.getLogger("tinywasm.host")

# Where a swap's new bytes come from: a callable so a follow-up re-reads the file.
Source = Callable[[], bytes | None]


def is_module_file(path: Path) -> bool:
    """True for `name.wasm`; False for hidden and temporary files editors and compilers leave."""
    name = path.name
    return (
        name.endswith(".wasm")
        and not name.startswith(".")
        and "_temp_" not in name
        and not name.endswith((".tmp.wasm", "~.wasm"))
        and len(name) > len(".wasm")
    )


def read_file(path: Path) -> Source:
    """A source that reads `path` when called; None when the file is gone."""

    def read() -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    return read


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
        probation: float = 0.5,
    ) -> None:
        self.runtime = runtime
        self.bus = bus
        self._broadcast = broadcast
        self.mailbox_size = mailbox_size
        self.drain_timeout = drain_timeout
        self.probation = probation
        self.directory: Path | None = None
        self.modules: dict[str, WasmModule] = {}
        self.refused: dict[str, str] = {}
        self.histories: dict[str, ModuleHistory] = {}
        self._gates: dict[str, SwapGate[tuple[Source, str]]] = {}
        self._tasks: set[asyncio.Task[VersionRecord | None]] = set()

    # -- loading a folder --------------------------------------------------------------------

    async def load_dir(self, directory: Path) -> None:
        """Load every module file in `directory` (sorted by name)."""
        self.directory = directory
        if not directory.is_dir():
            log.error(
                "modules folder %s does not exist: no modules loaded "
                "(set --modules-dir or TINYWASM_MODULES_DIR)",
                directory,
            )
            return
        paths = sorted(p for p in directory.iterdir() if is_module_file(p))
        started = await asyncio.gather(*(self._start_file(p) for p in paths))
        ready = [m for m in started if m is not None]
        for module in ready:
            module.activate()
            self.modules[module.name] = module
        for module in ready:
            module.release()
        log.info(
            "%d module(s) loaded from %s, %d refused",
            len(ready),
            directory,
            len(paths) - len(ready),
        )

    async def _start_file(self, path: Path) -> WasmModule | None:
        name = path.name[: -len(".wasm")]
        begun, at = time.perf_counter(), time.time()
        data = b""
        try:
            data = await asyncio.to_thread(path.read_bytes)
            module = await self._stage(name, data, path)
        except (OSError, TinywasmError) as exc:
            self.refused[name] = str(exc)
            self._record(name, data, at, "startup", Outcome.REFUSED, begun, error=str(exc))
            log.error("refused module %s: %s", path.name, exc)
            return None
        self._record(name, data, at, "startup", Outcome.LOADED, begun)
        log.info(
            "loaded module %s (%d bytes, sha256 %s, %.1f ms)",
            name,
            len(data),
            module.compiled.sha256[:12],
            (time.perf_counter() - begun) * 1000,
        )
        return module

    async def _stage(self, name: str, data: bytes, path: Path | None) -> WasmModule:
        """Compile, instantiate and start a version; subscriptions recorded, effects held."""
        compiled = await asyncio.to_thread(self.runtime.compile_module, name, data, path)
        module = WasmModule(
            compiled, self.runtime, self.bus, self._broadcast, mailbox_size=self.mailbox_size
        )
        await module.start()
        interface = compiled.interface
        if module.subscriptions and (interface.handler is None or interface.allocator is None):
            missing = "on_message or on_topic_message" if interface.handler is None else "malloc"
            await module.close()
            raise ModuleLoadError(
                f"it subscribes to {', '.join(module.subscriptions)} but does not export "
                f"{missing}, so it could not receive anything"
            )
        return module

    # -- swaps ---------------------------------------------------------------------------------

    def schedule(self, name: str, trigger: str, source: Source | None = None) -> None:
        """Swap `name` to the bytes of `source` (default: its file) in the background."""
        task = asyncio.get_running_loop().create_task(self.swap(name, trigger, source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def swap(
        self, name: str, trigger: str, source: Source | None = None
    ) -> VersionRecord | None:
        """Load, swap or unload `name` from `source` (default: its file; None bytes = unload).

        One swap per name runs at a time; requests meanwhile are coalesced into
        exactly one follow-up, which uses the latest request. Returns the record
        of the attempt this call ran, or None if it was coalesced or changed nothing.
        """
        if source is None:
            if self.directory is None:
                raise RuntimeError("no modules folder: load_dir() first")
            source = read_file(self.directory / f"{name}.wasm")
        gate = self._gates.setdefault(name, SwapGate())
        first: tuple[Source, str] = (source, trigger)
        if not gate.request(first):
            log.info("swap %s (%s): coalesced into the swap already running", name, trigger)
            return None
        record = None
        request: tuple[Source, str] | None = first
        while request is not None:
            try:
                record = await self._apply(name, *request)
            except Exception:
                log.exception("swap %s failed unexpectedly", name)
            request = gate.finish()
        return record

    async def rollback(self, name: str) -> VersionRecord | None:
        """Return `name` to its previous good version, kept in memory."""
        history = self.histories.get(name)
        previous = history.previous_good() if history else None
        if previous is None:
            raise ModuleLoadError(f"module {name!r} has no previous good version to return to")
        data = previous[1]
        assert history is not None
        # Step back rather than toggle: the version rolled away from stops being a target.
        history.forget_current()
        return await self.swap(name, "rollback", lambda: data)

    async def _apply(self, name: str, source: Source, trigger: str) -> VersionRecord | None:
        data = await asyncio.to_thread(source)
        old = self.modules.get(name)
        if data is None:
            return await self._unload(name, trigger) if old is not None else None
        sha = hashlib.sha256(data).hexdigest()
        if old is not None and old.compiled.sha256 == sha:
            log.debug(
                "swap %s (%s): same bytes as the running version, nothing to do", name, trigger
            )
            return None
        begun, at = time.perf_counter(), time.time()
        path = self.directory / f"{name}.wasm" if self.directory else None
        try:
            new = await self._stage(name, data, path)
        except TinywasmError as exc:
            self.refused[name] = str(exc)
            record = self._record(name, data, at, trigger, Outcome.REFUSED, begun, error=str(exc))
            self._log_swap(name, old, sha, record)
            return record
        self.refused.pop(name, None)
        if old is None:
            new.activate()
            self.modules[name] = new
            new.release()
            record = self._record(name, data, at, trigger, Outcome.LOADED, begun)
        else:
            outcome, held, error, serving = await self._swap(old, new)
            record = self._record(
                name, data, at, trigger, outcome, begun, held=held, error=error, until=serving
            )
            if outcome is Outcome.ROLLED_BACK:
                self.refused[name] = error or "rolled back"
        self._log_swap(name, old, sha, record)
        return record

    async def _swap(
        self, old: WasmModule, new: WasmModule
    ) -> tuple[Outcome, int, str | None, float]:
        """Steps 2-5; returns (outcome, messages held, error, perf_counter when it opened)."""
        name = new.name
        new.mailbox.hold()
        new.take_over(old)  # 2. cut over
        self.modules[name] = new
        outcome = Outcome.SWAPPED
        if not await old.drain(self.drain_timeout):  # 3. drain
            outcome = Outcome.TIMED_OUT_DRAINING
            moved = old.mailbox.take_pending()
            new.mailbox.prepend(moved)
            log.warning(
                "swap %s: old version still busy after the %.1f s drain timeout; "
                "%d queued message(s) moved to the new version",
                name,
                self.drain_timeout,
                len(moved),
            )
        else:
            try:  # 4. hand over state
                state = await old.call(old.save_state)
                if state is not None and await new.call(
                    lambda: new.restore_state(state), first=True
                ):
                    log.info("swap %s: handed over %d bytes of state", name, len(state))
            except GuestTrap as exc:
                if exc.call == "save_state":
                    log.warning("swap %s: state not handed over: %s", name, exc)
                else:
                    await self._roll_back(old, new)
                    return Outcome.ROLLED_BACK, 0, str(exc), time.perf_counter()
        held = new.mailbox.depth
        new.release()  # 5. open, on probation
        opened = time.perf_counter()
        failure = await new.probation(self.probation)
        if failure is not None and outcome is Outcome.SWAPPED:
            await self._roll_back(old, new)
            return Outcome.ROLLED_BACK, held, failure, opened
        await old.close()
        return outcome, held, None, opened

    async def _roll_back(self, old: WasmModule, new: WasmModule) -> None:
        """The old version takes back its subscriptions and the new one's queued messages."""
        new.mailbox.hold()
        old.mailbox.hold()
        old.take_over(new)
        self.modules[old.name] = old
        await asyncio.to_thread(new.mailbox.wait_paused, 5.0)
        old.mailbox.prepend(new.mailbox.take_pending())
        old.mailbox.release()
        new.discard_held()
        await new.close()

    async def _unload(self, name: str, trigger: str) -> VersionRecord:
        module = self.modules.pop(name)
        begun, at = time.perf_counter(), time.time()
        idle = await module.drain(self.drain_timeout)
        await module.close()
        record = VersionRecord(
            sha256=module.compiled.sha256,
            size=module.compiled.size,
            at=at,
            trigger=trigger,
            outcome=Outcome.UNLOADED,
            duration_ms=(time.perf_counter() - begun) * 1000,
            error=None if idle else "drain timed out",
        )
        self.histories.setdefault(name, ModuleHistory()).add(record)
        log.info("unloaded module %s (%s, %.1f ms)", name, trigger, record.duration_ms)
        return record

    def _record(
        self,
        name: str,
        data: bytes,
        at: float,
        trigger: str,
        outcome: Outcome,
        begun: float,
        *,
        held: int = 0,
        error: str | None = None,
        until: float | None = None,
    ) -> VersionRecord:
        """Record an attempt; its duration runs from `begun` to `until` (default: now)."""
        end = time.perf_counter() if until is None else until
        record = VersionRecord(
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            at=at,
            trigger=trigger,
            outcome=outcome,
            duration_ms=(end - begun) * 1000,
            held=held,
            error=error,
        )
        self.histories.setdefault(name, ModuleHistory()).add(record, data)
        return record

    @staticmethod
    def _log_swap(name: str, old: WasmModule | None, sha: str, record: VersionRecord) -> None:
        before = old.compiled.sha256[:8] if old is not None else "none"
        line = "swap %s %s -> %s (%s): %s in %.1f ms, %d held"
        args = (
            name,
            before,
            sha[:8],
            record.trigger,
            record.outcome.value,
            record.duration_ms,
            record.held,
        )
        if record.error:
            log.warning(line + ": %s", *args, record.error)
        else:
            log.info(line, *args)

    # -- stopping --------------------------------------------------------------------------------

    async def quiesce(self, timeout: float) -> bool:
        """Wait until every mailbox is empty and idle at once (messages between modules
        settle), or `timeout` passes. Returns True when all were idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(m.mailbox.idle for m in self.modules.values()):
                return True
            await asyncio.sleep(0.005)
        return False

    async def stop(self) -> None:
        """Finish running swaps, let traffic settle, drain and close every module."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.drain_timeout + self.probation + 5)
        modules = list(self.modules.values())
        await self.quiesce(self.drain_timeout)
        results = await asyncio.gather(*(m.drain(self.drain_timeout) for m in modules))
        for module, idle in zip(modules, results, strict=True):
            if not idle:
                log.warning(
                    "module %s: drain timed out after %.1f s with %d message(s) queued",
                    module.name,
                    self.drain_timeout,
                    module.mailbox.depth,
                )
        await asyncio.gather(*(m.close() for m in modules))
        self.modules.clear()

    def live(self) -> list[WasmModule]:
        return [m for m in self.modules.values() if m.state is ModuleState.LIVE]
