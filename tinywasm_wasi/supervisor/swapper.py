"""Carries out what `policy/swap.py` decides: stage, cut over, drain, hand over, open, roll back.

One `SwapMachine` per module name decides; `Swapper.run` performs each action
it returns and feeds the result back as the next event, until the machine
rests. The first caller for a name runs the operation and any follow-up
coalesced into it; other callers meanwhile get None at once.

A swap replaces a running version without losing or duplicating a message:

1. stage: compile, validate, instantiate and `init()` the new version; its
   subscriptions are recorded and its effects held. Failure: the old version
   keeps serving and the attempt is recorded as refused.
2. cut over: one `Bus.swap` moves the subscriptions from old to new; from then
   every message goes to the new version's mailbox, which is held closed.
3. drain the old version: its queued messages, then its `drain()` export, up
   to the drain timeout (then its leftover messages move to the new version).
4. hand over state: old `save_state()` bytes -> new `restore_state()`.
5. open the new mailbox on probation; close the old version once the new one
   has survived the probation window. A trap in `restore_state` or during
   probation rolls back: the old version takes its subscriptions back, and the
   new version's queued messages (the failed one first) move to the old one.

HTTP requests travel through mailboxes with the messages, so the same steps
answer each request exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus import Bus
from tinywasm_wasi.config import Config
from tinywasm_wasi.exceptions import GuestTrap, ModuleClosedError, ModuleLoadError, TinywasmError
from tinywasm_wasi.policy.canary import Verdict
from tinywasm_wasi.policy.events import OUTCOME_EVENTS, LogEvent, event_extra
from tinywasm_wasi.policy.history import Outcome, Trigger, VersionRecord
from tinywasm_wasi.policy.limits import Limits
from tinywasm_wasi.policy.module_config import ModuleConfig
from tinywasm_wasi.policy.pins import FileVerdict, judge_file, pin_after
from tinywasm_wasi.policy.quarantine import Quarantine, next_backoff
from tinywasm_wasi.policy.rules import ModuleFileName, RuleError
from tinywasm_wasi.policy.scheduling import load_concurrency
from tinywasm_wasi.policy.swap import (
    Action,
    Event,
    Request,
    RequestKind,
    Resting,
    Step,
    SwapMachine,
)
from tinywasm_wasi.runtime.engine import CompiledModule, Runtime
from tinywasm_wasi.runtime.module import Broadcast, WasmModule
from tinywasm_wasi.supervisor.canary import CanaryRequest, CanaryRun
from tinywasm_wasi.supervisor.files import write_atomically
from tinywasm_wasi.supervisor.loader import ModuleLoader, Source
from tinywasm_wasi.supervisor.pins import PinStore
from tinywasm_wasi.supervisor.registry import Registry
from tinywasm_wasi.supervisor.timers import RetryTimers

__all__ = ["SwapSettings", "Swapper"]

log = logging.getLogger("tinywasm.host")

# The actions that begin an operation: each starts a new attempt.
STARTS = frozenset({Action.READ, Action.QUARANTINE, Action.START_RETRY})
STARTUP = Request(RequestKind.CHANGE, Trigger.STARTUP)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # what a refused read records


@dataclass(slots=True, kw_only=True)
class SwapSettings:
    """Shared by the host and its swapper; a change applies to the next operation."""

    mailbox_size: int
    mailbox_bytes: int = Config.mailbox_bytes
    drain_timeout: float = Config.drain_timeout
    probation: float = Config.swap_probation
    quarantine: tuple[int, float] = (Config.quarantine_traps, Config.quarantine_window)
    quarantine_backoff: float = Config.quarantine_backoff


@dataclass(slots=True)
class Attempt:
    """What one operation on a name has gathered so far, for its actions and its record."""

    name: str
    request: Request
    begun: float = field(default_factory=time.perf_counter)
    at: float = field(default_factory=time.time)
    old: WasmModule | None = None
    new: WasmModule | None = None
    file: ModuleFileName | None = None
    data: bytes | None = None  # the new bytes (kept in the history when they go live)
    sha: str = "-"
    compiled: CompiledModule | None = None  # the version acted on when no bytes were read
    error: str | None = None
    warning: str | None = None  # it went ahead, but lost something (e.g. the old state)
    held: int = 0
    opened: float | None = None  # perf_counter when the new version opened
    backoff: float = 0.0
    record: VersionRecord | None = None  # once recorded
    metadata: dict[str, Any] | None = None  # the new version's, once it started
    reason: str | None = None  # why a canary was promoted or rolled back


class Swapper:
    """Runs loads, swaps, unloads, quarantines and retries, one operation per name at a time."""

    def __init__(
        self,
        runtime: Runtime,
        bus: Bus,
        broadcast: Broadcast,
        loader: ModuleLoader,
        registry: Registry,
        settings: SwapSettings,
        on_faulty: Callable[[WasmModule], None],
        retry: Callable[[str], None],
        pins: PinStore | None = None,
    ) -> None:
        self._runtime = runtime
        self._bus = bus
        self._broadcast = broadcast
        self._loader = loader
        # Versions compiled and started at once, whatever asked for them (start-up, the
        # watcher, deploys, retries): a burst of thousands does not start thousands at once.
        self.staging = asyncio.Semaphore(load_concurrency(runtime.workers.size))
        self._registry = registry
        self.settings = settings
        self._on_faulty = on_faulty
        self.timers = RetryTimers(retry)
        self.pins = pins if pins is not None else PinStore(None)
        self._machines: dict[str, SwapMachine] = {}
        # Per name, while a caller runs operations on it: done when it rests again.
        self._running: dict[str, set[asyncio.Future[None]]] = {}

    # -- starting a version ------------------------------------------------------------------

    async def stage(
        self, name: str, data: bytes, path: Path | None, *, sha256: str | None = None
    ) -> WasmModule:
        """Compile, instantiate and start a version; subscriptions recorded, effects held."""
        if len(data) > self._loader.max_module_size:
            raise ModuleLoadError(
                f"the file is over the {self._loader.max_module_size} byte limit for modules "
                "(raise --max-module-size / TINYWASM_MAX_MODULE_SIZE)"
            )
        loader = self._loader

        def prepare() -> tuple[CompiledModule, Limits, ModuleConfig]:
            # Off the loop, with the compile: its limits and config are file reads too, and
            # each system call on the loop waits for the GIL while modules start.
            compiled = self._runtime.compile_module(name, data, path, sha256=sha256)
            return compiled, loader.limits_for(name), loader.config_for(name)

        async with self.staging:
            compiled, limits, config = await asyncio.to_thread(prepare)
            return await self.start_compiled(compiled, limits, config)

    async def start_compiled(
        self,
        compiled: CompiledModule,
        limits: Limits | None = None,
        config: ModuleConfig | None = None,
    ) -> WasmModule:
        """Instantiate and start `compiled`, with its limits and config (None: read now)."""
        s = self.settings
        module = WasmModule(
            compiled,
            self._runtime,
            self._bus,
            self._broadcast,
            mailbox_size=s.mailbox_size,
            mailbox_bytes=s.mailbox_bytes,
            limits=limits if limits is not None else self._loader.limits_for(compiled.name),
            config=config if config is not None else self._loader.config_for(compiled.name),
            quarantine=s.quarantine,
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

    # -- running operations --------------------------------------------------------------------

    def _machine(self, name: str) -> SwapMachine:
        machine = self._machines.get(name)
        if machine is None:
            machine = self._machines[name] = SwapMachine(name, resting=self._resting(name))
        return machine

    def _resting(self, name: str) -> Resting:
        view = self._registry.view
        if name in view.modules:
            return Resting.LIVE
        return Resting.QUARANTINED if name in view.quarantined else Resting.ABSENT

    async def run(self, name: str, request: Request) -> VersionRecord | None:
        """Ask for `request` on `name`; run it (and what is coalesced into it) if none runs.

        Returns the record of the last attempt this call ran, or None when it was
        coalesced into a running operation or changed nothing.
        """
        machine = self._machine(name)
        # The machine rests as soon as it hands out an operation's last actions (closing
        # the old version, recording), while they still run here. A request then waits
        # for them, so two operations never run on one name at once.
        while not machine.busy and name in self._running:
            await self.idle(name)
        step = machine.request(request)
        if not step.actions:
            if machine.busy:
                log.info(
                    "swap %s (%s): coalesced into the swap already running",
                    name,
                    request.trigger.value,
                )
            return None
        attempt = Attempt(name, request)
        last: VersionRecord | None = None
        # Tracked until its last actions (close old, record) are done: `idle` waits for them.
        running: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running.setdefault(name, set()).add(running)
        try:
            last = await self._run_steps(name, machine, step, attempt)
        finally:
            runners = self._running[name]
            runners.discard(running)
            if not runners:
                del self._running[name]
            running.set_result(None)
        return last

    def forget(self, name: str) -> None:
        """`name` came or went by other means (a move between workers): its machine starts
        afresh from the registry at the next request."""
        if name not in self._running:
            self._machines.pop(name, None)

    async def idle(self, name: str) -> None:
        """Wait until `name` rests: every runner of it (and their follow-ups) is done."""
        while runners := self._running.get(name):
            await asyncio.shield(next(iter(runners)))

    async def _run_steps(
        self, name: str, machine: SwapMachine, step: Step, attempt: Attempt
    ) -> VersionRecord | None:
        last: VersionRecord | None = None
        while step.actions:
            event: Event | None = None
            for action in step.actions:
                if action in STARTS:
                    assert step.request is not None
                    attempt = Attempt(name, step.request)
                try:
                    event = await self._do(action, attempt, step)
                except Exception:
                    log.exception("swap %s failed unexpectedly in %s", name, action.value)
                    step = machine.reset(self._resting(name))
                    break
                if action is Action.RECORD:
                    last = attempt.record
            else:
                if event is None:
                    break
                step = machine.handle(event)
        return last

    async def _do(self, action: Action, a: Attempt, step: Step) -> Event | None:
        """Perform one action; an action that ends a step returns the next event."""
        match action:
            case Action.READ:
                return await self._read(a)
            case Action.STAGE:
                return await self._stage(a)
            case Action.ACTIVATE:
                assert a.new is not None
                a.new.activate()
                self._registry.put(a.new)
                a.new.release()
            case Action.CUT_OVER:
                assert a.new is not None and a.old is not None
                a.new.hold()
                a.new.take_over(a.old)
                self._registry.put(a.new)
            case Action.DRAIN_OLD:
                assert a.old is not None
                idle = await a.old.drain(self.settings.drain_timeout)
                return Event.DRAINED if idle else Event.DRAIN_TIMED_OUT
            case Action.MOVE_QUEUED:
                assert a.old is not None and a.new is not None
                moved = a.old.hand_queue_to(a.new)
                log.warning(
                    "swap %s: old version still busy after the %.1f s drain timeout; "
                    "%d queued message(s) moved to the new version",
                    a.name,
                    self.settings.drain_timeout,
                    moved,
                )
            case Action.HAND_OVER_STATE:
                return await self._hand_over(a)
            case Action.OPEN:
                assert a.new is not None
                a.held = a.new.queued
                a.new.release()  # its effects held since start happen now, in order
                a.opened = time.perf_counter()
                self._log_serving(a)
                failure = await a.new.probation(self.settings.probation)
                if failure is None:
                    return Event.PROBATION_PASSED
                a.error = failure
                return Event.PROBATION_FAILED
            case Action.CLOSE_OLD:
                assert a.old is not None
                await a.old.close()
            case Action.ROLL_BACK:
                assert a.old is not None and a.new is not None
                if a.opened is None:
                    a.opened = time.perf_counter()
                self._registry.put(a.old)
                await a.old.take_back(a.new)
                return Event.ROLLED_BACK
            case Action.UNLOAD:
                return await self._unload(a)
            case Action.QUARANTINE:
                return await self._quarantine(a)
            case Action.SCHEDULE_RETRY:
                self.timers.schedule(a.name, a.backoff)
            case Action.CANCEL_RETRY:
                self.timers.cancel(a.name)
            case Action.END_QUARANTINE:
                self._registry.end_quarantine(a.name, remember=a.request.kind is RequestKind.RETRY)
            case Action.START_RETRY:
                return await self._start_retry(a)
            case Action.START_CANARY:
                return await self._start_canary(a)
            case Action.END_SPLIT:
                run = self._registry.end_canary(a.name)
                if run is not None:
                    await run.close()
            case Action.ABORT_CANARY:
                return await self._abort_canary(a)
            case Action.RECORD:
                assert step.outcome is not None
                self._record(a, step.outcome)
                await self._pin(a, step.outcome)
                await self._settle_canary(a, step.outcome)
        return None

    # -- the actions that take time ------------------------------------------------------------

    async def _read(self, a: Attempt) -> Event:
        a.old = old = self._registry.view.modules.get(a.name)
        a.file = file = old.file if old is not None else None
        source: Source | None = a.request.source  # type: ignore[assignment]
        if source is None:  # the module's file, as the folder has it now
            try:
                a.file = file = await asyncio.to_thread(self._locate, a.name)
            except RuleError as exc:
                a.error, a.data, a.sha = str(exc), b"", EMPTY_SHA256
                return Event.READ_FAILED
            source = self._loader.reader(self._loader.path_of(file))
        try:
            data = await asyncio.to_thread(source)
        except TinywasmError as exc:  # not a regular file, unreadable
            a.error, a.data, a.sha = str(exc), b"", EMPTY_SHA256
            return Event.READ_FAILED
        from_file = a.request.source is None
        if data is None:
            if from_file:
                self.pins.drop(a.name, "its file was deleted")
                self._registry.accept(a.name)  # no file: nothing of that name is refused
            return Event.READ_GONE
        a.data, a.sha = data, hashlib.sha256(data).hexdigest()
        if from_file:
            verdict = judge_file(self.pins.get(a.name), a.sha)
            if verdict is FileVerdict.PINNED:
                log.debug("swap %s: the file still holds the version rolled back from", a.name)
                return Event.READ_SAME
            if verdict is FileVerdict.CHANGED:
                self.pins.drop(a.name, "its file changed")
        if old is None or old.compiled.sha256 != a.sha:
            return Event.READ_NEW
        try:
            config_changed = self._loader.config_for(a.name) != old.config
        except ModuleLoadError as exc:
            a.error = str(exc)
            return Event.READ_FAILED
        if config_changed:
            log.info("module %s: its config changed; swapping it to the same bytes", a.name)
            return Event.READ_NEW
        if self._loader.limits_for(a.name) != old.limits:
            log.info(
                "module %s: its limits in limits.toml changed; swapping it to apply them", a.name
            )
            return Event.READ_NEW
        if file != old.file:  # renamed: only the rule or order changed
            log.info(
                "module %s: now %s (rule %s)",
                a.name,
                file.file if file else "-",
                file.rule if file and file.rule else "none",
            )
            old.file = file
            self._registry.renamed(a.name)  # the middlewares and their order are found again
        else:
            log.debug(
                "swap %s (%s): same bytes as the running version, nothing to do",
                a.name,
                a.request.trigger.value,
            )
        return Event.READ_SAME

    def _locate(self, name: str) -> ModuleFileName | None:
        """In a thread: module `name`'s file in the folder, with its rule.txt rule if any."""
        found = self._loader.find_file(name)
        return None if found is None else self._loader.with_rule_txt(found)

    async def _stage(self, a: Attempt) -> Event:
        assert a.data is not None
        # The attempt's time runs from here: reading the file is the watcher's part.
        a.begun, a.at = time.perf_counter(), time.time()
        try:
            a.new = await self.stage(a.name, a.data, self._loader.path_of(a.file), sha256=a.sha)
        except TinywasmError as exc:
            a.error = str(exc)
            return Event.STAGE_FAILED
        a.new.file = a.file
        if a.new.metadata is not None:
            a.metadata = a.new.metadata.to_json()
        self._registry.accept(a.name)
        return Event.STAGED

    async def _start_canary(self, a: Attempt) -> Event:
        request = a.request.source
        assert isinstance(request, CanaryRequest)
        assert a.old is not None and a.new is not None
        run = CanaryRun(a.old, a.new, request.settings)
        a.new.release()  # its effects held since start happen now
        self._registry.start_canary(a.name, run)
        run.start()
        log.info(
            "canary %s %s beside %s: %g%% of traffic",
            a.name,
            a.sha[:8],
            a.old.compiled.sha256[:8],
            request.settings.percent,
        )
        if not request.started.done():
            request.started.set_result(run)
        verdict, a.reason = await run.verdict
        if verdict is Verdict.PROMOTE:
            return Event.CANARY_PROMOTED
        a.error = a.reason
        return Event.CANARY_ABORTED

    async def _settle_canary(self, a: Attempt, outcome: Outcome) -> None:
        """A canary that never started says why; a promoted one's bytes become its file."""
        request = a.request.source
        if not isinstance(request, CanaryRequest):
            return
        if not request.started.done():
            request.started.set_result(a.error or outcome.value)
        if outcome is Outcome.PROMOTED and self._loader.directory is not None:
            found = self._loader.find_file(a.name)
            path = self._loader.directory / (found.file if found else f"{a.name}.wasm")
            try:
                await asyncio.to_thread(write_atomically, path, request.data)
            except OSError as exc:
                log.error("canary %s promoted, but %s cannot be written: %s", a.name, path, exc)
            self.pins.drop(a.name, "a canary was promoted")

    async def _abort_canary(self, a: Attempt) -> Event:
        old, new = a.old, a.new
        assert old is not None and new is not None
        run = self._registry.end_canary(a.name)
        if run is not None:
            await run.close()
        a.opened = time.perf_counter()
        new.hold()
        await asyncio.to_thread(new.mailbox.wait_paused, 5.0)
        moved = old.absorb(new)
        await new.close()
        log.warning(
            "canary %s rolled back: %s; %d queued item(s) moved back", a.name, a.error, moved
        )
        return Event.ROLLED_BACK

    async def _hand_over(self, a: Attempt) -> Event:
        old, new = a.old, a.new
        assert old is not None and new is not None
        try:
            state = await old.call(old.save_state)
            if state is not None:
                dropped = await new.call(lambda: new.restore_state(state), first=True)
                if dropped is None:
                    log.info("swap %s: handed over %d bytes of state", a.name, len(state))
                else:  # logged with the swap's own line, and kept in its history record
                    a.warning = f"{dropped}; {len(state)} bytes of state dropped"
        except GuestTrap as exc:
            if exc.call != "save_state":
                a.error = str(exc)
                return Event.RESTORE_TRAPPED
            log.warning("swap %s: state not handed over: %s", a.name, exc)
        return Event.HANDED_OVER

    async def _unload(self, a: Attempt) -> Event:
        module = self._registry.pop(a.name)
        a.compiled = module.compiled
        idle = await module.drain(self.settings.drain_timeout)
        await module.close()
        a.error = None if idle else "drain timed out"
        return Event.UNLOADED

    async def _quarantine(self, a: Attempt) -> Event:
        module = self._registry.view.modules.get(a.name)
        if module is None or not module.faulty:
            return Event.NOT_FAULTY  # swapped or unloaded meanwhile
        now = time.time()
        self._registry.pop(a.name)
        a.compiled = module.compiled
        snapshot = module.snapshot()
        dropped = module.fail_pending(
            ModuleClosedError(f"module {a.name!r} is quarantined: it kept trapping")
        )
        await module.close(timeout=1.0)
        previous = self._registry.previous_quarantine(a.name)
        a.backoff = next_backoff(previous, self.settings.quarantine_backoff, now)
        self._registry.quarantine(
            a.name,
            Quarantine(
                compiled=module.compiled,
                error=module.last_error,
                since=now,
                backoff=a.backoff,
                retry_at=now + a.backoff,
                retries=previous.retries if previous else 0,
                snapshot=snapshot,
            ),
        )
        traps, window = self.settings.quarantine
        a.error = f"{traps} traps within {window:g} s; last: {module.last_error}"
        log.log(
            LogEvent.QUARANTINE.level,
            "module %s quarantined after %s; %d queued message(s) dropped; "
            "retrying in %g s (or when its file changes)",
            a.name,
            a.error,
            dropped,
            a.backoff,
            extra=event_extra(
                LogEvent.QUARANTINE,
                a.name,
                sha256=module.compiled.sha256,
                error=a.error,
                dropped=dropped,
                retry_in=a.backoff,
            ),
        )
        return Event.QUARANTINED

    async def _start_retry(self, a: Attempt) -> Event:
        entry = self._registry.view.quarantined[a.name]
        entry.retries += 1
        entry.retry_at = time.time()
        a.compiled = entry.compiled
        try:
            a.new = await self.start_compiled(entry.compiled)
        except TinywasmError as exc:
            a.backoff = next_backoff(entry, self.settings.quarantine_backoff, time.time())
            entry.error, entry.backoff = str(exc), a.backoff
            entry.retry_at = time.time() + a.backoff
            a.error = str(exc)
            log.log(
                LogEvent.RETRY.level,
                "module %s: retry failed (%s); next retry in %g s",
                a.name,
                exc,
                a.backoff,
                extra=event_extra(
                    LogEvent.RETRY,
                    a.name,
                    sha256=entry.compiled.sha256,
                    retries=entry.retries,
                    error=str(exc),
                    retry_in=a.backoff,
                ),
            )
            return Event.RETRY_FAILED
        log.log(
            LogEvent.RETRY.level,
            "module %s: back in service after quarantine (retry %d)",
            a.name,
            entry.retries,
            extra=event_extra(
                LogEvent.RETRY, a.name, sha256=entry.compiled.sha256, retries=entry.retries
            ),
        )
        return Event.RETRY_STARTED

    async def _pin(self, a: Attempt, outcome: Outcome) -> None:
        """After a rollback, pin what runs if the file holds another version (sticky)."""
        trigger = a.request.trigger
        if outcome is not Outcome.ROLLED_BACK and trigger is not Trigger.ROLLBACK:
            return
        live = self._registry.view.modules.get(a.name)
        live_sha = None if live is None else live.compiled.sha256
        if a.request.source is None and a.data:
            file_sha: str | None = a.sha  # the file's bytes were just read
        else:
            path = self._loader.path_of(self._loader.find_file(a.name))
            data = None if path is None else await asyncio.to_thread(self._loader.reader(path))
            file_sha = None if data is None else hashlib.sha256(data).hexdigest()
        pin = pin_after(a.name, outcome, trigger, live_sha, file_sha, time.time())
        history = self._registry.view.histories.get(a.name)
        data = None if pin is None or history is None else history.bytes_of(pin.sha256)
        if pin is None or data is None:
            self.pins.drop(a.name, "it serves its file's version again")
            return
        self.pins.put(pin, data)

    # -- history -------------------------------------------------------------------------------

    def _keep(self, a: Attempt, outcome: Outcome) -> VersionRecord:
        """Put the attempt in the history: the bytes read when there are some, else the
        version acted on. Its duration runs until the new version opened (or now)."""
        end = a.opened if a.opened is not None else time.perf_counter()
        kept = a.data if a.compiled is None else None
        if kept is not None:
            sha, size = a.sha, len(kept)
        else:
            assert a.compiled is not None
            sha, size = a.compiled.sha256, a.compiled.size
        a.record = VersionRecord(
            sha256=sha,
            size=size,
            at=a.at,
            trigger=a.request.trigger,
            outcome=outcome,
            duration_ms=(end - a.begun) * 1000,
            held=a.held,
            error=a.error,
            warning=a.warning,
            metadata=a.metadata,
            reason=a.reason,
        )
        self._registry.record(a.name, a.record, kept)
        return a.record

    def _log_serving(self, a: Attempt) -> None:
        """The swap line, logged the moment the new version serves (probation still runs)."""
        if a.request.kind is not RequestKind.CHANGE or a.new is None:
            return
        event = LogEvent.ROLLBACK if a.request.trigger is Trigger.ROLLBACK else LogEvent.SWAP
        took = ((a.opened or time.perf_counter()) - a.begun) * 1000
        before = a.old.compiled.sha256 if a.old is not None else None
        log.log(
            event.level,
            "swap %s %s -> %s (%s): serving in %.1f ms, %d held; on probation for %g s",
            a.name,
            before[:8] if before else "none",
            a.new.compiled.sha256[:8],
            a.request.trigger.value,
            took,
            a.held,
            self.settings.probation,
            extra=event_extra(
                event,
                a.name,
                sha256=a.new.compiled.sha256,
                previous_sha256=before,
                trigger=a.request.trigger.value,
                duration_ms=round(took, 3),
                held=a.held,
            ),
        )

    def _record(self, a: Attempt, outcome: Outcome) -> None:
        """Record the attempt and log its line (the swap line was logged when it served)."""
        record = self._keep(a, outcome)
        if a.request.kind not in (RequestKind.CHANGE, RequestKind.CANARY):
            return  # quarantine and retry log their own lines
        if outcome in (Outcome.REFUSED, Outcome.ROLLED_BACK):
            self._registry.refuse(a.name, a.error or outcome.value)
        event, line = OUTCOME_EVENTS[outcome]
        detail = " (%s, sha256 %s, %.1f ms, %d held)"
        args: tuple[object, ...] = (
            a.name,
            record.trigger.value,
            record.sha256[:8],
            record.duration_ms,
            record.held,
        )
        if record.error:
            detail += ": %s"
            args += (record.error,)
        elif record.warning:
            detail += ", but %s"
            args += (record.warning,)
        log.log(
            logging.WARNING if record.warning and not record.error else event.level,
            line + detail,
            *args,
            extra=event_extra(
                event,
                a.name,
                sha256=record.sha256,
                trigger=record.trigger.value,
                outcome=outcome.value,
                duration_ms=round(record.duration_ms, 3),
                held=record.held,
                error=record.error,
                warning=record.warning,
            ),
        )

    def record_startup(
        self,
        name: str,
        data: bytes,
        sha256: str,
        outcome: Outcome,
        begun: float,
        at: float,
        error: str | None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Record a load made by the start-up passes (not through a machine; they log)."""
        a = Attempt(
            name, STARTUP, begun=begun, at=at, data=data, sha=sha256, error=error, metadata=metadata
        )
        self._keep(a, outcome)
