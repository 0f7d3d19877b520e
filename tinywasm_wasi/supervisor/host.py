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

HTTP requests travel through mailboxes with the messages, so the same steps
answer each request exactly once. A module that keeps trapping is quarantined
(`quarantine.py`): taken out of service through the same per-name gate as a
swap, then retried with a fresh instance after a backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from bus import Bus
from tinywasm_wasi.exceptions import GuestTrap, ModuleClosedError, ModuleLoadError, TinywasmError
from tinywasm_wasi.policy.history import ModuleHistory, Outcome, SwapGate, VersionRecord
from tinywasm_wasi.policy.limits import LIMITS_FILE, Limits, LimitsError, load_overrides
from tinywasm_wasi.policy.quarantine import Quarantine, next_backoff
from tinywasm_wasi.policy.rules import ModuleFileName, RuleError, load_rule_txt, parse_file_name
from tinywasm_wasi.runtime.engine import CompiledModule, Runtime
from tinywasm_wasi.runtime.mailbox import Request
from tinywasm_wasi.runtime.module import Broadcast, ModuleState, WasmModule

__all__ = ["ModuleHost", "is_module_file"]

log = logging.getLogger("tinywasm.host")

# Where a swap's new bytes come from: a callable so a follow-up re-reads the file.
Source = Callable[[], bytes | None]

# Gate triggers that are not swaps to new bytes.
QUARANTINE, RETRY = "quarantine", "retry"
DEFAULT_MAX_MODULE_SIZE = 16 * 1024 * 1024


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


def read_file(path: Path, max_size: int = DEFAULT_MAX_MODULE_SIZE) -> Source:
    """A source that reads `path` when called; None when the file is gone.

    Reads at most one byte past `max_size`, so an oversized file is refused
    without being read whole.
    """

    def read() -> bytes | None:
        try:
            with path.open("rb") as f:
                return f.read(max_size + 1)
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
        mailbox_bytes: int = 64 * 1024 * 1024,
        probation: float = 0.5,
        limits: Limits | None = None,
        max_module_size: int = DEFAULT_MAX_MODULE_SIZE,
        quarantine: tuple[int, float] = (5, 10.0),
        quarantine_backoff: float = 5.0,
    ) -> None:
        self.runtime = runtime
        self.bus = bus
        self._broadcast = broadcast
        self.mailbox_size = mailbox_size
        self.mailbox_bytes = mailbox_bytes
        self.drain_timeout = drain_timeout
        self.probation = probation
        self.limits = limits or Limits()
        self.max_module_size = max_module_size
        self.quarantine_rule = quarantine
        self.quarantine_backoff = quarantine_backoff
        self.directory: Path | None = None
        self.modules: dict[str, WasmModule] = {}
        self.quarantined: dict[str, Quarantine[CompiledModule]] = {}
        self._last_quarantine: dict[str, Quarantine[CompiledModule]] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._overrides: dict[str, Limits] = {}  # from limits.toml, per module name
        self._limits_stamp: tuple[int, int, int] | None = None  # the file when last read
        self.refused: dict[str, str] = {}
        self.histories: dict[str, ModuleHistory] = {}
        self._gates: dict[str, SwapGate[tuple[Source | None, str]]] = {}
        self._tasks: set[asyncio.Task[VersionRecord | None]] = set()

    # -- loading a folder --------------------------------------------------------------------

    def find_file(self, name: str) -> ModuleFileName | None:
        """The file module `name` loads from now: ``name.wasm`` or ``[NN-]name@[rule].wasm``.

        Looked up in the folder each time, so a rename (a middleware's new rule)
        is seen by the next load or swap. With several candidates the first by
        file name wins (the others are refused at startup with the reason).
        """
        if self.directory is None:
            return None
        try:
            files = sorted(p.name for p in self.directory.iterdir() if is_module_file(p))
        except OSError:
            return None
        for file_name in files:
            try:
                parsed = parse_file_name(file_name)
            except RuleError:
                continue
            if parsed.name == name:
                return parsed
        return None

    def _with_rule_txt(self, parsed: ModuleFileName) -> ModuleFileName:
        """The reference layout: a `rule.txt` gives a module without `@[rule]` its rule."""
        if parsed.rule is not None or self.directory is None:
            return parsed
        found = load_rule_txt(self.directory, parsed.name)  # raises RuleError
        if found is None:
            return parsed
        return ModuleFileName(parsed.file, parsed.name, found[0], parsed.order)

    def middlewares(self) -> list[WasmModule]:
        """Live middleware modules, in the order they run (see `rules.py`)."""
        found = [(m.file.order_key, m) for m in self.modules.values() if m.file and m.file.rule]
        return [m for _key, m in sorted(found, key=lambda pair: pair[0])]

    async def load_dir(self, directory: Path) -> None:
        """Load every module file in `directory` (sorted by name)."""
        self.directory = directory
        self._loop = asyncio.get_running_loop()
        if not directory.is_dir():
            log.error(
                "modules folder %s does not exist: no modules loaded "
                "(set --modules-dir or TINYWASM_MODULES_DIR)",
                directory,
            )
            return
        paths = []
        names: dict[str, str] = {}
        for path in sorted(p for p in directory.iterdir() if is_module_file(p)):
            try:
                name = parse_file_name(path.name).name
            except RuleError as exc:
                self.refused[path.name] = str(exc)
                log.error("refused module file %s: %s", path.name, exc)
                continue
            if name in names:
                reason = f"module {name!r} already loads from {names[name]}; remove one of them"
                self.refused[path.name] = reason
                log.error("refused module file %s: %s", path.name, reason)
                continue
            names[name] = path.name
            paths.append(path)
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
        name = path.name
        begun, at = time.perf_counter(), time.time()
        data = b""
        try:
            file = self._with_rule_txt(parse_file_name(path.name))
            name = file.name
            raw: bytes | None = await asyncio.to_thread(read_file(path, self.max_module_size))
            data = raw or b""
            module = await self._stage(name, data, path)
            module.file = file
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
        if len(data) > self.max_module_size:
            raise ModuleLoadError(
                f"the file is over the {self.max_module_size} byte limit for modules "
                "(raise --max-module-size / TINYWASM_MAX_MODULE_SIZE)"
            )
        compiled = await asyncio.to_thread(self.runtime.compile_module, name, data, path)
        return await self._start_compiled(compiled)

    async def _start_compiled(self, compiled: CompiledModule) -> WasmModule:
        module = WasmModule(
            compiled,
            self.runtime,
            self.bus,
            self._broadcast,
            mailbox_size=self.mailbox_size,
            mailbox_bytes=self.mailbox_bytes,
            limits=self.limits_for(compiled.name),
            quarantine=self.quarantine_rule,
            on_faulty=self._on_faulty,
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

    def limits_for(self, name: str) -> Limits:
        """The limits for module `name`: the defaults, overridden by limits.toml if it says so.

        The file is looked at at every load, so an edit applies to the next load or
        swap; it is parsed again only when it changed (a folder of hundreds of modules
        starts with one parse). A broken file is logged and ignored (the defaults apply).
        """
        if self.directory is None:
            return self.limits
        try:
            info = (self.directory / LIMITS_FILE).stat()
            stamp: tuple[int, int, int] | None = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            stamp = None
        if stamp != self._limits_stamp:
            self._limits_stamp = stamp
            try:
                self._overrides = load_overrides(self.directory, self.limits)
            except LimitsError as exc:
                log.error("ignoring the limits file: %s", exc)
                self._overrides = {}
        return self._overrides.get(name, self.limits)

    # -- quarantine --------------------------------------------------------------------------

    def _on_faulty(self, module: WasmModule) -> None:
        """From the module's thread: it trapped too often; take it out on the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.schedule, module.name, QUARANTINE)

    async def _quarantine(self, name: str) -> VersionRecord | None:
        module = self.modules.get(name)
        if module is None or not module.faulty:
            return None  # swapped or unloaded meanwhile
        begun, at, now = time.perf_counter(), time.time(), time.time()
        del self.modules[name]
        snapshot = module.snapshot()
        dropped = 0
        for item in module.mailbox.take_pending():
            if isinstance(item, Request):
                item.fail(ModuleClosedError(f"module {name!r} is quarantined: it kept trapping"))
            else:
                dropped += 1
        await module.close(timeout=1.0)
        previous = self.quarantined.get(name) or self._last_quarantine.get(name)
        backoff = next_backoff(previous, self.quarantine_backoff, now)
        self.quarantined[name] = Quarantine(
            compiled=module.compiled,
            error=module.last_error,
            since=now,
            backoff=backoff,
            retry_at=now + backoff,
            retries=previous.retries if previous else 0,
            snapshot=snapshot,
        )
        self._schedule_retry(name, backoff)
        traps, window = self.quarantine_rule
        error = f"{traps} traps within {window:g} s; last: {module.last_error}"
        record = self._record_version(
            module.compiled, at, QUARANTINE, Outcome.QUARANTINED, begun, error
        )
        log.error(
            "module %s quarantined after %s; %d queued message(s) dropped; "
            "retrying in %g s (or when its file changes)",
            name,
            error,
            dropped,
            backoff,
        )
        return record

    def _schedule_retry(self, name: str, delay: float) -> None:
        self._cancel_retry(name)
        loop = asyncio.get_running_loop()
        self._retries[name] = loop.call_later(delay, self.schedule, name, RETRY)

    def _cancel_retry(self, name: str) -> None:
        timer = self._retries.pop(name, None)
        if timer is not None:
            timer.cancel()

    async def _retry(self, name: str) -> VersionRecord | None:
        entry = self.quarantined.get(name)
        if entry is None or name in self.modules:
            return None
        begun, at = time.perf_counter(), time.time()
        error: str | None = None
        entry.retries += 1
        entry.retry_at = time.time()
        compiled = entry.compiled
        try:
            module = await self._start_compiled(compiled)
        except TinywasmError as exc:
            backoff = next_backoff(entry, self.quarantine_backoff, time.time())
            entry.error, entry.backoff, entry.retry_at = str(exc), backoff, time.time() + backoff
            self._schedule_retry(name, backoff)
            log.error("module %s: retry failed (%s); next retry in %g s", name, exc, backoff)
            outcome, error = Outcome.REFUSED, str(exc)
        else:
            module.activate()
            self.modules[name] = module
            module.release()
            # Out of the list, but kept: a relapse soon after doubles the backoff.
            self._last_quarantine[name] = self.quarantined.pop(name)
            log.info("module %s: back in service after quarantine (retry %d)", name, entry.retries)
            outcome = Outcome.LOADED
        return self._record_version(compiled, at, RETRY, outcome, begun, error)

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
        if source is None and self.directory is None:
            raise RuntimeError("no modules folder: load_dir() first")
        gate = self._gates.setdefault(name, SwapGate())
        first: tuple[Source | None, str] = (source, trigger)
        if not gate.request(first):
            log.info("swap %s (%s): coalesced into the swap already running", name, trigger)
            return None
        record = None
        request: tuple[Source | None, str] | None = first
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

    async def _apply(self, name: str, source: Source | None, trigger: str) -> VersionRecord | None:
        if trigger == QUARANTINE:
            return await self._quarantine(name)
        if trigger == RETRY:
            return await self._retry(name)
        old = self.modules.get(name)
        file = old.file if old is not None else None
        if source is None:  # the module's file, as the folder has it now
            begun, at = time.perf_counter(), time.time()
            try:
                found = await asyncio.to_thread(self.find_file, name)
                file = None if found is None else self._with_rule_txt(found)
            except RuleError as exc:
                self.refused[name] = str(exc)
                record = self._record(
                    name, b"", at, trigger, Outcome.REFUSED, begun, error=str(exc)
                )
                self._log_swap(name, old, "-", record)
                return record
            assert self.directory is not None
            path = None if file is None else self.directory / file.file
            source = (lambda: None) if path is None else read_file(path, self.max_module_size)
        data = await asyncio.to_thread(source)
        if data is None:
            if name in self.quarantined:  # its file is gone: no more retries
                self._cancel_retry(name)
                del self.quarantined[name]
            return await self._unload(name, trigger) if old is not None else None
        sha = hashlib.sha256(data).hexdigest()
        limits_changed = old is not None and self.limits_for(name) != old.limits
        if limits_changed and old is not None and old.compiled.sha256 == sha:
            log.info(
                "module %s: its limits in limits.toml changed; swapping it to apply them", name
            )
        if old is not None and old.compiled.sha256 == sha and not limits_changed:
            if file != old.file:  # renamed: only the rule or order changed
                log.info(
                    "module %s: now %s (rule %s)",
                    name,
                    file.file if file else "-",
                    file.rule if file and file.rule else "none",
                )
                old.file = file
            else:
                log.debug(
                    "swap %s (%s): same bytes as the running version, nothing to do", name, trigger
                )
            return None
        begun, at = time.perf_counter(), time.time()
        path = self.directory / file.file if self.directory and file else None
        try:
            new = await self._stage(name, data, path)
            new.file = file
        except TinywasmError as exc:
            self.refused[name] = str(exc)
            record = self._record(name, data, at, trigger, Outcome.REFUSED, begun, error=str(exc))
            self._log_swap(name, old, sha, record)
            return record
        self.refused.pop(name, None)
        if name in self.quarantined:  # new bytes end a quarantine at once
            self._cancel_retry(name)
            del self.quarantined[name]
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
        error = None if idle else "drain timed out"
        record = self._record_version(module.compiled, at, trigger, Outcome.UNLOADED, begun, error)
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

    def _record_version(
        self,
        compiled: CompiledModule,
        at: float,
        trigger: str,
        outcome: Outcome,
        begun: float,
        error: str | None = None,
    ) -> VersionRecord:
        """Record an attempt on a version already compiled (its bytes are not kept)."""
        record = VersionRecord(
            sha256=compiled.sha256,
            size=compiled.size,
            at=at,
            trigger=trigger,
            outcome=outcome,
            duration_ms=(time.perf_counter() - begun) * 1000,
            error=error,
        )
        self.histories.setdefault(compiled.name, ModuleHistory()).add(record)
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
        for name in list(self._retries):
            self._cancel_retry(name)
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
