"""Live moves of modules between workers over NATS: carries out `policy/handover.py`.

Each worker answers on ``tw.ho.<worker>`` (request-reply, CBOR maps):

- ``prepare`` {name, from}: stage the module from this worker's file, fence its
  patterns (`Fence`), answer once the fence is at the NATS server;
- ``commit`` {name, from, state, marks, own, leftovers}: restore the state, take
  over from the fence, open the module, answer;
- ``stopping`` {node}: the supervisor stops every one of its workers; nothing
  moves among them, only to another node's workers (a fleet of machines).

`leave()` hands every module this worker runs alone to its successor
(`Placement.successor`), before the server drains: the SIGTERM path of a worker
among several. `give()` is also what the fleet (supervisor/fleet.py) calls to hand
a module back to its owner when that worker returns. Which worker runs what is
the heartbeats' business; while a module arrives, `ModuleHost.arriving` names it,
so that neither the folder's load nor the fleet starts a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from bus import Bus, Subscription
from bus.nats import LinkError, NatsChannel, NatsLink, incoming
from tinywasm_wasi.exceptions import GuestTrap, ModuleClosedError, TinywasmError
from tinywasm_wasi.policy.handover import (
    Giver,
    GiverAction,
    GiverEvent,
    GiverPhase,
    Taker,
    TakerEvent,
    keep_after,
)
from tinywasm_wasi.policy.placement import node_of
from tinywasm_wasi.runtime.module import Delivery, WasmModule
from tinywasm_wasi.supervisor.host import ModuleHost

__all__ = [
    "READY_SUBJECT",
    "Fence",
    "HandoverRefused",
    "HandoverService",
    "stopping_request",
    "subject_for",
]

log = logging.getLogger("tinywasm.handover")

PREPARE_TIMEOUT = 30.0  # seconds the taker has to compile, start and fence a module
COMMIT_TIMEOUT = 10.0  # seconds the taker waits for the commit after it answered ready
CONTROL_TIMEOUT = 2.0  # seconds for join and moved answers
ENVELOPE = 4096  # bytes a commit needs besides the state and the leftovers


READY_SUBJECT = "tw.ctl.ready"  # a worker listens and has its modules: its name


def subject_for(worker: str) -> str:
    return f"tw.ho.{worker}"


def stopping_request(node: str = "", supervisor: int | None = None) -> bytes:
    """What the supervisor (process id `supervisor`) sends each of its workers before it
    stops them all: move nothing among them (only to another node's workers, in a fleet
    of machines). A worker heeds it only from its own parent process: a supervisor
    refused for a name clash must not stop the workers that really have those names."""
    return cbor2.dumps({"op": "stopping", "node": node, "supervisor": supervisor})


class HandoverRefused(TinywasmError, RuntimeError):
    """The other worker could not take part in a move (its reason is the message)."""


class Fence:
    """Keeps a module's messages aside, with their stamps, while it moves to this worker."""

    def __init__(self, bus: Bus, channel: NatsChannel, origin: str, limit: int) -> None:
        self._bus = bus
        self._channel = channel
        self._origin = origin
        self._limit = limit
        self.items: list[tuple[str, str, int, Delivery]] = []  # pattern, publisher, seq, message
        self.dropped = 0
        self.subs: list[Subscription] = []

    def put_up(self, patterns: Sequence[str]) -> None:
        self.subs = [
            self._bus.subscribe(p, functools.partial(self._keep, p), sender=True)
            for p in dict.fromkeys(patterns)
        ]

    def _keep(self, pattern: str, topic: str, payload: bytes, sender: str) -> bool:
        # Under the bus lock. A local publish is forwarded right after its local delivery,
        # so it gets the channel's next sequence number.
        stamp = incoming() or (self._origin, self._channel.last_seq + 1)
        if len(self.items) >= self._limit:
            self.dropped += 1
            return False
        self.items.append((pattern, stamp[0], stamp[1], (topic, payload, sender)))
        return True

    def after(
        self, marks: dict[tuple[str, str], int], own: tuple[str, int] | None
    ) -> list[Delivery]:
        """The kept messages the old owner did not handle, in arrival order."""
        keep = keep_after(marks, own)
        return [m for pattern, pub, seq, m in self.items if keep(pub, pattern, seq)]

    def take_down(self) -> None:
        for sub in self.subs:
            sub.cancel()


@dataclass(slots=True)
class _Arrival:
    taker: Taker
    module: WasmModule
    fence: Fence
    commit: asyncio.Future[dict[str, Any]]
    done: asyncio.Event = field(default_factory=asyncio.Event)


class HandoverService:
    """One worker's side of every move: giving, taking, joining."""

    def __init__(
        self,
        link: NatsLink,
        channel: NatsChannel,
        bus: Bus,
        host: ModuleHost,
        me: str,
        *,
        drain_timeout: float,
        mailbox_size: int,
    ) -> None:
        self._link = link
        self._channel = channel
        self._bus = bus
        self._host = host
        self.me = me
        self._drain_timeout = drain_timeout
        self._mailbox_size = mailbox_size
        self._arrivals: dict[str, _Arrival] = {}
        self._moving: dict[str, asyncio.Event] = {}  # being cut over here or arriving
        self._gone: dict[str, str] = {}  # moved away by this worker: name -> where to
        self._tasks: set[asyncio.Task[Any]] = set()
        self.moved_in = 0
        self.moved_out = 0
        self.failed_out = 0  # cut over here, but the commit failed: the state is lost
        self.abandoned_in = 0  # the giver went silent or died: opened here without state
        self.lost_messages = 0  # leftovers of a failed commit, and messages the fence dropped
        self._deaths: dict[str, asyncio.Event] = {}  # set when the fleet declares one dead
        self._leaving = False  # this worker stops: it takes nothing in
        self._fleet_stopping = False  # every worker of this supervisor stops
        # Publishes this worker's heartbeat now (supervisor/fleet.py), once a module arrived.
        self.announce: Callable[[], Awaitable[None]] | None = None
        self._stopping_node = ""  # their node: only another node's workers may take a module

    async def start(self) -> None:
        await self._link.serve(subject_for(self.me), self._answer)

    # -- HTTP meanwhile ---------------------------------------------------------------------------

    def moving(self, name: str) -> bool:
        """True while `name` is being moved here or away."""
        return name in self._moving

    async def settle(self, name: str, timeout: float) -> None:
        """Wait while `name` is being moved here or away (at most `timeout` seconds)."""
        event = self._moving.get(name)
        if event is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    def relay_to(self, name: str) -> str | None:
        """Where to send a request for `name` that reached this worker after it gave it away."""
        if name in self._host.modules:
            return None
        target = self._gone.get(name)
        placement = self._host.placement
        if target is not None and placement is not None and placement.where(name) == target:
            del self._gone[name]  # the heartbeats have caught up: placement routes it
        return target

    # -- a worker that dies ---------------------------------------------------------------------

    def worker_gone(self, worker: str) -> None:
        """The fleet declared `worker` dead (silent past the heartbeat timeout): a move
        with it cannot finish, so nothing waits for it any longer. A module it was
        giving here opens now, without its state; a request to it fails at once."""
        death = self._deaths.pop(worker, None)
        if death is not None:
            death.set()

    def _death_of(self, worker: str) -> asyncio.Event:
        return self._deaths.setdefault(worker, asyncio.Event())

    # -- requests -----------------------------------------------------------------------------

    async def _answer(self, data: bytes) -> bytes:
        try:
            msg = cbor2.loads(data)
            op = msg["op"]
            if op == "prepare":
                reply = await self._prepare(msg["name"], msg["from"])
            elif op == "commit":
                reply = await self._commit(msg)
            elif op == "stopping":
                reply = self._stopping(msg)
            else:
                reply = {"ok": False, "error": f"unknown operation {op!r}"}
        except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError) as exc:
            reply = {"ok": False, "error": f"malformed handover request: {exc}"}
        return cbor2.dumps(reply)

    def _stopping(self, msg: dict[str, Any]) -> dict[str, Any]:
        sender = msg.get("supervisor")
        if sender is not None and sender != os.getppid():
            log.warning(
                "ignoring a stop-all from supervisor pid %s, which is not this worker's "
                "(another process under the same worker name was refused)",
                sender,
            )
            return {"ok": False, "error": f"worker {self.me} is not supervised by {sender}"}
        self._fleet_stopping = True
        node = msg.get("node")
        self._stopping_node = node if isinstance(node, str) else ""
        return {"ok": True}

    async def _ask(self, worker: str, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        death = asyncio.ensure_future(self._death_of(worker).wait())
        asking = asyncio.ensure_future(
            self._link.request(subject_for(worker), cbor2.dumps(msg), timeout)
        )
        try:
            await asyncio.wait((asking, death), return_when=asyncio.FIRST_COMPLETED)
        finally:
            death.cancel()
        if not asking.done():
            asking.cancel()
            raise HandoverRefused(f"worker {worker} died (silent past the heartbeat timeout)")
        try:
            raw = asking.result()
        except (LinkError, TimeoutError) as exc:
            raise HandoverRefused(f"worker {worker}: {exc}") from None
        reply: dict[str, Any] = cbor2.loads(raw)
        if not reply.get("ok", True):
            raise HandoverRefused(f"worker {worker}: {reply.get('error')}")
        return reply

    # -- leaving ------------------------------------------------------------------------------

    async def leave(self) -> None:
        """Hand every module this worker owns to its heir (this worker is stopping)."""
        self._leaving = True
        names = self._host.movable()
        if not names:
            return
        placement = self._host.placement
        node = self._stopping_node
        if self._fleet_stopping and (
            placement is None or not node or all(node_of(w) == node for w in placement.workers)
        ):
            log.info("every worker stops: %d module(s) stop here, not handed over", len(names))
            return
        # Every worker of this supervisor stops (a machine of a fleet leaves): a module
        # moves only to another node's worker. Else only this worker stops.
        without = node if self._fleet_stopping else None
        targets = {
            n: placement.successor(n, without_node=without) if placement is not None else None
            for n in names
        }
        alone = sorted(n for n, to in targets.items() if to is None)
        if alone:
            log.warning(
                "leaving: no other live worker%s has the file of %s: it stops here and "
                "runs nowhere until a worker with its file starts",
                f" outside node {without}" if without else "",
                ", ".join(alone),
            )
        begun = time.perf_counter()
        results = await asyncio.gather(
            *(self.give(n, to) for n, to in targets.items() if to is not None)
        )
        log.info(
            "leaving: %d of %d module(s) handed over in %.0f ms",
            sum(results),
            len(names),
            (time.perf_counter() - begun) * 1000,
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- giving -------------------------------------------------------------------------------

    async def give(self, name: str, to: str) -> bool:
        """Move `name` from this worker to `to`; True if it arrived with what it had."""
        giver = Giver(name)
        ctx: dict[str, Any] = {}
        begun = time.perf_counter()
        actions = giver.handle(GiverEvent.START)
        try:
            while actions:
                event: GiverEvent | None = None
                for action in actions:
                    event = await self._give_step(action, name, to, ctx)
                if event is None:
                    break
                actions = giver.handle(event)
        except Exception:
            log.exception("module %s: the move to %s failed while %s", name, to, giver.phase.value)
        moving = self._moving.pop(name, None)
        if moving is not None:
            moving.set()
        ok = giver.phase is GiverPhase.MOVED
        if ok:
            self.moved_out += 1
            state = ctx.get("state")
            log.info(
                "module %s handed over to %s in %.0f ms (%s of state, %d leftover message(s))",
                name,
                to,
                (time.perf_counter() - begun) * 1000,
                "no bytes" if state is None else f"{len(state)} bytes",
                len(ctx.get("leftovers", [])),
            )
        return ok

    async def _give_step(
        self, action: GiverAction, name: str, to: str, ctx: dict[str, Any]
    ) -> GiverEvent | None:
        match action:
            case GiverAction.ASK_PREPARE:
                try:
                    await self._ask(
                        to, {"op": "prepare", "name": name, "from": self.me}, PREPARE_TIMEOUT
                    )
                except HandoverRefused as exc:
                    ctx["error"] = str(exc)
                    return GiverEvent.REFUSED
                return GiverEvent.READY
            case GiverAction.SYNC:
                try:
                    await self._link.settle()
                except (TimeoutError, LinkError) as exc:
                    log.warning("module %s: NATS did not settle before the move: %s", name, exc)
            case GiverAction.CUT_OVER:
                self._moving[name] = asyncio.Event()
                module = ctx["module"] = await self._host.give_up(name)
                own: list[Any] = []
                module.withdraw(lambda: own.append((self._link.origin, self._channel.last_seq)))
                ctx["own"] = own[0]
                ctx["marks"] = self._link.marks(module.subscriptions)
                self._gone[name] = to
            case GiverAction.DRAIN:
                idle = await ctx["module"].drain(self._drain_timeout)
                return GiverEvent.DRAINED if idle else GiverEvent.DRAIN_TIMED_OUT
            case GiverAction.TAKE_LEFTOVERS:
                module = ctx["module"]
                module.hold()
                await asyncio.to_thread(module.mailbox.wait_paused, 5.0)
                ctx["leftovers"] = module.take_messages(
                    ModuleClosedError(f"module {name!r} moved to worker {to} while busy: retry")
                )
            case GiverAction.SAVE_STATE:
                module = ctx["module"]
                try:
                    ctx["state"] = await module.call(module.save_state, first=True)
                except GuestTrap as exc:
                    log.warning("module %s: state not handed over: %s", name, exc)
                    ctx["state"] = None
                return GiverEvent.SAVED
            case GiverAction.COMMIT:
                return await self._send_commit(name, to, ctx)
            case GiverAction.CLOSE:
                await ctx["module"].close()
            case GiverAction.ANNOUNCE:
                pass  # the heartbeats say where it runs now; requests here are relayed
            case GiverAction.KEEP:
                log.warning("module %s stays on %s: %s", name, self.me, ctx.get("error", "refused"))
            case GiverAction.LOG_LOST:
                state = ctx.get("state")
                leftovers = len(ctx.get("leftovers", []))
                self.failed_out += 1
                self.lost_messages += leftovers
                log.error(
                    "module %s: the move to %s failed after the cut-over (%s): lost are its "
                    "state (%s) and %d message(s) it had queued, and whatever %s kept aside "
                    "for it if it died; the module starts without its state on its owner "
                    "among the live workers",
                    name,
                    to,
                    ctx.get("error"),
                    "none" if state is None else f"{len(state)} bytes",
                    leftovers,
                    to,
                )
        return None

    async def _send_commit(self, name: str, to: str, ctx: dict[str, Any]) -> GiverEvent:
        state: bytes | None = ctx.get("state")
        leftovers: list[Delivery] = ctx.get("leftovers", [])
        size = (len(state) if state else 0) + sum(len(t) + len(p) + len(s) for t, p, s in leftovers)
        bound = self._link.max_payload - ENVELOPE
        if size > bound:
            log.error(
                "module %s: its state and leftover messages are %d bytes, over the %d bytes "
                "a NATS message may carry here (nats-server's max_payload): they are not "
                "handed over; raise max_payload in the nats-server config",
                name,
                size,
                bound,
            )
            state, leftovers = None, []
        own = ctx["own"]
        msg = {
            "op": "commit",
            "name": name,
            "from": self.me,
            "state": state,
            "marks": [[pub, pattern, seq] for (pub, pattern), seq in ctx["marks"].items()],
            "own": [own[0], own[1]],
            "leftovers": [list(m) for m in leftovers],
        }
        try:
            await self._ask(to, msg, COMMIT_TIMEOUT)
        except HandoverRefused as exc:
            ctx["error"] = str(exc)
            return GiverEvent.COMMIT_FAILED
        return GiverEvent.COMMITTED

    # -- taking -------------------------------------------------------------------------------

    async def _prepare(self, name: str, giver: str) -> dict[str, Any]:
        if name in self._arrivals:
            return {"ok": False, "error": f"module {name!r} is already moving here"}
        if self._leaving or self._fleet_stopping:
            return {"ok": False, "error": f"worker {self.me} is stopping too"}
        taker = Taker(name)
        taker.handle(TakerEvent.PREPARE)  # -> STAGE
        try:
            module = await self._host.stage_copy(name)
        except TinywasmError as exc:
            taker.handle(TakerEvent.STAGE_FAILED)
            log.warning("module %s: cannot take it from %s: %s", name, giver, exc)
            return {"ok": False, "error": str(exc)}
        taker.handle(TakerEvent.STAGED)  # -> FENCE, ANSWER_READY, WAIT_COMMIT
        fence = Fence(self._bus, self._channel, self._link.origin, self._mailbox_size)
        fence.put_up(module.subscriptions)
        self._moving.setdefault(name, asyncio.Event())
        self._host.arriving.add(name)
        commit: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        arrival = self._arrivals[name] = _Arrival(taker, module, fence, commit)
        await self._link.subscribed(PREPARE_TIMEOUT)
        log.info(
            "module %s: staged here for its move from %s; what arrives for it is kept aside "
            "until the commit",
            name,
            giver,
        )
        self._spawn(self._await_commit(name, giver, arrival))
        return {"ok": True}

    async def _await_commit(self, name: str, giver: str, arrival: _Arrival) -> None:
        death = asyncio.ensure_future(self._death_of(giver).wait())
        try:
            await asyncio.wait(
                (arrival.commit, death),
                timeout=COMMIT_TIMEOUT + PREPARE_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            death.cancel()
        if arrival.commit.done():
            return  # committed: _commit opens it
        arrival.commit.cancel()  # a commit that still comes is refused: it opens only once
        arrival.taker.handle(TakerEvent.COMMIT_TIMED_OUT)
        self.abandoned_in += 1
        log.error(
            "module %s: %s %s: it starts here without its state, with the %d message(s) "
            "kept aside for it (some may have been handled there already)",
            name,
            giver,
            "died before its commit"
            if death.done() and not death.cancelled()
            else f"sent no commit within {COMMIT_TIMEOUT + PREPARE_TIMEOUT:.0f} s",
            len(arrival.fence.items),
        )
        await self._open(name, arrival, None, {}, None, [])
        self._finish(name, arrival)

    async def _commit(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = msg["name"]
        arrival = self._arrivals.get(name)
        if arrival is None or arrival.commit.done():
            return {"ok": False, "error": f"module {name!r} is not being moved here"}
        arrival.commit.set_result(msg)
        arrival.taker.handle(TakerEvent.COMMIT)
        marks = {(pub, pattern): int(seq) for pub, pattern, seq in msg["marks"]}
        own = (msg["own"][0], int(msg["own"][1]))
        # [topic, payload, sender]; a worker from before senders crossed sends no sender.
        leftovers = [
            (m[0], bytes(m[1]), m[2] if len(m) > 2 else "") for m in msg.get("leftovers", [])
        ]
        kept = await self._open(name, arrival, msg.get("state"), marks, own, leftovers)
        self._finish(name, arrival)
        if self.announce is not None:
            # Its beat lists the module before the giver's next one stops listing it, so
            # a worker that joins meanwhile never sees it run nowhere (and starts a copy).
            await self.announce()
        self.moved_in += 1
        log.info(
            "module %s taken over from %s: %d message(s) held meanwhile delivered, %d already "
            "handled there",
            name,
            msg["from"],
            kept,
            len(arrival.fence.items) - kept,
        )
        return {"ok": True}

    async def _open(
        self,
        name: str,
        arrival: _Arrival,
        state: bytes | None,
        marks: dict[tuple[str, str], int],
        own: tuple[str, int] | None,
        leftovers: list[Delivery],
    ) -> int:
        """RESTORE_STATE, TAKE_OVER, OPEN."""
        module, fence = arrival.module, arrival.fence
        if state is not None:
            try:
                dropped = await module.call(lambda: module.restore_state(state), first=True)
                if dropped is not None:
                    log.warning(
                        "module %s: %s; %d bytes of state dropped", name, dropped, len(state)
                    )
            except GuestTrap as exc:
                log.error("module %s: restore_state trapped, state dropped: %s", name, exc)
        module.take_over(None, also_cancel=fence.subs)
        kept = fence.after(marks, own)
        module.mailbox.prepend([*leftovers, *kept])
        if fence.dropped:
            self.lost_messages += fence.dropped
            log.warning(
                "module %s: %d message(s) dropped while it moved (more than %d held)",
                name,
                fence.dropped,
                self._mailbox_size,
            )
        self._host.adopt(module)
        module.release()
        module.mailbox.release()
        return len(kept)

    def _finish(self, name: str, arrival: _Arrival) -> None:
        self._arrivals.pop(name, None)
        self._gone.pop(name, None)
        self._host.arriving.discard(name)
        moving = self._moving.pop(name, None)
        if moving is not None:
            moving.set()
        arrival.done.set()

    def stats(self) -> dict[str, int]:
        return {
            "moved_in": self.moved_in,
            "moved_out": self.moved_out,
            "failed_out": self.failed_out,
            "abandoned_in": self.abandoned_in,
            "lost_messages": self.lost_messages,
        }
