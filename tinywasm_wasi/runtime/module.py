"""A loaded module: one Guest, its mailbox, its subscriptions and its side effects.

Life cycle: `ModuleState`, with the transitions in `policy/lifecycle.py`.

While STARTING, the guest runs `_initialize`/`_start` and `init()`. What it
does then is recorded, not performed: subscriptions are pending and publishes
and broadcasts are held. `activate()` makes the subscriptions live on the bus;
`release()` then performs the held effects in order. A server starting many
modules activates all of them before releasing any, so a module may publish
from `init()` and every module loaded with it receives the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from bus import Bus, Subscription
from tinywasm_wasi.config import Config
from tinywasm_wasi.exceptions import (
    GuestTrap,
    MailboxFullError,
    ModuleClosedError,
    ModuleLoadError,
    TrapCode,
)
from tinywasm_wasi.policy.histogram import CALL_BUCKETS, Histogram
from tinywasm_wasi.policy.lifecycle import ModuleState, check_transition
from tinywasm_wasi.policy.limits import Limits, Replicas
from tinywasm_wasi.policy.metadata import Metadata, MetadataError, parse_metadata
from tinywasm_wasi.policy.module_config import ModuleConfig
from tinywasm_wasi.policy.ratelimit import LogLimiter
from tinywasm_wasi.policy.rules import ModuleFileName, Rule
from tinywasm_wasi.policy.traps import TrapWindow
from tinywasm_wasi.runtime.bridge import Answers
from tinywasm_wasi.runtime.effects import Broadcast, ModuleCounters, ModuleEffects
from tinywasm_wasi.runtime.engine import CompiledModule, Runtime
from tinywasm_wasi.runtime.guest import Guest
from tinywasm_wasi.runtime.mailbox import Delivery, Mailbox, Pending, Request, Requeued

__all__ = [
    "Broadcast",
    "Delivery",
    "Health",
    "ModuleCounters",
    "ModuleState",
    "TrapCode",
    "WasmModule",
]

log = logging.getLogger("tinywasm.module")


class Health(enum.StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class WasmModule:
    """One running version of a module. Its guest is touched only by its mailbox's items
    (on a pool worker, one item at a time)."""

    def __init__(
        self,
        compiled: CompiledModule,
        runtime: Runtime,
        bus: Bus,
        broadcast: Broadcast,
        *,
        mailbox_size: int,
        mailbox_bytes: int = Config.mailbox_bytes,
        limits: Limits | None = None,
        quarantine: tuple[int, float] = (Config.quarantine_traps, Config.quarantine_window),
        on_faulty: Callable[[WasmModule], None] | None = None,
        config: ModuleConfig | None = None,
    ) -> None:
        self.compiled = compiled
        self.config = config or ModuleConfig()  # from <name>.toml; secrets never shown
        self.name = compiled.name
        self.limits = limits or Limits()
        # The file it was loaded from, with its middleware rule (None: not from a folder).
        self.file: ModuleFileName | None = None
        self._runtime = runtime
        self._guest: Guest | None = None
        self._state = ModuleState.STARTING
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self.counters = ModuleCounters()
        # Guest call durations by export (message handler, HTTP export), for /metrics;
        # each is observed inside the module's mailbox items only (one at a time).
        interface = compiled.interface
        self._deliver_seconds = Histogram(CALL_BUCKETS)
        self._http_seconds = Histogram(CALL_BUCKETS)
        self.call_seconds: dict[str, Histogram] = {}
        if interface.handler:
            self.call_seconds[interface.handler] = self._deliver_seconds
        if interface.http:
            self.call_seconds[interface.http] = self._http_seconds
        self.traps_by_code: dict[str, int] = {}
        self._effects = ModuleEffects(
            self.name,
            bus,
            broadcast,
            self.counters,
            self._on_bus_message,
            group=self.name if self.limits.replicas is Replicas.ALL else None,
            grants=self.limits.grants,
        )
        self._on_probation = False
        self._probation_failed: Callable[[], None] | None = None  # wakes `probation()`
        self._warn_drop = LogLimiter(log)
        # Quarantine: `quarantine[0]` traps within `quarantine[1]` seconds call on_faulty once.
        self._traps = TrapWindow(*quarantine)
        self._on_faulty = on_faulty
        self.faulty = False
        self.metadata: Metadata | None = None  # from get_metadata, checked at start
        self.health: Health | None = None  # None: it exports no health_check
        self.health_error: str | None = None
        self._answers: Answers | None = None  # settles HTTP answers on the loop, batched
        # During a canary, on the live version: picks the version each bus message goes to.
        self._split: Callable[[], WasmModule | None] | None = None
        self.mailbox = Mailbox(
            self.name,
            mailbox_size,
            self._deliver,
            self._answer,
            byte_capacity=mailbox_bytes,
            pool=runtime.workers,
        )

    # -- life cycle (event loop) -----------------------------------------------------------

    @property
    def state(self) -> ModuleState:
        return self._state

    def _move_to(self, state: ModuleState) -> None:
        """Change state as `policy/lifecycle.py` allows (raises ModuleStateError otherwise)."""
        if state is not self._state:
            self._state = check_transition(self.name, self._state, state)

    async def start(self) -> None:
        """Instantiate the guest in its mailbox and run its entry point and `init()`.

        Raises ModuleLoadError/GuestTrap; the module is then FAILED and closed.
        """
        try:
            await asyncio.wrap_future(self.mailbox.call(self._start_guest))
        except BaseException as exc:
            self._move_to(ModuleState.FAILED)
            self.last_error = str(exc)
            self._discard()
            raise

    def _start_guest(self) -> None:
        c = self.compiled
        guest = self._guest = Guest(
            self.name,
            self._runtime.engine,
            c.module,
            c.interface,
            self._effects,
            self.limits,
            self.config.encoded(),
        )
        try:
            guest.start()
            self._check_before_traffic(guest)
        except BaseException:
            # Closed here, in its own item: the close queued by `_discard` may never run.
            self._guest = None
            guest.close()
            raise

    def _check_before_traffic(self, guest: Guest) -> None:
        """Config, metadata and health check, after init and before the version takes traffic."""
        verdict = guest.validate_config()
        if verdict is not None and verdict != 0:
            raise ModuleLoadError(
                f"validate_config() returned {verdict}: it refuses its config "
                f"({', '.join(sorted(self.config.values)) or 'no keys'}); fix <name>.toml"
            )
        raw = guest.metadata()
        if raw is not None:
            try:
                self.metadata = parse_metadata(raw, self.name)
            except MetadataError as exc:
                raise ModuleLoadError(f"invalid metadata: {exc}") from None
        result = guest.health_check()  # before it takes any traffic
        if result is not None and result != 0:
            raise ModuleLoadError(
                f"health_check() returned {result} (0 is healthy): the version is refused"
            )
        if result is not None:
            self.health = Health.HEALTHY

    async def check_health(self, timeout: float) -> Health | None:
        """Run `health_check()` in turn with the mailbox; None if the module has none.

        A non-zero result, a trap or no answer within `timeout` marks it unhealthy
        (`health_error` says why); it keeps serving, and the status shows it.
        """
        if not self.compiled.interface.has_health_check or self._state is not ModuleState.LIVE:
            return None
        error: str | None = None
        try:
            async with asyncio.timeout(timeout):
                result = await self.call(self._health_call)
            if result != 0:
                error = f"health_check() returned {result}"
        except GuestTrap as exc:
            error = str(exc)
        except TimeoutError:
            error = f"health_check() did not answer within {timeout:g} s (mailbox busy or stuck)"
        except ModuleClosedError:
            return None
        was = self.health
        self.health = Health.UNHEALTHY if error else Health.HEALTHY
        self.health_error = error
        if self.health is not was:
            if error:
                log.warning("module %s is unhealthy: %s", self.name, error)
            else:
                log.info("module %s is healthy again", self.name)
        return self.health

    def _health_call(self) -> int:
        guest = self._guest
        if guest is None:
            raise ModuleClosedError(f"module {self.name!r} is closed")
        return guest.health_check() or 0

    def activate(self) -> None:
        """Make the subscriptions recorded during start live on the bus."""
        self.take_over(None)

    def take_over(self, other: WasmModule | None, also_cancel: Sequence[Subscription] = ()) -> None:
        """Cut over: `other`'s subscriptions go, this module's go live, in one bus step.

        No publish sees a state in between, so each message goes to exactly one
        of the two. Used to activate a new version (`other` is the old one, or
        None) and to roll back (`other` is the failed new version).
        """

        def check() -> None:
            if self._state not in (ModuleState.STARTING, ModuleState.DRAINING):
                raise ModuleClosedError(
                    f"cannot make module {self.name!r} live: it is {self._state.value}"
                )

        self._effects.go_live(None if other is None else other._effects, check, also_cancel)
        self._move_to(ModuleState.LIVE)
        if other is not None:
            other._move_to(ModuleState.DRAINING)

    def release(self) -> None:
        """Perform the publishes and broadcasts held since start, in order."""
        self._effects.release()

    async def drain(self, timeout: float) -> bool:
        """Stop new deliveries and wait until idle (mailbox empty, `drain()` at 0).

        Returns False if `timeout` passed first; the caller logs what was pending.
        """
        self._cancel_subscriptions()
        if self._state is ModuleState.LIVE:
            self._move_to(ModuleState.DRAINING)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not await self.settled(left):
                return False
            wait_ms = await self.call(self._guest_drain) if self._guest else 0
            # depth, not idle: our own drain call may still count as running.
            if wait_ms == 0 and self.mailbox.depth == 0:
                return True
            await asyncio.sleep(min(wait_ms / 1000, max(0.0, deadline - time.monotonic())))

    async def settled(self, timeout: float) -> bool:
        """Wait until the mailbox is idle; False after `timeout`, or at once when it is
        held with work queued (it cannot get idle by itself). Ties up no thread."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def set_result(idle: bool) -> None:
            if not done.done():
                done.set_result(idle)

        def settle(idle: bool) -> None:  # on a worker, or here at once
            loop.call_soon_threadsafe(set_result, idle)

        self.mailbox.on_settled(settle)
        try:
            async with asyncio.timeout(timeout):
                return await done
        except TimeoutError:
            return False
        finally:
            self.mailbox.forget_settled(settle)

    async def probation(self, window: float) -> str | None:
        """Open the mailbox and watch the first deliveries for `window` seconds.

        Returns the trap message if one failed (the mailbox is then held again,
        the failed message back in front), or None if the version held up.
        """
        loop = asyncio.get_running_loop()
        failed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(failed.set)

        self._probation_failed = wake
        self._on_probation = True
        self.mailbox.release()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window):
                await failed.wait()
        self._on_probation = False
        self._probation_failed = None
        return self.last_error if failed.is_set() else None

    def save_state(self) -> bytes | None:
        """In a mailbox item: the guest's `save_state()` bytes, or None."""
        return None if self._guest is None else self._guest.save_state()

    def restore_state(self, data: bytes) -> str | None:
        """In a mailbox item: hand `data` to the guest's `restore_state`.

        Returns None if it took the state, else why the state was dropped.
        """
        if self._guest is None:
            return "the new version is closed"
        return self._guest.restore_state(data)

    def _guest_drain(self) -> int:
        assert self._guest is not None
        try:
            return self._guest.drain()
        except GuestTrap as exc:
            self._record_trap(exc)
            return 0

    async def close(self, timeout: float = 5.0) -> int:
        """Cancel subscriptions, free the instance, leave the worker pool. Safe to call twice.

        The close goes ahead of anything still queued (callers drain first); what is
        left is discarded and its count returned. A guest stuck in a call past
        `timeout` is abandoned: its worker finishes the call (the deadline bounds it) and
        frees the guest's last references.
        """
        if self._state is ModuleState.CLOSED:
            return 0
        self._cancel_subscriptions()
        if self._state is not ModuleState.FAILED:
            self._move_to(ModuleState.CLOSED)
        self.mailbox.release()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wrap_future(self.mailbox.call(self._close_guest, first=True))
        except ModuleClosedError:  # already closed by a failed start
            pass
        except TimeoutError:
            log.warning(
                "module %r: still busy after %.1f s; abandoning its running call",
                self.name,
                timeout,
            )
        discarded = self.mailbox.close()
        self._detach()
        return discarded

    def _detach(self) -> None:
        """Cut the references back to this version, so it is freed without the collector."""
        self._effects.detach()
        self._probation_failed = None
        self._on_faulty = None

    def _close_guest(self) -> None:
        if self._guest is not None:
            self._guest.close()
            self._guest = None

    def _discard(self) -> None:
        """Throw away a module that never went live (its held effects vanish with it)."""
        self._effects.forget()
        self.mailbox.release()
        self.mailbox.call(self._close_guest)
        self.mailbox.close(timeout=0)
        self._detach()

    def discard_held(self) -> None:
        """Forget the effects held since start (a version that is being rolled back)."""
        self._effects.discard_held()

    # -- swaps: the mailbox moves between versions only through these ------------------------

    def hold(self) -> None:
        """Queue deliveries and requests without running them (a version being cut over)."""
        self.mailbox.hold()

    @property
    def queued(self) -> int:
        """Messages, requests and calls waiting in the mailbox."""
        return self.mailbox.depth

    @property
    def idle(self) -> bool:
        return self.mailbox.idle

    def hand_queue_to(self, other: WasmModule) -> int:
        """Move this version's queued messages and requests in front of `other`'s."""
        moved = self.mailbox.take_pending()
        other.mailbox.prepend(moved)
        return len(moved)

    async def take_back(self, failed: WasmModule) -> None:
        """Roll back: take the subscriptions and queued messages back from `failed`, close it.

        `failed` took this version's subscriptions at the cut-over, so what it has queued
        is older than anything that reaches this version after the take-over: it goes
        in front.
        """
        failed.hold()
        self.hold()
        self.take_over(failed)
        await asyncio.to_thread(failed.mailbox.wait_paused, 5.0)
        self.mailbox.prepend(failed.mailbox.take_pending())
        self.mailbox.release()
        failed.discard_held()
        await failed.close()

    def fail_pending(self, error: BaseException) -> int:
        """Answer queued requests with `error`; drop queued messages. Returns the dropped count."""
        dropped = 0
        pending: list[Pending] = self.mailbox.take_pending()
        for item in pending:
            if isinstance(item, Request):
                item.fail(error)
            else:
                dropped += 1
        return dropped

    def take_messages(self, error: BaseException) -> list[Delivery]:
        """Take the queued messages out (to hand elsewhere), as (topic, payload, sender);
        queued requests get `error`."""
        messages: list[Delivery] = []
        for item in self.mailbox.take_pending():
            if isinstance(item, Request):
                item.fail(error)
            else:
                messages.append(item)
        return messages

    async def call(self, fn: Callable[[], Any], *, first: bool = False) -> Any:
        """Run `fn` in the mailbox (on a worker), after everything queued before it (or first)."""
        return await asyncio.wrap_future(self.mailbox.call(fn, first=first))

    def _cancel_subscriptions(self) -> None:
        self._effects.cancel_subscriptions()

    def withdraw(self, after: Callable[[], object]) -> None:
        """Take the subscriptions off the bus (a move to another worker begins); `after`
        runs in the same bus step, so it sees exactly what this version was sent."""
        self._effects.cancel_subscriptions(after)

    # -- deliveries (in mailbox items) ------------------------------------------------------

    def split_messages(self, pick: Callable[[], WasmModule | None] | None) -> None:
        """During a canary: `pick()` names another version for a message (None: this one)."""
        self._split = pick

    def absorb(self, canary: WasmModule) -> int:
        """End a canary: its queued messages and requests come here, in front. Returns the count.

        Called with the canary's mailbox held and paused; this version stays live.
        """
        moved = canary.mailbox.take_pending()
        self.mailbox.prepend(moved)
        canary.discard_held()
        return len(moved)

    def _on_bus_message(self, topic: str, payload: bytes, sender: str = "") -> bool:
        split = self._split
        if split is not None and (other := split()) is not None:
            return other._on_bus_message(topic, payload, sender)
        if self.mailbox.put(topic, payload, sender):
            return True
        self._warn_drop(
            "module %r: mailbox full (%d messages or %d bytes), dropped a message on %r; "
            "raise --mailbox-size / --mailbox-bytes or make the module faster",
            self.name,
            self.mailbox.capacity,
            self.mailbox.byte_capacity,
            topic,
        )
        return False

    def _deliver(self, topic: str, payload: bytes, sender: str = "") -> None:
        guest = self._guest
        if guest is None:
            return
        start = perf_counter()
        try:
            guest.deliver(topic, payload, sender)
            self.counters.delivered += 1
            self._deliver_seconds.observe(perf_counter() - start)
        except GuestTrap as exc:
            self._deliver_seconds.observe(perf_counter() - start)
            self._record_trap(exc)
            if self._on_probation:
                # A new version failing its first deliveries: stop here and keep the
                # message, so the old version can take it back with the rest.
                self.mailbox.hold()
                self.mailbox.prepend([(topic, payload, sender)])
                self._fail_probation()

    def _fail_probation(self) -> None:
        wake = self._probation_failed
        if wake is not None:
            wake()

    def _record_trap(self, exc: GuestTrap) -> None:
        self.counters.failed += 1
        self.counters.traps += 1
        code = exc.code.value if exc.code is not None else TrapCode.OTHER.value
        self.traps_by_code[code] = self.traps_by_code.get(code, 0) + 1
        if exc.code == TrapCode.INTERRUPT:
            self.counters.interrupted += 1
        self.last_error = str(exc)
        log.warning("%s", exc)
        if (
            self._traps.record(time.monotonic())
            and not self.faulty
            and not self._on_probation  # a failing new version is rolled back instead
        ):
            self.faulty = True
            if self._on_faulty is not None:
                self._on_faulty(self)

    # -- HTTP requests -------------------------------------------------------------------------

    async def http(self, body: bytes, limit: int) -> bytes | None:
        """Queue an HTTP request for the guest's `handle_http` or `handle`, like a message.

        Raises:
            MailboxFullError: the mailbox is full (answer 503).
            ModuleClosedError: the module closed first (answer 503).
            GuestTrap: the call trapped; ``code == "INTERRUPT"`` past the deadline (504).
        """
        export = self.compiled.interface.http
        if export is None:
            raise ModuleClosedError(f"module {self.name!r} exports neither handle nor handle_http")
        if self._answers is None:
            self._answers = Answers(asyncio.get_running_loop())
        future, reply = self._answers.future()
        request = Request(export, body, limit, reply, future.cancelled)
        if not self.mailbox.put_request(request):
            if self._state is ModuleState.CLOSED:
                raise ModuleClosedError(f"module {self.name!r} is closed")
            raise MailboxFullError(
                f"module {self.name!r} is busy: its mailbox holds {self.mailbox.capacity} "
                "messages and requests; retry later"
            )
        answer: bytes | None = await future
        return answer

    def _answer(self, request: Request) -> bytes | None:
        guest = self._guest
        if guest is None:
            raise ModuleClosedError(f"module {self.name!r} is closed")
        if request.export != guest.interface.http:
            raise GuestTrap(
                self.name,
                request.export,
                "the module changed its HTTP mode during a swap; retry the request",
                None,
            )
        start = perf_counter()
        try:
            body = guest.http(request.export, request.body, request.limit)
            self._http_seconds.observe(perf_counter() - start)
        except GuestTrap as exc:
            self._http_seconds.observe(perf_counter() - start)
            self._record_trap(exc)
            if self._on_probation:
                # As for messages: keep the request for the version that takes over.
                self.mailbox.hold()
                self.mailbox.prepend([request])
                self._fail_probation()
                raise Requeued from None
            raise
        self.counters.requests += 1
        return body

    # -- status --------------------------------------------------------------------------------

    @property
    def rule(self) -> Rule | None:
        """Its middleware rule; None for an ordinary module."""
        return None if self.file is None else self.file.rule

    @property
    def subscriptions(self) -> list[str]:
        return self._effects.subscriptions

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready status for /api/modules."""
        c = self.compiled
        rule = self.file.rule if self.file is not None else None
        return {
            "name": self.name,
            "state": self._state.value,
            "role": "module" if rule is None else "middleware",
            "rule": None if rule is None else rule.text,
            "http": c.interface.http,
            "file": self.file.file if self.file else c.path.name if c.path else None,
            "sha256": c.sha256,
            "size": c.size,
            "loaded_at": self.loaded_at,
            "compile_ms": round(c.compile_ms, 3),
            "exports": list(c.interface.exports),
            "imports": list(c.interface.imports),
            "subscriptions": self.subscriptions,
            "mailbox": {
                "depth": self.mailbox.depth,
                "capacity": self.mailbox.capacity,
                "bytes": self.mailbox.queued_bytes,
                "byte_capacity": self.mailbox.byte_capacity,
                "accepted": self.mailbox.accepted,
                "dropped": self.mailbox.dropped,
            },
            "counters": self.counters.as_dict(),
            "log_lines_suppressed": self._effects.guest_log.suppressed_total,
            "limits": {
                "memory_limit": self.limits.memory_limit,
                "call_timeout": self.limits.call_timeout,
                "max_payload": self.limits.max_payload,
            },
            "grants": self.limits.grants.to_json(),
            "memory_bytes": self._guest.memory_size if self._guest is not None else 0,
            "last_error": self.last_error,
            "health": None if self.health is None else self.health.value,
            "health_error": self.health_error,
            "metadata": None if self.metadata is None else self.metadata.to_json(),
            "config": self.config.redacted(),
        }
