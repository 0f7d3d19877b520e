"""The handover machines and the fence's filter as tables, without an event loop."""

from __future__ import annotations

import itertools

import pytest

from tinywasm_wasi.policy.handover import (
    Giver,
    GiverAction,
    GiverEvent,
    GiverPhase,
    HandoverError,
    Taker,
    TakerAction,
    TakerEvent,
    TakerPhase,
    keep_after,
)

G, GE, GA = GiverPhase, GiverEvent, GiverAction
T, TE, TA = TakerPhase, TakerEvent, TakerAction

# (phase, event) -> (phase after, actions). Written out by hand: the specification.
GIVER = {
    (G.IDLE, GE.START): (G.PREPARING, (GA.ASK_PREPARE,)),
    (G.PREPARING, GE.READY): (G.DRAINING, (GA.SYNC, GA.CUT_OVER, GA.DRAIN)),
    (G.PREPARING, GE.REFUSED): (G.KEPT, (GA.KEEP,)),
    (G.DRAINING, GE.DRAINED): (G.SAVING, (GA.SAVE_STATE,)),
    (G.DRAINING, GE.DRAIN_TIMED_OUT): (G.SAVING, (GA.TAKE_LEFTOVERS, GA.SAVE_STATE)),
    (G.SAVING, GE.SAVED): (G.COMMITTING, (GA.COMMIT,)),
    (G.COMMITTING, GE.COMMITTED): (G.MOVED, (GA.CLOSE, GA.ANNOUNCE)),
    (G.COMMITTING, GE.COMMIT_FAILED): (G.LOST, (GA.CLOSE, GA.LOG_LOST)),
}

TAKER = {
    (T.IDLE, TE.PREPARE): (T.STAGING, (TA.STAGE,)),
    (T.STAGING, TE.STAGED): (T.FENCED, (TA.FENCE, TA.ANSWER_READY, TA.WAIT_COMMIT)),
    (T.STAGING, TE.STAGE_FAILED): (T.REFUSED, (TA.ANSWER_REFUSED,)),
    (T.FENCED, TE.COMMIT): (
        T.OPEN,
        (TA.RESTORE_STATE, TA.TAKE_OVER, TA.OPEN, TA.ANNOUNCE, TA.ANSWER_DONE),
    ),
    (T.FENCED, TE.COMMIT_TIMED_OUT): (T.ABANDONED, (TA.TAKE_OVER, TA.OPEN, TA.ANNOUNCE)),
}


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(GiverPhase, GiverEvent)))
def test_giver_table(phase: GiverPhase, event: GiverEvent) -> None:
    giver = Giver("counter", phase)
    expected = GIVER.get((phase, event))
    if expected is None:
        with pytest.raises(HandoverError, match=f"'counter' \\(giving\\).*{event.value}"):
            giver.handle(event)
        assert giver.phase is phase
        return
    assert giver.handle(event) == expected[1]
    assert giver.phase is expected[0]


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(TakerPhase, TakerEvent)))
def test_taker_table(phase: TakerPhase, event: TakerEvent) -> None:
    taker = Taker("counter", phase)
    expected = TAKER.get((phase, event))
    if expected is None:
        with pytest.raises(HandoverError, match=f"'counter' \\(taking\\).*{event.value}"):
            taker.handle(event)
        assert taker.phase is phase
        return
    assert taker.handle(event) == expected[1]
    assert taker.phase is expected[0]


@pytest.mark.parametrize(
    ("events", "phase", "done"),
    [
        ((GE.START, GE.READY, GE.DRAINED, GE.SAVED, GE.COMMITTED), G.MOVED, True),
        ((GE.START, GE.READY, GE.DRAIN_TIMED_OUT, GE.SAVED, GE.COMMITTED), G.MOVED, True),
        ((GE.START, GE.REFUSED), G.KEPT, True),
        ((GE.START, GE.READY, GE.DRAINED, GE.SAVED, GE.COMMIT_FAILED), G.LOST, True),
        ((GE.START, GE.READY), G.DRAINING, False),
    ],
)
def test_giver_runs(events: tuple[GiverEvent, ...], phase: GiverPhase, done: bool) -> None:
    giver = Giver("counter")
    for event in events:
        giver.handle(event)
    assert (giver.phase, giver.done) == (phase, done)


@pytest.mark.parametrize(
    ("events", "phase", "done"),
    [
        ((TE.PREPARE, TE.STAGED, TE.COMMIT), T.OPEN, True),
        ((TE.PREPARE, TE.STAGED, TE.COMMIT_TIMED_OUT), T.ABANDONED, True),
        ((TE.PREPARE, TE.STAGE_FAILED), T.REFUSED, True),
        ((TE.PREPARE, TE.STAGED), T.FENCED, False),
    ],
)
def test_taker_runs(events: tuple[TakerEvent, ...], phase: TakerPhase, done: bool) -> None:
    taker = Taker("counter")
    for event in events:
        taker.handle(event)
    assert (taker.phase, taker.done) == (phase, done)


MARKS = {("p1", "counter.*"): 10, ("p1", "counter.inc"): 7, ("p2", "counter.*"): 3}
OWN = ("old", 50)


@pytest.mark.parametrize(
    ("publisher", "pattern", "seq", "kept"),
    [
        ("p1", "counter.*", 10, False),  # the old owner handled it
        ("p1", "counter.*", 11, True),
        ("p1", "counter.inc", 8, True),  # marks are per pattern: each subscription's order
        ("p1", "counter.inc", 7, False),
        ("p2", "counter.*", 3, False),
        ("p2", "counter.inc", 1, True),  # nothing of p2 came through this pattern there
        ("p3", "counter.*", 1, True),  # a publisher the old owner never heard
        ("old", "counter.*", 50, False),  # the old owner's own publishes: one mark for all
        ("old", "counter.inc", 51, True),
        ("", "counter.*", 0, True),  # no stamp (a foreign publisher): always kept
    ],
)
def test_keep_after(publisher: str, pattern: str, seq: int, kept: bool) -> None:
    assert keep_after(MARKS, OWN)(publisher, pattern, seq) is kept


def test_keep_after_without_a_commit_keeps_everything() -> None:
    keep = keep_after({}, None)
    assert all(keep(p, "t", s) for p, s in [("p1", 1), ("old", 99), ("", 0)])
