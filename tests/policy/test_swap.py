"""The swap state machine as a table: every phase x event, without an event loop."""

from __future__ import annotations

import itertools

import pytest

from tinywasm_wasi.policy.history import Outcome
from tinywasm_wasi.policy.swap import (
    Action,
    Event,
    Phase,
    Request,
    RequestKind,
    Resting,
    SwapMachine,
    SwapStateError,
    Trigger,
)

A = Action
CHANGE = Request(RequestKind.CHANGE, Trigger.WATCHER)
QUARANTINE = Request(RequestKind.QUARANTINE, Trigger.QUARANTINE)
RETRY = Request(RequestKind.RETRY, Trigger.RETRY)

# (phase, resting before, event) -> (actions, outcome, phase after, resting after).
# Written out by hand: this is the specification the machine is checked against.
EXPECTED = {
    (Phase.READING, Resting.ABSENT, Event.READ_FAILED): (
        (A.RECORD,),
        Outcome.REFUSED,
        Phase.IDLE,
        Resting.ABSENT,
    ),
    (Phase.READING, Resting.LIVE, Event.READ_FAILED): (
        (A.RECORD,),
        Outcome.REFUSED,
        Phase.IDLE,
        Resting.LIVE,
    ),
    (Phase.READING, Resting.QUARANTINED, Event.READ_FAILED): (
        (A.RECORD,),
        Outcome.REFUSED,
        Phase.IDLE,
        Resting.QUARANTINED,
    ),
    (Phase.READING, Resting.ABSENT, Event.READ_GONE): ((), None, Phase.IDLE, Resting.ABSENT),
    (Phase.READING, Resting.LIVE, Event.READ_GONE): (
        (A.UNLOAD,),
        None,
        Phase.UNLOADING,
        Resting.LIVE,
    ),
    (Phase.READING, Resting.QUARANTINED, Event.READ_GONE): (
        (A.CANCEL_RETRY, A.END_QUARANTINE),
        None,
        Phase.IDLE,
        Resting.ABSENT,
    ),
    (Phase.READING, Resting.ABSENT, Event.READ_SAME): ((), None, Phase.IDLE, Resting.ABSENT),
    (Phase.READING, Resting.LIVE, Event.READ_SAME): ((), None, Phase.IDLE, Resting.LIVE),
    (Phase.READING, Resting.QUARANTINED, Event.READ_SAME): (
        (),
        None,
        Phase.IDLE,
        Resting.QUARANTINED,
    ),
    (Phase.READING, Resting.ABSENT, Event.READ_NEW): (
        (A.STAGE,),
        None,
        Phase.STAGING,
        Resting.ABSENT,
    ),
    (Phase.READING, Resting.LIVE, Event.READ_NEW): ((A.STAGE,), None, Phase.STAGING, Resting.LIVE),
    (Phase.READING, Resting.QUARANTINED, Event.READ_NEW): (
        (A.STAGE,),
        None,
        Phase.STAGING,
        Resting.QUARANTINED,
    ),
    (Phase.STAGING, Resting.ABSENT, Event.STAGED): (
        (A.ACTIVATE, A.RECORD),
        Outcome.LOADED,
        Phase.IDLE,
        Resting.LIVE,
    ),
    (Phase.STAGING, Resting.LIVE, Event.STAGED): (
        (A.CUT_OVER, A.DRAIN_OLD),
        None,
        Phase.DRAINING,
        Resting.LIVE,
    ),
    (Phase.STAGING, Resting.QUARANTINED, Event.STAGED): (
        (A.CANCEL_RETRY, A.END_QUARANTINE, A.ACTIVATE, A.RECORD),
        Outcome.LOADED,
        Phase.IDLE,
        Resting.LIVE,
    ),
    (Phase.STAGING, Resting.ABSENT, Event.STAGE_FAILED): (
        (A.RECORD,),
        Outcome.REFUSED,
        Phase.IDLE,
        Resting.ABSENT,
    ),
    (Phase.STAGING, Resting.LIVE, Event.STAGE_FAILED): (
        (A.RECORD,),
        Outcome.REFUSED,
        Phase.IDLE,
        Resting.LIVE,
    ),
    (Phase.STAGING, Resting.QUARANTINED, Event.STAGE_FAILED): (
        (A.RECORD,),
        Outcome.REFUSED,
        Phase.IDLE,
        Resting.QUARANTINED,
    ),
    (Phase.DRAINING, Resting.LIVE, Event.DRAINED): (
        (A.HAND_OVER_STATE,),
        None,
        Phase.HANDING_OVER,
        Resting.LIVE,
    ),
    (Phase.DRAINING, Resting.LIVE, Event.DRAIN_TIMED_OUT): (
        (A.MOVE_QUEUED, A.OPEN),
        None,
        Phase.PROBATION,
        Resting.LIVE,
    ),
    (Phase.HANDING_OVER, Resting.LIVE, Event.HANDED_OVER): (
        (A.OPEN,),
        None,
        Phase.PROBATION,
        Resting.LIVE,
    ),
    (Phase.HANDING_OVER, Resting.LIVE, Event.RESTORE_TRAPPED): (
        (A.ROLL_BACK,),
        None,
        Phase.ROLLING_BACK,
        Resting.LIVE,
    ),
    (Phase.PROBATION, Resting.LIVE, Event.PROBATION_PASSED): (
        (A.CLOSE_OLD, A.RECORD),
        Outcome.SWAPPED,
        Phase.IDLE,
        Resting.LIVE,
    ),
    (Phase.PROBATION, Resting.LIVE, Event.PROBATION_FAILED): (
        (A.ROLL_BACK,),
        None,
        Phase.ROLLING_BACK,
        Resting.LIVE,
    ),
    (Phase.ROLLING_BACK, Resting.LIVE, Event.ROLLED_BACK): (
        (A.RECORD,),
        Outcome.ROLLED_BACK,
        Phase.IDLE,
        Resting.LIVE,
    ),
    (Phase.UNLOADING, Resting.LIVE, Event.UNLOADED): (
        (A.RECORD,),
        Outcome.UNLOADED,
        Phase.IDLE,
        Resting.ABSENT,
    ),
    (Phase.QUARANTINING, Resting.LIVE, Event.QUARANTINED): (
        (A.SCHEDULE_RETRY, A.RECORD),
        Outcome.QUARANTINED,
        Phase.IDLE,
        Resting.QUARANTINED,
    ),
    (Phase.QUARANTINING, Resting.LIVE, Event.NOT_FAULTY): ((), None, Phase.IDLE, Resting.LIVE),
    (Phase.RETRYING, Resting.QUARANTINED, Event.RETRY_STARTED): (
        (A.ACTIVATE, A.END_QUARANTINE, A.RECORD),
        Outcome.LOADED,
        Phase.IDLE,
        Resting.LIVE,
    ),
    (Phase.RETRYING, Resting.QUARANTINED, Event.RETRY_FAILED): (
        (A.SCHEDULE_RETRY, A.RECORD),
        Outcome.REFUSED,
        Phase.IDLE,
        Resting.QUARANTINED,
    ),
    (Phase.CANARY, Resting.LIVE, Event.CANARY_PROMOTED): (
        (A.END_SPLIT, A.CUT_OVER, A.DRAIN_OLD),
        None,
        Phase.DRAINING,
        Resting.LIVE,
    ),
    (Phase.CANARY, Resting.LIVE, Event.CANARY_ABORTED): (
        (A.ABORT_CANARY,),
        None,
        Phase.ROLLING_BACK,
        Resting.LIVE,
    ),
}

EVENTS = [e for e in Event if e is not Event.REQUESTED]
# The (phase, resting) pairs the machine can be in: a cut-over, a rollback, an unload and a
# quarantine happen only to a live version, a retry only to a quarantined one.
ONLY_LIVE = {
    Phase.DRAINING,
    Phase.HANDING_OVER,
    Phase.PROBATION,
    Phase.ROLLING_BACK,
    Phase.UNLOADING,
    Phase.QUARANTINING,
    Phase.CANARY,
}
REACHABLE = [
    (phase, resting)
    for phase, resting in itertools.product(Phase, Resting)
    if (phase not in ONLY_LIVE or resting is Resting.LIVE)
    and (phase is not Phase.RETRYING or resting is Resting.QUARANTINED)
]
ALL = [(phase, resting, event) for (phase, resting), event in itertools.product(REACHABLE, EVENTS)]


def machine_at(phase: Phase, resting: Resting) -> SwapMachine:
    m = SwapMachine("chat", resting=resting)
    m.phase = phase
    m.current = CHANGE
    return m


@pytest.mark.parametrize(("phase", "resting", "event"), ALL, ids=lambda v: getattr(v, "value", v))
def test_every_phase_and_event(phase: Phase, resting: Resting, event: Event) -> None:
    m = machine_at(phase, resting)
    expected = EXPECTED.get((phase, resting, event))
    if expected is None:
        with pytest.raises(SwapStateError) as caught:
            m.handle(event)
        assert str(caught.value) == (
            f"module 'chat': event {event.value!r} is not expected while {phase.value}"
        )
        assert (m.phase, m.resting) == (phase, resting), "a refused event changes nothing"
        return
    actions, outcome, phase_after, resting_after = expected
    step = m.handle(event)
    assert step.actions == actions
    assert step.outcome is outcome
    assert (m.phase, m.resting) == (phase_after, resting_after)
    assert step.waits == (phase_after is not Phase.IDLE)


def test_table_size() -> None:
    # 3 x 3 resting-independent phases + 7 live-only + 1 quarantined-only, x 20 events.
    assert len(REACHABLE) == 17 and len(ALL) == 17 * 20


def test_expected_table_names_only_reachable_pairs() -> None:
    # Guards the table above against typos: every entry is a real (phase, resting, event).
    assert set(EXPECTED) <= set(ALL)


@pytest.mark.parametrize(
    ("resting", "asked", "actions", "phase"),
    [
        (Resting.ABSENT, CHANGE, (A.READ,), Phase.READING),
        (Resting.LIVE, CHANGE, (A.READ,), Phase.READING),
        (Resting.QUARANTINED, CHANGE, (A.READ,), Phase.READING),
        (Resting.ABSENT, QUARANTINE, (), Phase.IDLE),
        (Resting.LIVE, QUARANTINE, (A.QUARANTINE,), Phase.QUARANTINING),
        (Resting.QUARANTINED, QUARANTINE, (), Phase.IDLE),
        (Resting.ABSENT, RETRY, (), Phase.IDLE),
        (Resting.LIVE, RETRY, (), Phase.IDLE),
        (Resting.QUARANTINED, RETRY, (A.START_RETRY,), Phase.RETRYING),
    ],
)
def test_request_while_idle(
    resting: Resting, asked: Request, actions: tuple[Action, ...], phase: Phase
) -> None:
    m = SwapMachine("chat", resting=resting)
    step = m.request(asked)
    assert (step.actions, m.phase) == (actions, phase)
    assert step.request == (asked if actions else None)


@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.IDLE])
def test_request_while_busy_becomes_the_follow_up(phase: Phase) -> None:
    m = machine_at(phase, Resting.LIVE)
    assert m.request(QUARANTINE).actions == ()
    assert m.request(CHANGE).actions == (), "the latest request replaces the pending one"
    assert m.pending == CHANGE
    assert m.phase is phase


def test_follow_up_starts_in_the_step_that_ends_the_swap() -> None:
    m = SwapMachine("chat", resting=Resting.LIVE)
    m.request(CHANGE)
    m.handle(Event.READ_NEW)
    m.handle(Event.STAGED)
    later = Request(RequestKind.CHANGE, Trigger.API, source="v3")
    assert m.request(later).actions == ()
    m.handle(Event.DRAINED)
    m.handle(Event.HANDED_OVER)
    step = m.handle(Event.PROBATION_PASSED)
    assert step.actions == (A.CLOSE_OLD, A.RECORD, A.READ)
    assert step.outcome is Outcome.SWAPPED
    assert step.request == later and m.current == later
    assert m.phase is Phase.READING and m.pending is None


def test_stale_follow_up_ends_idle() -> None:
    m = SwapMachine("chat", resting=Resting.LIVE)
    m.request(CHANGE)
    m.request(RETRY)  # a retry timer fired during a swap of a live module: nothing to retry
    step = m.handle(Event.READ_SAME)
    assert step.actions == ()
    assert m.phase is Phase.IDLE and m.pending is None


def test_a_drain_timeout_keeps_the_new_version_even_if_probation_fails() -> None:
    m = SwapMachine("chat", resting=Resting.LIVE)
    for event in (None, Event.READ_NEW, Event.STAGED, Event.DRAIN_TIMED_OUT):
        step = m.request(CHANGE) if event is None else m.handle(event)
    assert step.actions == (A.MOVE_QUEUED, A.OPEN)
    step = m.handle(Event.PROBATION_FAILED)
    assert step.actions == (A.CLOSE_OLD, A.RECORD)
    assert step.outcome is Outcome.TIMED_OUT_DRAINING


def test_a_drain_timeout_is_reported_when_probation_passes() -> None:
    m = SwapMachine("chat", resting=Resting.LIVE)
    m.request(CHANGE)
    for event in (Event.READ_NEW, Event.STAGED, Event.DRAIN_TIMED_OUT):
        m.handle(event)
    assert m.handle(Event.PROBATION_PASSED).outcome is Outcome.TIMED_OUT_DRAINING
    # and the next swap starts clean
    m.request(CHANGE)
    for event in (Event.READ_NEW, Event.STAGED, Event.DRAINED, Event.HANDED_OVER):
        m.handle(event)
    assert m.handle(Event.PROBATION_PASSED).outcome is Outcome.SWAPPED


def test_requested_is_not_an_event_to_handle() -> None:
    with pytest.raises(SwapStateError, match="use request"):
        SwapMachine("chat").handle(Event.REQUESTED)


def test_reset_after_an_unexpected_failure_rests_and_starts_the_follow_up() -> None:
    m = SwapMachine("chat", resting=Resting.LIVE)
    m.request(CHANGE)
    m.handle(Event.READ_NEW)
    m.request(RETRY)
    m.request(CHANGE)
    step = m.reset(Resting.ABSENT)
    assert step.actions == (A.READ,) and step.request == CHANGE
    assert (m.phase, m.resting) == (Phase.READING, Resting.ABSENT)
    assert SwapMachine("x", resting=Resting.LIVE).reset(Resting.LIVE).actions == ()


CANARY = Request(RequestKind.CANARY, Trigger.CANARY)


def test_a_promoted_canary_ends_as_a_swap_recorded_promoted() -> None:
    m = SwapMachine("chat", resting=Resting.LIVE)
    assert m.request(CANARY).actions == (A.READ,)
    assert m.handle(Event.READ_NEW).actions == (A.STAGE,)
    assert m.handle(Event.STAGED).actions == (A.START_CANARY,)
    assert m.phase is Phase.CANARY
    assert m.request(CHANGE).actions == ()  # a change meanwhile waits for the verdict
    steps = [
        m.handle(e)
        for e in (
            Event.CANARY_PROMOTED,
            Event.DRAINED,
            Event.HANDED_OVER,
            Event.PROBATION_PASSED,
        )
    ]
    assert [s.actions for s in steps[:3]] == [
        (A.END_SPLIT, A.CUT_OVER, A.DRAIN_OLD),
        (A.HAND_OVER_STATE,),
        (A.OPEN,),
    ]
    assert steps[3].actions == (A.CLOSE_OLD, A.RECORD, A.READ)  # then the waiting change
    assert steps[3].outcome is Outcome.PROMOTED


def test_an_aborted_canary_is_rolled_back() -> None:
    m = SwapMachine("chat", resting=Resting.LIVE)
    m.request(CANARY)
    m.handle(Event.READ_NEW)
    m.handle(Event.STAGED)
    assert m.handle(Event.CANARY_ABORTED).actions == (A.ABORT_CANARY,)
    step = m.handle(Event.ROLLED_BACK)
    assert (step.actions, step.outcome, m.phase) == ((A.RECORD,), Outcome.ROLLED_BACK, Phase.IDLE)


def test_a_canary_of_nothing_running_just_loads() -> None:
    m = SwapMachine("chat", resting=Resting.ABSENT)
    m.request(CANARY)
    m.handle(Event.READ_NEW)
    step = m.handle(Event.STAGED)
    assert (step.actions, step.outcome) == ((A.ACTIVATE, A.RECORD), Outcome.LOADED)
