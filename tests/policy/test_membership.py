"""Membership from heartbeats, and placement over the live workers, as tables."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.limits import Replicas
from tinywasm_wasi.policy.membership import (
    Beat,
    BeatError,
    Membership,
    decode_beat,
    encode_beat,
    pattern_list,
)
from tinywasm_wasi.policy.placement import Placement, owner, worker_names

W3 = frozenset(worker_names(3))


def table(me: str = "w0", expected: frozenset[str] = W3) -> Membership:
    return Membership(me, started=0.0, timeout=1.0, expected=expected)


def beat(worker: str, *owned: str, leaving: bool = False) -> Beat:
    return Beat(worker, frozenset(owned), leaving=leaving)


# (beats as (time, beat), expire at, live after, dead returned)
@pytest.mark.parametrize(
    ("beats", "at", "live", "dead"),
    [
        ([], 5.0, ("w0",), []),
        ([(0.1, beat("w1")), (0.2, beat("w2"))], 1.0, ("w0", "w1", "w2"), []),
        # silent for more than the timeout: dead, forgotten
        ([(0.1, beat("w1")), (0.2, beat("w2"))], 1.15, ("w0", "w2"), ["w1"]),
        ([(0.1, beat("w1")), (0.2, beat("w2"))], 1.25, ("w0",), ["w1", "w2"]),
        # a later beat keeps it live
        ([(0.1, beat("w1")), (0.9, beat("w1"))], 1.5, ("w0", "w1"), []),
        # exactly the timeout is not yet dead
        ([(0.5, beat("w1"))], 1.5, ("w0", "w1"), []),
        # leaving: out of the live set at once, still in the table until silent
        ([(0.1, beat("w1")), (0.2, beat("w1", leaving=True))], 0.3, ("w0",), []),
        ([(0.1, beat("w1", leaving=True))], 1.2, ("w0",), ["w1"]),
        # a leaving worker back under the same name (restarted) is live again
        ([(0.1, beat("w1", leaving=True)), (0.5, beat("w1"))], 0.6, ("w0", "w1"), []),
        # its own beats are not counted
        ([(0.1, beat("w0", "x"))], 0.2, ("w0",), []),
    ],
)
def test_live_and_dead(
    beats: list[tuple[float, Beat]], at: float, live: tuple[str, ...], dead: list[str]
) -> None:
    members = table()
    for now, b in beats:
        members.heard(b, now)
    assert members.expire(at) == dead
    assert members.live() == live
    assert members.placement().workers == live


@pytest.mark.parametrize(
    ("first", "second", "changed"),
    [
        (None, beat("w1"), True),  # joined
        (beat("w1"), beat("w1"), False),  # the same again: nothing to do
        (beat("w1"), beat("w1", "chat"), True),  # started a module
        (beat("w1", "chat"), beat("w1"), True),  # stopped one
        (beat("w1"), beat("w1", leaving=True), True),
        (beat("w1", leaving=True), beat("w1"), True),
        (None, beat("w0"), False),  # itself
    ],
)
def test_what_changes_placement(first: Beat | None, second: Beat, changed: bool) -> None:
    members = table()
    if first is not None:
        members.heard(first, 0.0)
    assert members.heard(second, 0.1) is changed


def test_an_outage_declares_nobody_dead() -> None:
    members = table()
    members.heard(beat("w1"), 0.0)
    members.resume(5.0)  # NATS was away from 0.1 to 5.0: nobody could be heard
    assert members.expire(5.5) == []
    assert members.expire(6.1) == ["w1"]


# (expected, heard, now, settled)
@pytest.mark.parametrize(
    ("expected", "heard", "now", "settled"),
    [
        (W3, [], 0.5, False),
        (W3, ["w1"], 0.5, False),
        (W3, ["w1", "w2"], 0.1, True),  # everyone it expects
        (W3, ["w1"], 1.0, True),  # the timeout passed: w2 is not there
        (frozenset(), [], 0.0, True),  # expects nobody else
        (frozenset({"w0"}), [], 0.0, True),
    ],
)
def test_settled(expected: frozenset[str], heard: list[str], now: float, settled: bool) -> None:
    members = table(expected=expected)
    for worker in heard:
        members.heard(beat(worker), now)
    assert members.settled(now) is settled


def test_settled_stays_settled() -> None:
    members = table()
    members.heard(beat("w1"), 0.1)
    members.heard(beat("w2"), 0.1)
    assert members.settled(0.1)
    members.expire(5.0)
    assert members.settled(5.0)


def test_placement_says_who_runs_what_elsewhere() -> None:
    members = table()
    members.heard(beat("w1", "chat"), 0.0)
    members.heard(beat("w2", "echo", leaving=True), 0.0)
    placement = members.placement()
    assert placement.workers == ("w0", "w1")  # w2 is leaving: out of placement
    # ... but it still runs echo, so echo is sent there and not started elsewhere yet
    assert placement.elsewhere == {"chat": "w1", "echo": "w2"}
    assert placement.where("echo") == "w2"
    assert placement.where("other") == owner("other", ("w0", "w1"))


def test_the_fleet_view() -> None:
    members = table()
    members.heard(beat("w1", "chat"), 0.0)
    view = members.fleet(Beat("w0", frozenset({"echo"}), frozenset({"echo_http"})), 0.25)
    assert view == {
        "me": "w0",
        "live": ["w0", "w1"],
        "workers": {
            "w0": {
                "state": "live",
                "owned": ["echo"],
                "replicas": ["echo_http"],
                "files": None,
                "heard_ms_ago": 0,
            },
            "w1": {
                "state": "live",
                "owned": ["chat"],
                "replicas": [],
                "files": None,
                "heard_ms_ago": 250,
            },
        },
        "nowhere": {},
        "differing": {},
        "clashes": [],
    }


@pytest.mark.parametrize(
    "b",
    [
        Beat("w0"),
        Beat("w12", frozenset({"chat", "echo"}), frozenset({"echo_http"}), True),
        Beat(
            "w1",
            frozenset({"chat", "echo"}),
            patterns=pattern_list({"chat": ["chat.*", "chat", "chat"], "echo": []}),
        ),
        Beat("a-w1", frozenset({"chat"}), instance="5f3a", files=(("chat", "ab12"),)),
        Beat("a-w1", instance="5f3a", files=()),
    ],
)
def test_beats_round_trip(b: Beat) -> None:
    assert decode_beat(encode_beat(b)) == b


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'{"worker": "w0"}',
        b'{"worker": "", "owned": [], "replicas": [], "leaving": false}',
        b'{"worker": "w0", "owned": [1], "replicas": [], "leaving": false}',
        b'{"worker": "w0", "owned": [], "replicas": "x", "leaving": false}',
        b'{"worker": "w0", "owned": [], "replicas": [], "leaving": "no"}',
        b'{"worker": "w0", "owned": [], "replicas": [], "leaving": false, "patterns": []}',
        b'{"worker": "w0", "owned": [], "replicas": [], "leaving": false, "patterns": {"a": 1}}',
        b'{"worker": "w0", "owned": [], "replicas": [], "leaving": false, "patterns": {"a": [2]}}',
        b'{"worker": "w0", "owned": [], "replicas": [], "leaving": false, "instance": 1}',
        b'{"worker": "w0", "owned": [], "replicas": [], "leaving": false, "files": ["x"]}',
        b'{"worker": "w0", "owned": [], "replicas": [], "leaving": false, "files": {"x": 1}}',
    ],
)
def test_bad_beats_are_refused(data: bytes) -> None:
    with pytest.raises(BeatError, match="not a heartbeat"):
        decode_beat(data)


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Membership("w0", 0.0, timeout=0)


# Placement over the live set: the dead worker's modules go to survivors, and only those.
@pytest.mark.parametrize("dead", ["w0", "w1", "w2"])
def test_a_dead_workers_modules_go_to_the_survivors(dead: str) -> None:
    names = [f"m{i}" for i in range(60)]
    everyone = worker_names(3)
    survivors = tuple(w for w in everyone if w != dead)
    for name in names:
        before, after = owner(name, everyone), Placement("w0" if dead != "w0" else "w1", survivors)
        assert after.owner(name) in survivors
        if before != dead:
            assert after.owner(name) == before  # nothing else moves


# (me, workers, elsewhere, name, replicas, middleware, runs_here, may_start)
@pytest.mark.parametrize(
    ("elsewhere", "replicas", "middleware", "runs_here", "may_start"),
    [
        ({}, Replicas.ONE, False, True, True),
        ({"x": "w1"}, Replicas.ONE, False, True, False),  # still runs on w1: wait
        ({"x": "w1"}, Replicas.ALL, False, True, True),
        ({"x": "w1"}, Replicas.ONE, True, True, True),
    ],
)
def test_a_new_owner_waits_until_nobody_else_runs_it(
    elsewhere: dict[str, str],
    replicas: Replicas,
    middleware: bool,
    runs_here: bool,
    may_start: bool,
) -> None:
    placement = Placement("w0", ("w0",), elsewhere)
    assert placement.runs_here("x", replicas, middleware) is runs_here
    assert placement.may_start("x", replicas, middleware) is may_start


def test_successor_is_the_owner_once_this_worker_left() -> None:
    everyone = worker_names(3)
    for name in [f"m{i}" for i in range(30)]:
        me = owner(name, everyone)
        placement = Placement(me, everyone)
        assert placement.successor(name) == owner(name, tuple(w for w in everyone if w != me))
    assert Placement("w0", ("w0",)).successor("x") is None


def test_pattern_list_sorts_and_leaves_out_modules_without_patterns() -> None:
    assert pattern_list({"echo": [], "chat": ["b", "a", "a"]}) == (("chat", ("a", "b")),)
    # a beat lists patterns of owned modules only
    raw = b'{"worker":"w1","owned":["chat"],"replicas":[],"leaving":false,'
    raw += b'"patterns":{"chat":["chat"],"other":["x"]}}'
    assert decode_beat(raw).patterns == (("chat", ("chat",)),)


def test_a_dead_workers_modules_are_unowned_until_they_run_again() -> None:
    members = table()
    chat = pattern_list({"chat": ["chat", "chat.*"]})
    members.heard(Beat("w1", frozenset({"chat", "echo"}), patterns=chat), 0.0)
    members.heard(Beat("w2", frozenset({"news"})), 0.0)
    assert members.still_unowned([]) == {}  # nobody died
    members.heard(Beat("w2", frozenset({"news"})), 0.9)
    assert members.expire(1.5) == ["w1"]
    assert members.still_unowned([]) == {"chat": ("chat", "chat.*"), "echo": ()}
    assert members.still_unowned(["echo"]) == {"chat": ("chat", "chat.*")}  # runs here now
    members.heard(Beat("w2", frozenset({"news", "chat"})), 1.6)
    assert members.still_unowned([]) == {}  # w2 runs chat now
    members.heard(Beat("w2", frozenset({"news"})), 1.7)
    assert members.still_unowned([]) == {}  # dropped for good once it ran again


def test_a_leaving_worker_that_listed_nothing_leaves_nothing_unowned() -> None:
    members = table()
    members.heard(Beat("w1", frozenset({"chat"})), 0.0)
    members.heard(Beat("w1", leaving=True), 0.5)  # handed chat over, then its last beat
    members.heard(Beat("w2", frozenset({"chat"})), 0.5)
    assert members.expire(2.0) == ["w1", "w2"]
    assert members.still_unowned([]) == {"chat": ()}  # w2 died with it


# -- a fleet across machines: files, modules that run nowhere, differing files, clashes --------


def with_files(worker: str, *names: str, instance: str = "", digest: str = "d1") -> Beat:
    return Beat(worker, instance=instance, files=tuple((n, digest) for n in sorted(names)))


def fleet_table(files: dict[str, str] | None = None) -> Membership:
    return Membership("a-w0", 0.0, timeout=1.0, instance="me", files=files)


# (beats heard at 0.1, expire at 1.5 with only `alive` beating again at 1.0, nowhere after)
@pytest.mark.parametrize(
    ("mine", "beats", "alive", "nowhere"),
    [
        # b-w0 had only_b and died: nobody else has it
        ({"chat": "d1"}, [with_files("b-w0", "chat", "only_b")], [], {"only_b": "b-w0"}),
        # the other b worker still has it
        (
            {"chat": "d1"},
            [with_files("b-w0", "chat", "only_b"), with_files("b-w1", "only_b")],
            ["b-w1"],
            {},
        ),
        # this worker has it
        ({"only_b": "d1"}, [with_files("b-w0", "only_b")], [], {}),
        # this worker's files are not known yet: it may have every file
        (None, [with_files("b-w0", "only_b")], [], {}),
        # a dead worker whose files were never said (an older version): nothing known
        ({}, [Beat("b-w0", frozenset({"x"}))], [], {}),
    ],
)
def test_a_module_whose_only_file_died_runs_nowhere(
    mine: dict[str, str] | None, beats: list[Beat], alive: list[str], nowhere: dict[str, str]
) -> None:
    members = fleet_table(mine)
    for b in beats:
        members.heard(b, 0.1)
    for b in beats:
        if b.worker in alive:
            members.heard(b, 1.0)
    members.expire(1.5)
    assert members.nowhere() == nowhere
    assert all(members.placement().owner(n) is None for n in nowhere)


def test_a_module_runs_somewhere_again_once_a_worker_with_its_file_joins() -> None:
    members = fleet_table({"chat": "d1"})
    members.heard(with_files("b-w0", "only_b"), 0.1)
    members.expire(1.5)
    assert members.nowhere() == {"only_b": "b-w0"}
    members.heard(with_files("b-w0", "only_b", instance="restarted"), 2.0)
    assert members.nowhere() == {}
    assert members.placement().owner("only_b") == "b-w0"


def test_placement_ranks_only_the_workers_with_the_file() -> None:
    members = fleet_table({"chat": "d1", "only_a": "d1"})
    members.heard(with_files("b-w0", "chat", "only_b"), 0.1)
    placement = members.placement()
    assert placement.able("only_a") == ("a-w0",)
    assert placement.able("only_b") == ("b-w0",)
    assert placement.able("chat") == ("a-w0", "b-w0")
    assert members.able("only_b") == ["b-w0"]


# (this worker's files, the others' beats, files that differ)
@pytest.mark.parametrize(
    ("mine", "beats", "differing"),
    [
        ({"chat": "aaa"}, [with_files("b-w0", "chat", digest="aaa")], {}),
        (
            {"chat": "aaa"},
            [with_files("b-w0", "chat", digest="bbb"), with_files("b-w1", "chat", digest="bbb")],
            {"chat": {"aaa": ["a-w0"], "bbb": ["b-w0", "b-w1"]}},
        ),
        # a leaving worker's files no longer count
        (
            {"chat": "aaa"},
            [Beat("b-w0", leaving=True, files=(("chat", "bbb"),))],
            {},
        ),
        (
            None,
            [with_files("b-w0", "x", digest="1"), with_files("b-w1", "x", digest="2")],
            {"x": {"1": ["b-w0"], "2": ["b-w1"]}},
        ),
    ],
)
def test_files_that_differ_between_workers(
    mine: dict[str, str] | None, beats: list[Beat], differing: dict[str, dict[str, list[str]]]
) -> None:
    members = fleet_table(mine)
    for b in beats:
        members.heard(b, 0.1)
    assert members.differing() == differing


# (beats under this worker's own name as (time, instance), look at, clashes)
@pytest.mark.parametrize(
    ("beats", "at", "clashes"),
    [
        ([], 0.5, []),
        ([(0.1, "other")], 0.5, ["other"]),  # another process has this name
        ([(0.1, "other")], 1.2, []),  # not heard for the timeout: gone
        ([(0.1, "x"), (0.3, "y")], 0.5, ["x", "y"]),
        ([(0.1, "me")], 0.5, []),  # this process's own beat (an echo) is no clash
        ([(0.1, "")], 0.5, [""]),  # an older version's beat, which has no instance
    ],
)
def test_a_beat_under_this_workers_name_from_another_process_is_a_clash(
    beats: list[tuple[float, str]], at: float, clashes: list[str]
) -> None:
    members = fleet_table({})
    for now, instance in beats:
        assert members.heard(Beat("a-w0", frozenset({"x"}), instance=instance), now) is False
    assert members.clashes(at) == clashes
    assert members.live() == ("a-w0",)  # a clash never enters the table
    assert members.placement().elsewhere == {}
