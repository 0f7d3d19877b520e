"""Moving one module from a worker to another, live, as two pure state machines. No I/O.

`Giver` runs on the worker the module leaves (it is stopping gracefully, or hands a
module back to its returning home); `Taker` on the worker it goes to.
`cluster/handover.py` carries out the actions over NATS and feeds the results back.

The move keeps a hot swap's guarantee across processes: every bus message for the
module is handled once, in order per publisher, by the old owner or by the new one.

1. The giver asks the taker to prepare. The taker stages the module from its own
   file (compiled, `init()` run, effects held) and subscribes a *fence* to the
   module's patterns: from then on every message for the module reaches the taker,
   which keeps it aside with its stamp (the publisher's id and sequence number,
   bus/nats.py). It answers ready once its subscriptions are at the NATS server.
2. The giver syncs with the NATS server (so every message routed before the fence
   existed has reached it), then cuts over: in one bus step it withdraws the
   module's subscriptions and notes, per publisher and pattern, the last sequence
   number the module got. It drains the module and takes its `save_state()` bytes.
3. The giver commits: state, marks and any messages still queued. The taker
   restores the state, keeps from its fence only what comes after the marks, and
   in one bus step replaces the fence by the module's subscriptions, with those
   messages queued first. Then it opens the module: what it holds runs, in order.

HTTP requests for the module that reach either worker meanwhile wait for the move
(bounded by their call deadline) and are then answered by the new owner.

A prepare that fails (the taker has no file, a bad one, no answer, or it died) leaves
the module where it is. A commit that fails after the cut-over loses the state: the
taker opens the module fresh, with every message its fence kept, once its commit
timeout passed or the fleet declared the giver dead, whichever comes first; a taker
that died takes the fence with it, and the module starts on its next owner.
Every (phase, event) pair not in the tables raises `HandoverError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tinywasm_wasi.exceptions import TinywasmError

__all__ = [
    "Giver",
    "GiverAction",
    "GiverEvent",
    "GiverPhase",
    "HandoverError",
    "Taker",
    "TakerAction",
    "TakerEvent",
    "TakerPhase",
]


class HandoverError(TinywasmError, RuntimeError):
    """An event arrived that the move's current phase does not expect (a bug in the carrier)."""


# -- the giver --------------------------------------------------------------------------------


class GiverPhase(enum.Enum):
    IDLE = "idle"
    PREPARING = "preparing"  # the taker stages the module and fences its patterns
    DRAINING = "draining"  # cut over here; the module finishes what it has queued
    SAVING = "saving"  # save_state()
    COMMITTING = "committing"  # state, marks and leftovers sent; waiting for the taker
    MOVED = "moved"  # the taker serves the module
    KEPT = "kept"  # the taker could not prepare: the module stays here
    LOST = "lost"  # cut over, but the commit failed: the taker starts without the state


class GiverEvent(enum.Enum):
    START = "start"
    READY = "ready"  # the taker's fence is at the NATS server
    REFUSED = "refused"  # the taker could not stage the module, or did not answer
    DRAINED = "drained"
    DRAIN_TIMED_OUT = "drain timed out"  # leftover messages travel with the commit
    SAVED = "saved"  # including no state, or save_state() trapped
    COMMITTED = "committed"
    COMMIT_FAILED = "commit failed"


class GiverAction(enum.Enum):
    ASK_PREPARE = "ask prepare"  # -> READY | REFUSED
    SYNC = "sync"  # wait until the NATS server has sent us everything routed so far
    CUT_OVER = "cut over"  # one bus step: subscriptions out, marks taken
    DRAIN = "drain"  # -> DRAINED | DRAIN_TIMED_OUT
    TAKE_LEFTOVERS = "take leftovers"  # the queued messages the drain did not reach
    SAVE_STATE = "save state"  # -> SAVED
    COMMIT = "commit"  # -> COMMITTED | COMMIT_FAILED
    CLOSE = "close"  # close the module here; it no longer runs on this worker
    ANNOUNCE = "announce"  # tell every worker where the module runs now
    KEEP = "keep"  # log why it stays; the module keeps serving here
    LOG_LOST = "log lost"  # log that the state (and the leftovers) did not arrive


GIVER_WAITS = frozenset(
    {GiverAction.ASK_PREPARE, GiverAction.DRAIN, GiverAction.SAVE_STATE, GiverAction.COMMIT}
)

G, GE, GA = GiverPhase, GiverEvent, GiverAction

_GIVER: dict[tuple[GiverPhase, GiverEvent], tuple[GiverPhase, tuple[GiverAction, ...]]] = {
    (G.IDLE, GE.START): (G.PREPARING, (GA.ASK_PREPARE,)),
    (G.PREPARING, GE.READY): (G.DRAINING, (GA.SYNC, GA.CUT_OVER, GA.DRAIN)),
    (G.PREPARING, GE.REFUSED): (G.KEPT, (GA.KEEP,)),
    (G.DRAINING, GE.DRAINED): (G.SAVING, (GA.SAVE_STATE,)),
    (G.DRAINING, GE.DRAIN_TIMED_OUT): (G.SAVING, (GA.TAKE_LEFTOVERS, GA.SAVE_STATE)),
    (G.SAVING, GE.SAVED): (G.COMMITTING, (GA.COMMIT,)),
    (G.COMMITTING, GE.COMMITTED): (G.MOVED, (GA.CLOSE, GA.ANNOUNCE)),
    (G.COMMITTING, GE.COMMIT_FAILED): (G.LOST, (GA.CLOSE, GA.LOG_LOST)),
}


@dataclass(slots=True)
class Giver:
    """One module's move away from this worker."""

    name: str
    phase: GiverPhase = GiverPhase.IDLE

    @property
    def done(self) -> bool:
        return self.phase in (GiverPhase.MOVED, GiverPhase.KEPT, GiverPhase.LOST)

    def handle(self, event: GiverEvent) -> tuple[GiverAction, ...]:
        """The result of the last action (or START); returns the actions to perform next."""
        self.phase, actions = _step(self.name, "giving", _GIVER, self.phase, event)
        return actions


# -- the taker --------------------------------------------------------------------------------


class TakerPhase(enum.Enum):
    IDLE = "idle"
    STAGING = "staging"  # compile, instantiate, init(); effects held
    FENCED = "fenced"  # the fence keeps the module's messages; waiting for the commit
    OPEN = "open"  # the module serves here
    REFUSED = "refused"  # it could not be staged: the giver keeps it
    ABANDONED = "abandoned"  # the giver stayed silent: opened without state


class TakerEvent(enum.Enum):
    PREPARE = "prepare"
    STAGED = "staged"
    STAGE_FAILED = "stage failed"
    COMMIT = "commit"
    COMMIT_TIMED_OUT = "commit timed out"  # no commit within the bound, or the giver died


class TakerAction(enum.Enum):
    STAGE = "stage"  # -> STAGED | STAGE_FAILED
    FENCE = "fence"  # subscribe the fence and wait until it is at the NATS server
    ANSWER_READY = "answer ready"
    ANSWER_REFUSED = "answer refused"
    WAIT_COMMIT = "wait commit"  # -> COMMIT | COMMIT_TIMED_OUT
    RESTORE_STATE = "restore state"  # a restore that traps drops the state (logged)
    TAKE_OVER = "take over"  # one bus step: fence out, module in; kept messages first
    OPEN = "open"  # the module's held effects and messages run, in order
    ANSWER_DONE = "answer done"
    ANNOUNCE = "announce"


TAKER_WAITS = frozenset({TakerAction.STAGE, TakerAction.WAIT_COMMIT})

T, TE, TA = TakerPhase, TakerEvent, TakerAction

_TAKER: dict[tuple[TakerPhase, TakerEvent], tuple[TakerPhase, tuple[TakerAction, ...]]] = {
    (T.IDLE, TE.PREPARE): (T.STAGING, (TA.STAGE,)),
    (T.STAGING, TE.STAGED): (T.FENCED, (TA.FENCE, TA.ANSWER_READY, TA.WAIT_COMMIT)),
    (T.STAGING, TE.STAGE_FAILED): (T.REFUSED, (TA.ANSWER_REFUSED,)),
    (T.FENCED, TE.COMMIT): (
        T.OPEN,
        (TA.RESTORE_STATE, TA.TAKE_OVER, TA.OPEN, TA.ANNOUNCE, TA.ANSWER_DONE),
    ),
    (T.FENCED, TE.COMMIT_TIMED_OUT): (T.ABANDONED, (TA.TAKE_OVER, TA.OPEN, TA.ANNOUNCE)),
}


@dataclass(slots=True)
class Taker:
    """One module's move to this worker."""

    name: str
    phase: TakerPhase = TakerPhase.IDLE

    @property
    def done(self) -> bool:
        return self.phase in (TakerPhase.OPEN, TakerPhase.REFUSED, TakerPhase.ABANDONED)

    def handle(self, event: TakerEvent) -> tuple[TakerAction, ...]:
        """The result of the last action (or PREPARE); returns the actions to perform next."""
        self.phase, actions = _step(self.name, "taking", _TAKER, self.phase, event)
        return actions


P = TypeVar("P", GiverPhase, TakerPhase)
E = TypeVar("E", GiverEvent, TakerEvent)
A = TypeVar("A", GiverAction, TakerAction)


def _step(
    name: str,
    what: str,
    table: dict[tuple[P, E], tuple[P, tuple[A, ...]]],
    phase: P,
    event: E,
) -> tuple[P, tuple[A, ...]]:
    found = table.get((phase, event))
    if found is None:
        raise HandoverError(
            f"module {name!r} ({what}): event {event.value!r} is not expected while {phase.value}"
        )
    return found


def keep_after(
    marks: dict[tuple[str, str], int], own: tuple[str, int] | None
) -> Callable[[str, str, int], bool]:
    """The fence's filter: True for a message the old owner did not handle.

    `marks` maps (publisher, pattern) to the last sequence number the module got through
    that pattern's subscription on the old owner; `own` is the old owner's id and its
    own last sequence number (its publishes reached the module locally, whatever the
    pattern). A message without a stamp (publisher "") is always kept.
    """

    def keep(publisher: str, pattern: str, seq: int) -> bool:
        if not publisher:
            return True
        if own is not None and publisher == own[0]:
            return seq > own[1]
        return seq > marks.get((publisher, pattern), 0)

    return keep
