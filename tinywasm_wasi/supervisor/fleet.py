"""One worker's place in the fleet: heartbeats over NATS, and placement kept current.

Every `HEARTBEAT` seconds the worker publishes its `Beat` on ``tw.hb.<worker>``
(and at once when it starts or stops a single-owner module), and it forgets
workers silent for `TIMEOUT` seconds (policy/membership.py decides). When the
placement changes it reconciles, each module on its own:

- a single-owner module it runs but no longer owns (its owner came back) is
  unloaded: drained, then closed; the next beat says so;
- a module it now owns (its owner died or left) is started from this worker's
  own modules folder as soon as no other worker says it runs it. A worker can
  own only modules it has the file of: one without the file starts nothing.

So after a kill -9, the dead worker's modules start on the survivors about
`TIMEOUT` plus a load after the death; when it is back, they return to it. What
was in flight to the dead worker is lost. Counted: the requests forwarded to it
that never got an answer (`lost_forwards`, web/forward.py), and, from the moment
it is declared dead until a beat says its modules run again, each message
published here for them (`bus.remote.Unowned`, fed with the patterns of its last
beat; logged when the module runs again); docs/abi.md states the guarantee.

While NATS is away nobody is heard and nobody is declared dead; when it is back,
every timeout starts again (`Membership.resume`).

Across machines (a fleet: several supervisors on one NATS, each with its own
``--node`` and modules folder) each beat lists this worker's module files with a
digest, so placement ranks only the workers that have a module's file. The folder
is looked at when the worker starts and whenever the watcher reports a change
(`rescan`; with ``--no-watch`` a change to the folder changes nothing, as on one
machine), and a module that runs here counts as a file here even if its file is
gone (it keeps running until the watcher unloads it). Before
it says anything, a starting worker listens for `CLAIM_WAIT` seconds (`claim`): a
beat under its own name from another process means its name is taken, and it
refuses to start (`WorkerIdTaken`). A module that runs nowhere (the only workers
with its file died), a file that differs between machines, and a clash heard
later are logged once each and shown in /api/modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from bus.nats import NatsChannel, NatsLink
from bus.remote import Unowned
from tinywasm_wasi.exceptions import WorkerIdTaken
from tinywasm_wasi.policy.events import LogEvent, event_extra
from tinywasm_wasi.policy.history import Trigger
from tinywasm_wasi.policy.membership import (
    HEARTBEAT,
    TIMEOUT,
    Beat,
    BeatError,
    Membership,
    decode_beat,
    encode_beat,
    file_list,
    pattern_list,
)
from tinywasm_wasi.policy.placement import Placement
from tinywasm_wasi.supervisor.host import ModuleHost

__all__ = ["BEAT_PREFIX", "Fleet"]

log = logging.getLogger("tinywasm.fleet")

BEAT_PREFIX = "tw.hb."  # a worker's beats go on tw.hb.<worker>
SUBSCRIBE_TIMEOUT = 2.0  # seconds a started module's subscriptions may take to reach NATS
LEAVE_MARGIN = 1.0  # seconds leave() allows past --drain-timeout for a move under way
CLAIM_WAIT = 2 * HEARTBEAT  # seconds a starting worker listens before it uses its name


class Fleet:
    """Heartbeats out and in; the host's placement; moving modules when it changes."""

    def __init__(
        self,
        link: NatsLink,
        host: ModuleHost,
        me: str,
        *,
        expected: frozenset[str] = frozenset(),
        channel: NatsChannel | None = None,
        heartbeat: float = HEARTBEAT,
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._host = host
        self._clock = clock
        self._heartbeat = heartbeat
        self.instance = secrets.token_hex(6)  # this process, among any under the same name
        self.table = Membership(me, clock(), timeout, expected, instance=self.instance)
        self.me = me
        self._claimed = False
        self._folder: dict[str, str] = {}  # module files in the folder, at the last look
        self._rescan = False  # the watcher saw a change: look at the folder again
        self._scanning: asyncio.Task[None] | None = None
        self._told: dict[str, object] = {}  # what was last logged: nowhere, differing, clashes
        self._leaving = False
        self._task: asyncio.Task[None] | None = None
        self._moving: dict[str, asyncio.Task[None]] = {}
        self._owned: set[str] = set()  # single-owner modules this worker owned at the last look
        self._waiting: set[str] = set()  # owned here, not started: another worker still runs them
        self._dirty = asyncio.Event()
        # Counts what the bus sends (through `channel`) for the modules nobody runs.
        self._channel = channel
        self.unowned = Unowned()
        self._orphans: dict[str, tuple[str, ...]] = {}
        self._lost_before: dict[str, int] = {}  # module -> its lost count when it became unowned
        self.taken_over = 0  # modules started here because their owner died or left
        self.released = 0  # modules stopped here because their owner came back
        # Hands a module to a live worker with its state and messages (web/handover.py);
        # True if it moved. Without it, or when it fails, the module is unloaded here.
        self.hand_over: Callable[[str, str], Awaitable[bool]] | None = None
        # Told each worker declared dead (web/handover.py: a move with it stops waiting).
        self.on_dead: Callable[[str], None] | None = None
        host.placement = self.table.placement()

    @property
    def placement(self) -> Placement:
        return self.table.placement()

    def beat(self) -> Beat:
        """This worker's beat now."""
        owned: dict[str, list[str]] = {}
        replicas: set[str] = set()
        for name, module in list(self._host.modules.items()):
            if self._host.runs_alone(name):
                owned[name] = module.subscriptions
            else:
                replicas.add(name)
        return Beat(
            self.me,
            frozenset(owned),
            frozenset(replicas),
            self._leaving,
            patterns=pattern_list(owned),
            instance=self.instance,
            files=None if self.table.files is None else file_list(self.table.files),
        )

    def lost(self) -> dict[str, int]:
        """Messages published here for each module while no worker ran it."""
        return dict(self.unowned.lost)

    def missing(self) -> set[str]:
        """The single-owner modules this worker owns and does not run yet (another worker
        still runs them, or they are being handed over)."""
        return {n for n in self._host.module_names() if self._owns(n)} - set(self._host.modules)

    async def announce(self) -> None:
        """Publish this worker's beat now (a module just arrived by handover)."""
        await self._publish()

    def gone_from(self, name: str) -> str | None:
        """The last worker that had `name`'s file, when no live worker has it (it runs
        nowhere); else None."""
        return self.table.nowhere().get(name)

    def view(self) -> dict[str, object]:
        """The fleet as this worker sees it, for /api/modules."""
        view = self.table.fleet(self.beat(), self._clock())
        view["unowned"] = sorted(self._orphans)  # a dead worker's, running nowhere yet
        view["lost_unowned"] = self.lost()
        return view

    async def claim(self) -> None:
        """Listen to the others' beats for `CLAIM_WAIT` seconds, saying nothing, and look
        at this worker's files. Call it before anything answers under this worker's name.

        Raises:
            WorkerIdTaken: another live process beats under this worker's name.
        """
        if self._claimed:
            return
        await self._link.listen(BEAT_PREFIX + "*", self._on_beat)
        await self._scan()
        await asyncio.sleep(CLAIM_WAIT)  # a live worker beats at least twice meanwhile
        others = self.table.clashes(self._clock())
        if others:
            raise WorkerIdTaken(
                f"worker name {self.me} is taken: another live process on the same NATS "
                f"beats under it (instance {', '.join(others)}), so this one does not "
                "start. Each machine of a fleet needs its own node name: set --node or "
                "TINYWASM_NODE (it defaults to the host's short name), or stop the other one"
            )
        self._claimed = True
        # The others had no beat from this worker yet: give them the full settling time.
        self.table.started = self._clock()

    def rescan(self) -> None:
        """The modules folder changed: look at this worker's files again soon."""
        self._rescan = True
        self._dirty.set()

    def file_written(self, name: str, sha256: str | None) -> None:
        """A deploy wrote `name`'s file (None: it put an old one back). Counted as this
        worker's file at once, so the deploy's own swap may start the module here."""
        if sha256 is None:
            self.rescan()
            return
        self._folder = {**self._folder, name: sha256}
        self._refresh_files()
        self._host.placement = self.table.placement()

    async def join(self) -> None:
        """Claim the name, announce this worker, and wait until settled (every expected
        worker heard, or the timeout) before modules load."""
        await self.claim()
        await self._publish()
        last = self._clock()
        while not self.table.settled(self._clock()):
            await asyncio.sleep(self._heartbeat / 5)
            if self._clock() - last >= self._heartbeat:
                # Beat while settling too: a module handed to this worker meanwhile is
                # announced, so a worker joining after it does not start a second copy.
                last = self._clock()
                await self._publish()
        placement = self._host.placement = self.table.placement()
        log.info("joined the fleet: live workers %s", ", ".join(placement.workers))

    def start(self) -> None:
        """After the modules loaded: beat every `heartbeat` seconds and keep placement current."""
        owned = {n for n in self._host.module_names() if self._owns(n)}
        self._owned = owned
        self._waiting = {n for n in owned if n not in self._host.modules}
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fleet")
        self._dirty.set()

    async def leave(self) -> None:
        """Say this worker is leaving: the others place its modules elsewhere at once
        and start them once its beats no longer list them. Nothing moves here after."""
        self._leaving = True
        await self._publish()
        moving = list(self._moving.values())
        if moving:  # a start or stop under way finishes first, so the host stops what it ran
            await asyncio.wait(moving, timeout=self._host.drain_timeout + LEAVE_MARGIN)

    async def close(self) -> None:
        """The last beat (what still runs here: nothing, after the host stopped); stop."""
        self._leaving = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for moving in list(self._moving.values()):
            moving.cancel()
        if self._scanning is not None:
            self._scanning.cancel()
        await self._publish()

    # -- the loop's side -------------------------------------------------------------------

    def _on_beat(self, subject: str, data: bytes) -> None:
        try:
            beat = decode_beat(data)
        except BeatError as exc:
            log.warning("ignoring a heartbeat on %s: %s", subject, exc)
            return
        if subject != BEAT_PREFIX + beat.worker:
            log.warning("ignoring a heartbeat of %s sent on %s", beat.worker, subject)
            return
        before = self.table.live()
        if self.table.heard(beat, self._clock()):
            self._log_change(before)
            self._dirty.set()

    async def _run(self) -> None:
        connected = True
        last = self._clock()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat):
                    await self._dirty.wait()
            now, waited = self._clock(), self._clock() - last
            last = now
            if not self._link.connected:
                connected = False
                continue  # nobody is heard while NATS is away: nobody is declared dead
            if not connected or waited > self.table.timeout / 2:
                # Back from an outage, or this worker itself was stalled (its loop
                # starved of CPU): the others' beats may wait unread in the socket, so
                # their silence proves nothing yet. Every timeout starts again.
                if connected:
                    log.info("this worker was stalled for %.2f s: timeouts start again", waited)
                connected = True
                self.table.resume(now)
            before = self.table.live()
            leaving = {w for w, m in self.table.members.items() if m.beat.leaving}
            dead = self.table.expire(now)
            if dead:
                left = [w for w in dead if w in leaving]  # said so, and handed over first
                if left:
                    log.info("worker(s) %s left", ", ".join(left))
                if len(left) < len(dead):
                    log.warning(
                        "worker(s) %s silent for %.1f s: dead; what was in flight to them is lost",
                        ", ".join(w for w in dead if w not in leaving),
                        self.table.timeout,
                    )
                self._log_change(before)
                self._dirty.set()
                if self.on_dead is not None:
                    for worker in dead:
                        self.on_dead(worker)
            if self._rescan and self._scanning is None:
                self._rescan = False
                self._scanning = asyncio.get_running_loop().create_task(self._scan())
            self._refresh_files()
            if self._dirty.is_set():
                self._dirty.clear()
                self._reconcile()
            self._count_unowned()
            self._report(now)
            await self._publish()

    async def _scan(self) -> None:
        """Look at which module files the folder has (with their digests)."""
        try:
            self._folder = await asyncio.to_thread(self._read_files)
        finally:
            self._scanning = None
        self._refresh_files()

    def _refresh_files(self) -> None:
        """This worker's files: the folder's, and the modules running here."""
        files = dict(self._folder)
        for name, module in list(self._host.modules.items()):
            files.setdefault(name, module.compiled.sha256)
        if files != self.table.files:
            self.table.files = files
            self._dirty.set()

    def _read_files(self) -> dict[str, str]:
        files: dict[str, str] = {}
        for name in self._host.module_names():
            digest = self._host.file_digest(name)
            if digest is not None:
                files[name] = digest[1]
        return files

    def _report(self, now: float) -> None:
        """Log each change in what runs nowhere, which files differ, and name clashes."""
        nowhere = self.table.nowhere()
        before = self._told.get("nowhere", {})
        assert isinstance(before, dict)
        for name in sorted(set(nowhere) - set(before)):
            log.warning(
                "module %s runs nowhere: %s, the last worker with its file, is gone; it "
                "starts again when a worker with %s's file joins",
                name,
                nowhere[name],
                name,
            )
        for name in sorted(set(before) - set(nowhere)):
            log.info("module %s: a live worker has its file again", name)
        differing = self.table.differing()
        if differing != self._told.get("differing", {}):
            for name, digests in differing.items():
                versions = "; ".join(f"{d} on {', '.join(w)}" for d, w in digests.items())
                log.warning(
                    "module %s: its file differs between workers (%s); each runs its own "
                    "file, so the version depends on where it is placed",
                    name,
                    versions,
                )
        clashes = self.table.clashes(now)
        if clashes and clashes != self._told.get("clashes"):
            log.error(
                "another process (instance %s) beats under this worker's name %s: two "
                "machines share a node name; give each its own --node / TINYWASM_NODE",
                ", ".join(clashes),
                self.me,
            )
        self._told = {"nowhere": nowhere, "differing": differing, "clashes": clashes}

    def _owns(self, name: str) -> bool:
        placement = self._host.placement
        return (
            placement is not None
            and self._host.runs_alone(name)
            and placement.owner(name) == self.me
        )

    def _reconcile(self) -> None:
        if self._leaving:
            return
        placement = self._host.placement = self.table.placement()
        owned = {n for n in self._host.module_names() if self._owns(n)}
        for name in owned - self._owned:
            self._waiting.add(name)
        self._waiting &= owned
        self._owned = owned
        for name in list(self._host.modules):
            if name in self._moving or not self._host.runs_alone(name):
                continue
            to = placement.owner(name)
            if to != self.me:
                why = f"its owner is {to}" if to else "no live worker has its file"
                self._move(name, start=False, reason=why)
        for name in sorted(self._waiting):
            if name in self._moving:
                continue
            if name in self._host.modules:
                self._waiting.discard(name)
            elif name not in placement.elsewhere and name not in self._host.arriving:
                self._waiting.discard(name)
                self._move(name, start=True, reason="its owner is this worker")

    def _count_unowned(self) -> None:
        """Count what is sent for the dead workers' modules until they run again."""
        orphans = self.table.still_unowned(self._host.modules)
        if orphans == self._orphans:
            return
        lost = self.unowned.lost
        for name in orphans.keys() - self._orphans.keys():
            self._lost_before[name] = lost.get(name, 0)
            log.warning(
                "module %s runs nowhere (its worker died): what is published for it is lost, "
                "and counted here until it runs again",
                name,
            )
        for name in self._orphans.keys() - orphans.keys():
            count = lost.get(name, 0) - self._lost_before.pop(name, 0)
            log.log(
                logging.WARNING if count else logging.INFO,  # the usual failover loses none here
                "module %s runs again; %d message(s) published here for it while no worker "
                "ran it are lost",
                name,
                count,
            )
        self._orphans = orphans
        self.unowned.set(orphans)
        if self._channel is not None:
            self._channel.watch = self.unowned.count if self.unowned.active else None

    def _move(self, name: str, *, start: bool, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._carry_out(name, start, reason))
        self._moving[name] = task

    async def _carry_out(self, name: str, start: bool, reason: str) -> None:
        verb = "starting" if start else "stopping"
        log.log(
            LogEvent.PLACE.level,
            "module %s: %s it here (%s): %s",
            name,
            verb,
            self.me,
            reason,
            extra=event_extra(LogEvent.PLACE, name, worker=self.me, action=verb),
        )
        try:
            if start:
                await self._host.swap(name, Trigger.PLACEMENT)
                if name in self._host.modules:
                    self.taken_over += 1
                    # Its subscriptions reach the NATS server before the beat says it runs.
                    await self._link.subscribed(SUBSCRIBE_TIMEOUT)
            else:
                to = self._host.placement.owner(name) if self._host.placement else None
                moved = (
                    self.hand_over is not None and to is not None and await self.hand_over(name, to)
                )
                if not moved:
                    await self._host.swap(name, Trigger.PLACEMENT, lambda: None)
                self.released += 1
        except Exception:
            log.exception("module %s: %s it failed", name, verb)
        finally:
            self._moving.pop(name, None)
        await self._publish()  # the others learn at once (a new owner waits for this)
        self._dirty.set()

    async def _publish(self) -> None:
        await self._link.publish_now(BEAT_PREFIX + self.me, encode_beat(self.beat()))

    def _log_change(self, before: tuple[str, ...]) -> None:
        after = self.table.live()
        if after != before:
            log.info("live workers: %s (were %s)", ", ".join(after), ", ".join(before))
