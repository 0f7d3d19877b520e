"""The life cycle of one module name as a pure state machine: events in, actions out.

`SwapMachine` decides; `supervisor/swapper.py` carries out. The machine does no
I/O, awaits nothing, reads no clock and starts no thread: it is fed an `Event`
(a file changed, a version staged, the old version drained, probation passed, a
trap threshold hit, a backoff elapsed...) and answers with the `Action`s to
perform next, in order. At most the last action of a step produces the next
event; the carrier runs it and feeds the result back.

Between operations a name rests in one of three `Resting` states: nothing
loaded, a version live, or quarantined. An operation (a swap, an unload, a
quarantine, a retry) runs through `Phase`s; requests arriving meanwhile are
coalesced into exactly one follow-up, the latest one winning, which starts as
soon as the running operation finishes.

A swap, in phases (see ARCHITECTURE.md, "Hot swap")::

    IDLE --requested--> READING --new bytes--> STAGING --staged--> DRAINING
    DRAINING --drained--> HANDING_OVER --handed over--> PROBATION --passed--> IDLE
    DRAINING --drain timed out--> PROBATION (queued messages moved, no state handed)
    HANDING_OVER --restore trapped--> ROLLING_BACK;  PROBATION --failed--> ROLLING_BACK
    ROLLING_BACK --rolled back--> IDLE

A canary (`RequestKind.CANARY`) reads and stages the same way, then rests in
CANARY with both versions serving until a verdict::

    STAGING --staged--> CANARY --promoted--> DRAINING (then as a swap; recorded PROMOTED)
    CANARY --aborted--> ROLLING_BACK --rolled back--> IDLE

Every (phase, event) pair not in the table raises `SwapStateError` with the
module name, the phase and the event.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.policy.history import Outcome, Trigger

__all__ = [
    "Action",
    "Event",
    "Phase",
    "Request",
    "RequestKind",
    "Resting",
    "Step",
    "SwapMachine",
    "SwapStateError",
    "Trigger",
]


class RequestKind(enum.Enum):
    CHANGE = "change"  # load, swap or unload to the bytes the source has now
    QUARANTINE = "quarantine"  # the live version trapped too often
    RETRY = "retry"  # the quarantine backoff elapsed
    CANARY = "canary"  # run the source's bytes beside the live version until promoted or aborted


@dataclass(frozen=True, slots=True)
class Request:
    """What was asked of a name; `source` is opaque here (the carrier reads it)."""

    kind: RequestKind
    trigger: Trigger
    source: object = None


class Resting(enum.Enum):
    """What a name has between operations."""

    ABSENT = "absent"
    LIVE = "live"
    QUARANTINED = "quarantined"


class Phase(enum.Enum):
    IDLE = "idle"
    READING = "reading"  # reading the source's bytes and comparing them with the live version
    STAGING = "staging"  # compile, instantiate, init(); effects held
    DRAINING = "draining"  # cut over; the old version finishes what it has queued
    HANDING_OVER = "handing over"  # old save_state() -> new restore_state()
    PROBATION = "probation"  # the new version's mailbox is open and watched
    ROLLING_BACK = "rolling back"
    UNLOADING = "unloading"
    QUARANTINING = "quarantining"
    RETRYING = "retrying"  # a fresh instance of the quarantined version is starting
    CANARY = "canary"  # both versions serve, split by percentage, until a verdict


class Event(enum.Enum):
    REQUESTED = "requested"
    READ_FAILED = "read failed"  # the file name or its rule.txt is invalid
    READ_GONE = "read gone"  # the file is deleted
    READ_SAME = "read same"  # the same bytes and limits as the live version
    READ_NEW = "read new"
    STAGED = "staged"
    STAGE_FAILED = "stage failed"
    DRAINED = "drained"
    DRAIN_TIMED_OUT = "drain timed out"
    HANDED_OVER = "handed over"  # including nothing to hand over, or save_state() trapped
    RESTORE_TRAPPED = "restore trapped"
    PROBATION_PASSED = "probation passed"
    PROBATION_FAILED = "probation failed"
    ROLLED_BACK = "rolled back"
    UNLOADED = "unloaded"
    QUARANTINED = "quarantined"
    NOT_FAULTY = "not faulty"  # the faulty version was swapped or unloaded meanwhile
    RETRY_STARTED = "retry started"
    RETRY_FAILED = "retry failed"
    CANARY_PROMOTED = "canary promoted"  # its window passed, or promote was asked for
    CANARY_ABORTED = "canary aborted"  # its error budget ran out, or abort was asked for


class Action(enum.Enum):
    READ = "read"  # -> READ_FAILED | READ_GONE | READ_SAME | READ_NEW
    STAGE = "stage"  # -> STAGED | STAGE_FAILED
    ACTIVATE = "activate"  # the staged version goes live (nothing to take over from)
    CUT_OVER = "cut over"  # one bus step: old subscriptions out, new in; new mailbox held
    DRAIN_OLD = "drain old"  # -> DRAINED | DRAIN_TIMED_OUT
    MOVE_QUEUED = "move queued"  # the old version's queued messages go to the new one
    HAND_OVER_STATE = "hand over state"  # -> HANDED_OVER | RESTORE_TRAPPED
    OPEN = "open"  # release the new mailbox on probation -> PROBATION_PASSED | _FAILED
    CLOSE_OLD = "close old"
    ROLL_BACK = "roll back"  # old takes back subscriptions and queued messages -> ROLLED_BACK
    UNLOAD = "unload"  # drain and close the live version -> UNLOADED
    QUARANTINE = "quarantine"  # take the faulty version out -> QUARANTINED | NOT_FAULTY
    SCHEDULE_RETRY = "schedule retry"
    CANCEL_RETRY = "cancel retry"
    END_QUARANTINE = "end quarantine"
    START_RETRY = "start retry"  # -> RETRY_STARTED | RETRY_FAILED
    START_CANARY = (
        "start canary"  # split traffic to the staged version -> CANARY_PROMOTED | _ABORTED
    )
    END_SPLIT = "end split"  # all traffic to the live version again (promotion cuts over next)
    ABORT_CANARY = (
        "abort canary"  # the canary's queued work goes to the live version -> ROLLED_BACK
    )
    RECORD = "record"  # record the attempt in the history with `Step.outcome`


# The actions that produce the next event; each ends a step.
EVENT_ACTIONS = frozenset(
    {
        Action.READ,
        Action.STAGE,
        Action.DRAIN_OLD,
        Action.HAND_OVER_STATE,
        Action.OPEN,
        Action.ROLL_BACK,
        Action.UNLOAD,
        Action.QUARANTINE,
        Action.START_RETRY,
        Action.START_CANARY,
        Action.ABORT_CANARY,
    }
)


class SwapStateError(TinywasmError, RuntimeError):
    """An event arrived that the module's current phase does not expect (a bug in the carrier)."""


@dataclass(frozen=True, slots=True)
class Step:
    """What to do next: `actions` in order; `outcome` is what `RECORD` records."""

    actions: tuple[Action, ...] = ()
    outcome: Outcome | None = None
    request: Request | None = None  # the request an operation starting in this step serves

    @property
    def waits(self) -> bool:
        """True when the last action produces the next event."""
        return bool(self.actions) and self.actions[-1] in EVENT_ACTIONS


@dataclass(slots=True)
class SwapMachine:
    """One module name's swap, rollback, quarantine and unload decisions."""

    name: str
    resting: Resting = Resting.ABSENT
    phase: Phase = Phase.IDLE
    pending: Request | None = None  # the single coalesced follow-up
    current: Request | None = None  # the request the running operation serves
    _drain_timed_out: bool = field(default=False, repr=False)

    @property
    def busy(self) -> bool:
        return self.phase is not Phase.IDLE

    def request(self, request: Request) -> Step:
        """A change, quarantine or retry is asked for. Busy: it becomes the follow-up."""
        if self.busy:
            self.pending = request  # the latest wins
            return Step()
        return self._start(request)

    def handle(self, event: Event) -> Step:
        """The result of the last action; returns what to do next."""
        if event is Event.REQUESTED:
            raise SwapStateError(f"module {self.name!r}: use request() to ask for a change")
        handler = _TABLE.get((self.phase, event))
        if handler is None:
            raise SwapStateError(
                f"module {self.name!r}: event {event.value!r} is not expected "
                f"while {self.phase.value}"
            )
        return handler(self)

    def reset(self, resting: Resting) -> Step:
        """The carrier failed unexpectedly mid-operation: rest as `resting` (what it sees now),
        then start the follow-up, if any."""
        self.resting = resting
        return self._finish()

    # -- transitions -------------------------------------------------------------------------

    def _start(self, request: Request) -> Step:
        self.current = request
        self._drain_timed_out = False
        if request.kind in (RequestKind.CHANGE, RequestKind.CANARY):
            return self._go(Phase.READING, Action.READ, request=request)
        if request.kind is RequestKind.QUARANTINE and self.resting is Resting.LIVE:
            return self._go(Phase.QUARANTINING, Action.QUARANTINE, request=request)
        if request.kind is RequestKind.RETRY and self.resting is Resting.QUARANTINED:
            return self._go(Phase.RETRYING, Action.START_RETRY, request=request)
        return self._finish()  # stale: nothing to quarantine or retry any more

    def _go(self, phase: Phase, *actions: Action, request: Request | None = None) -> Step:
        self.phase = phase
        return Step(actions, request=request)

    def _finish(self, *actions: Action, outcome: Outcome | None = None) -> Step:
        """End the operation; start the follow-up, if any, in the same step."""
        self.phase, self.current = Phase.IDLE, None
        follow_up, self.pending = self.pending, None
        if follow_up is None:
            return Step(actions, outcome)
        if actions and actions[-1] in EVENT_ACTIONS:  # pragma: no cover - table invariant
            raise SwapStateError(f"module {self.name!r}: a step may wait for one event only")
        nxt = self._start(follow_up)
        return Step(actions + nxt.actions, outcome or nxt.outcome, nxt.request)

    def _read_failed(self) -> Step:
        return self._finish(Action.RECORD, outcome=Outcome.REFUSED)

    def _read_gone(self) -> Step:
        if self.resting is Resting.LIVE:
            return self._go(Phase.UNLOADING, Action.UNLOAD)
        if self.resting is Resting.QUARANTINED:  # its file is gone: no more retries
            self.resting = Resting.ABSENT
            return self._finish(Action.CANCEL_RETRY, Action.END_QUARANTINE)
        return self._finish()

    def _read_same(self) -> Step:
        return self._finish()

    def _read_new(self) -> Step:
        return self._go(Phase.STAGING, Action.STAGE)

    def _stage_failed(self) -> Step:
        return self._finish(Action.RECORD, outcome=Outcome.REFUSED)

    def _staged(self) -> Step:
        canary = self.current is not None and self.current.kind is RequestKind.CANARY
        if canary and self.resting is Resting.LIVE:
            return self._go(Phase.CANARY, Action.START_CANARY)
        if self.resting is Resting.LIVE:
            return self._go(Phase.DRAINING, Action.CUT_OVER, Action.DRAIN_OLD)
        ends: tuple[Action, ...] = ()
        if self.resting is Resting.QUARANTINED:  # new bytes end a quarantine at once
            ends = (Action.CANCEL_RETRY, Action.END_QUARANTINE)
        self.resting = Resting.LIVE
        return self._finish(*ends, Action.ACTIVATE, Action.RECORD, outcome=Outcome.LOADED)

    def _drained(self) -> Step:
        return self._go(Phase.HANDING_OVER, Action.HAND_OVER_STATE)

    def _drain_timed_out_step(self) -> Step:
        # The old version is still busy: its queue moves over, and no state is handed over.
        self._drain_timed_out = True
        return self._go(Phase.PROBATION, Action.MOVE_QUEUED, Action.OPEN)

    def _handed_over(self) -> Step:
        return self._go(Phase.PROBATION, Action.OPEN)

    def _roll_back(self) -> Step:
        return self._go(Phase.ROLLING_BACK, Action.ROLL_BACK)

    def _canary_promoted(self) -> Step:
        # From here it is a swap: cut over, drain the old version, hand over its state,
        # probation. (The split ends first, so the cut-over is one bus step as ever.)
        return self._go(Phase.DRAINING, Action.END_SPLIT, Action.CUT_OVER, Action.DRAIN_OLD)

    def _canary_aborted(self) -> Step:
        return self._go(Phase.ROLLING_BACK, Action.ABORT_CANARY)

    def _probation_passed(self) -> Step:
        outcome = Outcome.TIMED_OUT_DRAINING if self._drain_timed_out else Outcome.SWAPPED
        if outcome is Outcome.SWAPPED and self.current and self.current.kind is RequestKind.CANARY:
            outcome = Outcome.PROMOTED
        return self._finish(Action.CLOSE_OLD, Action.RECORD, outcome=outcome)

    def _probation_failed(self) -> Step:
        if self._drain_timed_out:
            # The old version never got idle and gave its queue away: nothing to go back to.
            return self._finish(Action.CLOSE_OLD, Action.RECORD, outcome=Outcome.TIMED_OUT_DRAINING)
        return self._roll_back()

    def _rolled_back(self) -> Step:
        return self._finish(Action.RECORD, outcome=Outcome.ROLLED_BACK)

    def _unloaded(self) -> Step:
        self.resting = Resting.ABSENT
        return self._finish(Action.RECORD, outcome=Outcome.UNLOADED)

    def _quarantined(self) -> Step:
        self.resting = Resting.QUARANTINED
        return self._finish(Action.SCHEDULE_RETRY, Action.RECORD, outcome=Outcome.QUARANTINED)

    def _not_faulty(self) -> Step:
        return self._finish()

    def _retry_started(self) -> Step:
        self.resting = Resting.LIVE
        return self._finish(
            Action.ACTIVATE, Action.END_QUARANTINE, Action.RECORD, outcome=Outcome.LOADED
        )

    def _retry_failed(self) -> Step:
        return self._finish(Action.SCHEDULE_RETRY, Action.RECORD, outcome=Outcome.REFUSED)


_TABLE: dict[tuple[Phase, Event], Callable[[SwapMachine], Step]] = {
    (Phase.READING, Event.READ_FAILED): SwapMachine._read_failed,
    (Phase.READING, Event.READ_GONE): SwapMachine._read_gone,
    (Phase.READING, Event.READ_SAME): SwapMachine._read_same,
    (Phase.READING, Event.READ_NEW): SwapMachine._read_new,
    (Phase.STAGING, Event.STAGED): SwapMachine._staged,
    (Phase.STAGING, Event.STAGE_FAILED): SwapMachine._stage_failed,
    (Phase.DRAINING, Event.DRAINED): SwapMachine._drained,
    (Phase.DRAINING, Event.DRAIN_TIMED_OUT): SwapMachine._drain_timed_out_step,
    (Phase.HANDING_OVER, Event.HANDED_OVER): SwapMachine._handed_over,
    (Phase.HANDING_OVER, Event.RESTORE_TRAPPED): SwapMachine._roll_back,
    (Phase.PROBATION, Event.PROBATION_PASSED): SwapMachine._probation_passed,
    (Phase.PROBATION, Event.PROBATION_FAILED): SwapMachine._probation_failed,
    (Phase.ROLLING_BACK, Event.ROLLED_BACK): SwapMachine._rolled_back,
    (Phase.UNLOADING, Event.UNLOADED): SwapMachine._unloaded,
    (Phase.QUARANTINING, Event.QUARANTINED): SwapMachine._quarantined,
    (Phase.QUARANTINING, Event.NOT_FAULTY): SwapMachine._not_faulty,
    (Phase.RETRYING, Event.RETRY_STARTED): SwapMachine._retry_started,
    (Phase.RETRYING, Event.RETRY_FAILED): SwapMachine._retry_failed,
    (Phase.CANARY, Event.CANARY_PROMOTED): SwapMachine._canary_promoted,
    (Phase.CANARY, Event.CANARY_ABORTED): SwapMachine._canary_aborted,
}
