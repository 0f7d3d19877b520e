"""The mailbox scheduling rules as tables: when a worker may run an item, when a mailbox
has settled, and the sizes of the worker pool and of loading."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.scheduling import (
    DEFAULT_LOAD_CONCURRENCY,
    MAX_MODULE_THREADS,
    Settled,
    load_concurrency,
    module_threads,
    runnable,
    settled,
)

# queued, head_is_call, held, closed -> runnable
RUNNABLE = [
    (False, False, False, False, False),  # nothing queued
    (True, False, False, False, True),  # a message, open
    (True, True, False, False, True),  # a call, open
    (True, False, True, False, False),  # held: messages wait
    (True, True, True, False, True),  # held: a call at the head still runs
    (True, False, False, True, False),  # closed
    (True, True, True, True, False),  # closed, even a call
    (False, False, True, False, False),
]


@pytest.mark.parametrize(("queued", "head_is_call", "held", "closed", "expected"), RUNNABLE)
def test_runnable(
    queued: bool, head_is_call: bool, held: bool, closed: bool, expected: bool
) -> None:
    assert runnable(queued=queued, head_is_call=head_is_call, held=held, closed=closed) is expected


WORK, IDLE, STUCK = Settled.WORKING, Settled.IDLE, Settled.STUCK
# running, queued, head_is_call, held, closed -> settled
SETTLED = [
    (True, False, False, False, False, WORK),  # an item runs
    (True, True, False, True, False, WORK),  # held, but its item still runs
    (True, False, False, False, True, WORK),  # closed while an item runs: wait for it
    (False, False, False, False, False, IDLE),
    (False, False, False, True, False, IDLE),  # held and empty
    (False, True, False, False, True, IDLE),  # closed: what is queued will never run
    (False, True, False, False, False, WORK),  # a message waits for its worker
    (False, True, True, False, False, WORK),
    (False, True, False, True, False, STUCK),  # held with messages: cannot get idle alone
    (False, True, True, True, False, WORK),  # held, but a call at the head will run
]


@pytest.mark.parametrize(
    ("running", "queued", "head_is_call", "held", "closed", "expected"), SETTLED
)
def test_settled(
    running: bool, queued: bool, head_is_call: bool, held: bool, closed: bool, expected: Settled
) -> None:
    got = settled(
        running=running, queued=queued, head_is_call=head_is_call, held=held, closed=closed
    )
    assert got is expected


@pytest.mark.parametrize(
    ("configured", "cpus", "expected"),
    [
        (0, 1, 2),  # never one: a slow module would hold up every other
        (0, 2, 3),
        (0, 3, 4),
        (0, 64, 4),  # few: each runnable thread competes with the loop for the GIL
        (0, None, 2),  # os.cpu_count() may not know
        (2, 2, 2),  # asked for: what is asked
        (16, 2, 16),
        (10_000, 2, MAX_MODULE_THREADS),
    ],
)
def test_module_threads(configured: int, cpus: int | None, expected: int) -> None:
    assert module_threads(configured, cpus) == expected


@pytest.mark.parametrize("configured", [-1, 1])
def test_module_threads_refuses_fewer_than_two(configured: int) -> None:
    with pytest.raises(ValueError, match="at least 2: with one, a slow module"):
        module_threads(configured, 2)


@pytest.mark.parametrize(
    ("threads", "expected"),
    [(1, DEFAULT_LOAD_CONCURRENCY), (3, DEFAULT_LOAD_CONCURRENCY), (4, 8), (16, 32)],
)
def test_load_concurrency(threads: int, expected: int) -> None:
    assert load_concurrency(threads) == expected
