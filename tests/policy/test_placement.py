"""Placement over workers: rendezvous hashing and who runs what, as tables."""

from __future__ import annotations

from collections import Counter

import pytest

from tinywasm_wasi.policy.limits import Replicas
from tinywasm_wasi.policy.placement import Placement, owner, worker_name, worker_names

NAMES = [f"module{i}" for i in range(400)]


def test_worker_names() -> None:
    assert worker_names(3) == ("w0", "w1", "w2")
    assert worker_name(12) == "w12"
    with pytest.raises(ValueError, match="0 or more"):
        worker_name(-1)


# Fixed expectations: every worker must compute the same owner, on any machine.
@pytest.mark.parametrize(
    ("name", "workers", "expected"),
    [
        ("chat", ("w0",), "w0"),
        ("chat", ("w0", "w1"), owner("chat", ("w1", "w0"))),
        ("echo", ("w0", "w1", "w2"), owner("echo", ("w2", "w0", "w1"))),
    ],
)
def test_the_owner_does_not_depend_on_the_order_of_the_list(
    name: str, workers: tuple[str, ...], expected: str
) -> None:
    assert owner(name, workers) == expected


def test_the_owner_is_stable_across_runs() -> None:
    # sha256, not Python's salted hash(): these never change between processes.
    assert [owner(n, worker_names(2)) for n in ("chat", "echo", "monitor", "sender")] == [
        owner(n, ("w0", "w1")) for n in ("chat", "echo", "monitor", "sender")
    ]
    assert {owner(n, worker_names(2)) for n in NAMES} == {"w0", "w1"}


@pytest.mark.parametrize("count", [2, 3, 4])
def test_modules_spread_evenly(count: int) -> None:
    spread = Counter(owner(n, worker_names(count)) for n in NAMES)
    assert len(spread) == count
    assert min(spread.values()) > len(NAMES) / count * 0.7


@pytest.mark.parametrize("gone", ["w0", "w1", "w2"])
def test_removing_a_worker_moves_only_its_modules(gone: str) -> None:
    everyone = worker_names(3)
    survivors = tuple(w for w in everyone if w != gone)
    for name in NAMES:
        before = owner(name, everyone)
        after = owner(name, survivors)
        assert after == before or before == gone, name


def test_no_workers_is_an_error() -> None:
    with pytest.raises(ValueError, match="no workers"):
        owner("chat", ())


# (replicas, middleware, runs on the owner, runs elsewhere)
RUNS = [
    (Replicas.ONE, False, True, False),
    (Replicas.ALL, False, True, True),
    (Replicas.ONE, True, True, True),
    (Replicas.ALL, True, True, True),
]


@pytest.mark.parametrize(("replicas", "middleware", "on_owner", "elsewhere"), RUNS)
def test_who_runs_a_module(
    replicas: Replicas, middleware: bool, on_owner: bool, elsewhere: bool
) -> None:
    placements = [Placement.of(i, 3) for i in range(3)]
    the_owner = owner("chat", worker_names(3))
    for p in placements:
        expected = on_owner if p.me == the_owner else elsewhere
        assert p.runs_here("chat", replicas, middleware) is expected, p.me


@pytest.mark.parametrize(("index", "count"), [(2, 2), (-1, 2), (0, 0)])
def test_a_worker_outside_the_list_is_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        Placement.of(index, count)
