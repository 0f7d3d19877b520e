"""Placement over workers: rendezvous hashing and who runs what, as tables."""

from __future__ import annotations

from collections import Counter

import pytest

from tinywasm_wasi.policy.limits import Replicas
from tinywasm_wasi.policy.placement import (
    Placement,
    check_node_name,
    node_from_host,
    node_of,
    owner,
    worker_name,
    worker_names,
)

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


# -- a fleet across machines: node names, and only workers with the file ----------------------


@pytest.mark.parametrize(
    ("index", "node", "expected"),
    [(0, "", "w0"), (3, "", "w3"), (0, "eu-1", "eu-1-w0"), (12, "box_a", "box_a-w12")],
)
def test_worker_names_carry_the_node(index: int, node: str, expected: str) -> None:
    assert worker_name(index, node) == expected


@pytest.mark.parametrize("node", ["a", "eu-1", "box_a", "A9", "x" * 63])
def test_good_node_names(node: str) -> None:
    assert check_node_name(node) == node


@pytest.mark.parametrize("node", ["", "-a", "_a", "a.b", "a b", "a*", "a>", "é", "x" * 64])
def test_bad_node_names_are_refused_with_what_to_use(node: str) -> None:
    with pytest.raises(ValueError, match="letters, digits, '-' or '_'"):
        check_node_name(node)


@pytest.mark.parametrize(
    ("hostname", "node"),
    [
        ("vm", "vm"),
        ("web-1.example.com", "web-1"),
        ("Box_A", "Box_A"),
        ("host name!", "host-name"),
        ("-x-", "x"),
        ("...", "node"),
        ("", "node"),
        ("a" * 80, "a" * 63),
    ],
)
def test_the_default_node_is_the_hosts_short_name(hostname: str, node: str) -> None:
    assert node_from_host(hostname) == node
    check_node_name(node_from_host(hostname))


A = ("a-w0", "a-w1")
B = ("b-w0", "b-w1")
FLEET = A + B
# Machine a has chat, echo and only_a; machine b has chat, echo and only_b.
FILES = {
    **dict.fromkeys(A, frozenset({"chat", "echo", "only_a"})),
    **dict.fromkeys(B, frozenset({"chat", "echo", "only_b"})),
}


# (module, the workers able to run it)
@pytest.mark.parametrize(
    ("name", "able"),
    [
        ("chat", FLEET),
        ("only_a", A),
        ("only_b", B),
        ("nobody", ()),
    ],
)
def test_only_workers_with_the_file_may_own_a_module(name: str, able: tuple[str, ...]) -> None:
    for me in FLEET:
        placement = Placement(me, FLEET, files=FILES)
        assert placement.able(name) == able
        assert placement.owner(name) == (owner(name, able) if able else None)
        # every worker computes the same owner, and it is one of those with the file
        assert placement.owner(name) == Placement(FLEET[0], FLEET, files=FILES).owner(name)


def test_a_worker_whose_files_are_not_known_counts_as_having_every_file() -> None:
    files = {w: f for w, f in FILES.items() if w != "b-w1"}  # b-w1: an older version's beats
    placement = Placement("a-w0", FLEET, files=files)
    assert placement.able("only_a") == ("a-w0", "a-w1", "b-w1")
    assert placement.able("nobody") == ("b-w1",)


# (live workers, module, its owner)
@pytest.mark.parametrize(
    ("live", "name", "expected"),
    [
        (FLEET, "only_b", owner("only_b", B)),
        (("a-w0", "a-w1", "b-w0"), "only_b", "b-w0"),  # b-w1 died: the other b has it
        (A, "only_b", None),  # both b died: it runs nowhere
        (A, "chat", owner("chat", A)),
        (("b-w1",), "only_a", None),
    ],
)
def test_when_the_workers_with_a_file_die_it_runs_nowhere(
    live: tuple[str, ...], name: str, expected: str | None
) -> None:
    placement = Placement(live[0], live, files=FILES)
    assert placement.owner(name) == expected
    assert placement.where(name) == expected
    assert placement.runs_here(name, Replicas.ONE, False) is (expected == live[0])


def test_a_successor_must_have_the_file() -> None:
    for me in A:
        placement = Placement(me, FLEET, files=FILES)
        other = next(w for w in A if w != me)
        assert placement.successor("only_a") == other
        assert placement.successor("only_b") == owner("only_b", B)
    assert Placement("a-w0", ("a-w0", *B), files=FILES).successor("only_a") is None


@pytest.mark.parametrize(
    ("worker", "node"),
    [("w0", ""), ("alpha-w0", "alpha"), ("a-w1-w12", "a-w1"), ("web-1-w3", "web-1"), ("a-wx", "")],
)
def test_the_node_of_a_worker(worker: str, node: str) -> None:
    assert node_of(worker) == node


def test_a_whole_node_leaving_hands_over_only_to_another_node() -> None:
    for me in A:
        placement = Placement(me, FLEET, files=FILES)
        assert placement.successor("chat", without_node="a") == owner("chat", B)
        assert placement.successor("only_a", without_node="a") is None
        assert placement.successor("only_b", without_node="a") == owner("only_b", B)


# (module, the worker asking, who takes its deploy)
@pytest.mark.parametrize(
    ("name", "me", "target"),
    [
        ("only_a", "b-w0", owner("only_a", A)),  # where its file is, even asked on b
        ("chat", "a-w0", owner("chat", FLEET)),  # its owner over the fleet
        ("new", "a-w1", owner("new", A)),  # no file anywhere yet: this machine's owner
        ("new", "a-w0", owner("new", A)),  # the same on both of the machine's workers
        ("new", "b-w1", owner("new", B)),
    ],
)
def test_a_deploy_goes_where_the_module_runs_or_else_to_this_machines_owner(
    name: str, me: str, target: str
) -> None:
    assert Placement(me, FLEET, files=FILES).deploy_target(name) == target


def test_a_deploy_goes_to_the_worker_that_runs_the_module_now() -> None:
    placement = Placement("a-w0", FLEET, elsewhere={"chat": "b-w1"}, files=FILES)
    assert placement.deploy_target("chat") == "b-w1"
