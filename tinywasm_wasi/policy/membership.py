"""Which workers are live, from their heartbeats. Pure: the caller passes the time.

Every worker publishes a `Beat` every `HEARTBEAT` seconds (and at once when what it
runs changes): its name, the single-owner modules it runs, its other modules
(``replicas = "all"`` and middlewares), and whether it is leaving. `Membership`
turns what one worker hears into its `Placement`:

- a worker is **live** from its first beat until it is silent for `timeout`
  seconds (then it is **dead**: it is forgotten) or says it is leaving;
- a **leaving** worker is out of placement at once (its modules have new owners),
  but the modules it still lists count as running there until its last beat
  (which lists none) or the timeout: a new owner starts a module only once no
  other worker runs it, so a module never runs in two workers at once while
  their beats arrive;
- a worker has **settled** once it has heard every worker it expects (the
  supervisor's ``w0 … w{N-1}``) or `timeout` has passed since it started: only
  then does it know enough to start the modules it owns;
- while NATS is away nobody is heard: `resume(now)` after the outage restarts
  every timeout, so an outage alone never declares the fleet dead;
- each beat also lists the patterns each owned module subscribed to: when a
  worker dies, its modules are **unowned** until a beat (or this worker) says
  one runs again, and what is published for them meanwhile is lost and counted
  (`still_unowned`; the counting is `bus.remote.Unowned`).

Across machines each beat also says which module files its worker has (name and
the first hex digits of the file's sha256): placement ranks only the workers with
a module's file, two machines holding different versions of one file show in
`differing()`, and a module whose only file was on a worker that died runs
nowhere until a worker with its file joins (`nowhere()`). Each process beats with
its own `instance`: a beat naming this worker from another instance is a clash
(two processes, usually two machines with the same ``--node``), kept in `claims`,
never taken for this worker's own.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tinywasm_wasi.policy.placement import Placement

__all__ = [
    "DIGEST_CHARS",
    "HEARTBEAT",
    "TIMEOUT",
    "Beat",
    "BeatError",
    "Member",
    "MemberState",
    "Membership",
    "decode_beat",
    "encode_beat",
    "file_list",
    "pattern_list",
]

HEARTBEAT = 0.25  # seconds between a worker's beats
TIMEOUT = 1.0  # seconds of silence after which a worker is dead
DIGEST_CHARS = 12  # hex digits of a file's sha256 a beat carries: enough to tell versions apart


class BeatError(ValueError):
    """A heartbeat that cannot be read."""


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat: who, what it runs, whether it is leaving."""

    worker: str
    owned: frozenset[str] = frozenset()  # single-owner modules it runs now
    replicas: frozenset[str] = frozenset()  # modules it runs as every worker does
    leaving: bool = False
    # (module, its subscription patterns, sorted) for the owned modules that subscribed
    # to any, sorted: if the worker dies, the others count what is published for them
    patterns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    instance: str = ""  # this process, as opposed to another one using the same name
    # (module name, digest of its file) for each module file the worker has, sorted;
    # None: not said (an older version's beat), as if it had every file
    files: tuple[tuple[str, str], ...] | None = None

    def has_file(self, name: str) -> bool:
        return self.files is None or any(n == name for n, _ in self.files)


def pattern_list(
    subscribed: Mapping[str, Iterable[str]],
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A beat's `patterns` from module name -> the patterns it subscribed to."""
    return tuple(sorted((n, tuple(sorted(set(p)))) for n, p in subscribed.items() if p))


def file_list(files: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A beat's `files` from module name -> the file's sha256 (shortened here)."""
    return tuple(sorted((n, sha[:DIGEST_CHARS]) for n, sha in files.items()))


def encode_beat(beat: Beat) -> bytes:
    raw: dict[str, object] = {
        "worker": beat.worker,
        "owned": sorted(beat.owned),
        "replicas": sorted(beat.replicas),
        "leaving": beat.leaving,
        "instance": beat.instance,
    }
    if beat.patterns:
        raw["patterns"] = {name: list(p) for name, p in beat.patterns}
    if beat.files is not None:
        raw["files"] = dict(beat.files)
    return json.dumps(raw, separators=(",", ":")).encode()


def decode_beat(data: bytes) -> Beat:
    """The beat in `data`.

    Raises:
        BeatError: not a heartbeat's JSON.
    """
    try:
        raw = json.loads(data)
        worker, owned, replicas, leaving = (
            raw["worker"],
            raw["owned"],
            raw["replicas"],
            raw["leaving"],
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise BeatError(f"not a heartbeat: {exc}") from None
    if not isinstance(worker, str) or not worker or not isinstance(leaving, bool):
        raise BeatError("not a heartbeat: worker must be a name and leaving a boolean")
    for names in (owned, replicas):
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BeatError("not a heartbeat: owned and replicas must be lists of names")
    patterns = raw.get("patterns", {})  # absent when no owned module subscribed
    if not isinstance(patterns, dict) or not all(
        isinstance(p, list) and all(isinstance(t, str) for t in p) for p in patterns.values()
    ):
        raise BeatError("not a heartbeat: patterns must map module names to lists of patterns")
    instance = raw.get("instance", "")  # absent from an older version's beats
    files = raw.get("files")
    if not isinstance(instance, str):
        raise BeatError("not a heartbeat: instance must be a string")
    if files is not None and not (
        isinstance(files, dict) and all(isinstance(d, str) for d in files.values())
    ):
        raise BeatError("not a heartbeat: files must map module names to digests")
    return Beat(
        worker,
        frozenset(owned),
        frozenset(replicas),
        leaving,
        patterns=pattern_list({n: p for n, p in patterns.items() if n in owned}),
        instance=instance,
        files=None if files is None else tuple(sorted(files.items())),
    )


class MemberState(enum.StrEnum):
    LIVE = "live"
    LEAVING = "leaving"


@dataclass(slots=True)
class Member:
    """What this worker last heard from another."""

    beat: Beat
    heard: float  # when, on the caller's clock

    @property
    def state(self) -> MemberState:
        return MemberState.LEAVING if self.beat.leaving else MemberState.LIVE


@dataclass(slots=True)
class Membership:
    """One worker's table of the others. Each method says whether placement changed."""

    me: str
    started: float
    timeout: float = TIMEOUT
    expected: frozenset[str] = frozenset()  # the workers it waits to hear before settling
    members: dict[str, Member] = field(default_factory=dict)
    # module -> its patterns, for the modules of dead workers that run nowhere yet
    unowned: dict[str, tuple[str, ...]] = field(default_factory=dict)
    instance: str = ""  # this process's instance
    # this worker's module files (name -> digest); None: not known, as if it had every file
    files: dict[str, str] | None = None
    # other processes that beat under this worker's name: instance -> when last heard
    claims: dict[str, float] = field(default_factory=dict)
    # modules whose file only dead workers had: name -> the last of them
    _nowhere: dict[str, str] = field(default_factory=dict)
    _settled: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"the heartbeat timeout must be positive, not {self.timeout}")

    def heard(self, beat: Beat, now: float) -> bool:
        """A beat arrived. True if the placement changed (a worker joined or left, or
        what another runs changed). A worker's own beats are ignored."""
        if beat.worker == self.me:
            if beat.instance != self.instance:
                self.claims[beat.instance] = now  # another process under this name
            return False
        before = self.members.get(beat.worker)
        self.members[beat.worker] = Member(beat, now)
        if before is not None and before.beat.leaving and not beat.leaving:
            return True  # it came back (a restart under the same name)
        if before is None:
            return True
        return before.beat != beat

    def expire(self, now: float) -> list[str]:
        """Forget the workers silent for longer than the timeout; returns them, sorted."""
        dead = sorted(w for w, m in self.members.items() if now - m.heard > self.timeout)
        gone = {worker: self.members.pop(worker).beat for worker in dead}
        for beat in gone.values():
            patterns = dict(beat.patterns)
            for name in beat.owned:
                self.unowned[name] = patterns.get(name, ())
        for worker, beat in gone.items():
            for name, _digest in beat.files or ():
                if not self.able(name):
                    self._nowhere[name] = worker
        return dead

    def clashes(self, now: float) -> list[str]:
        """The other processes heard within the timeout beating under this worker's name."""
        for instance in [i for i, t in self.claims.items() if now - t > self.timeout]:
            del self.claims[instance]
        return sorted(self.claims)

    def able(self, name: str) -> list[str]:
        """The live workers (this one included) that have a file for `name`, sorted."""
        able = [self.me] if self.files is None or name in self.files else []
        for worker, member in self.members.items():
            if not member.beat.leaving and member.beat.has_file(name):
                able.append(worker)
        return sorted(able)

    def nowhere(self) -> dict[str, str]:
        """The modules that run nowhere because the only workers with their file died:
        name -> the last worker that had it. One drops out once a live worker has its file."""
        for name in [n for n in self._nowhere if self.able(n)]:
            del self._nowhere[name]
        return dict(self._nowhere)

    def differing(self) -> dict[str, dict[str, list[str]]]:
        """Module files that differ between live workers: name -> digest -> workers."""
        seen: dict[str, dict[str, list[str]]] = {}
        lists: list[tuple[str, Iterable[tuple[str, str]]]] = [
            (self.me, self.files.items() if self.files is not None else ())
        ]
        lists += [
            (w, m.beat.files or ()) for w, m in sorted(self.members.items()) if not m.beat.leaving
        ]
        for worker, files in lists:
            for name, digest in files:
                seen.setdefault(name, {}).setdefault(digest[:DIGEST_CHARS], []).append(worker)
        return {n: d for n, d in sorted(seen.items()) if len(d) > 1}

    def still_unowned(self, running_here: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """The modules a dead worker ran that run nowhere yet (not here, not in any
        beat), each with its patterns; a module that runs again is dropped for good."""
        if self.unowned:
            running = set(running_here) | set(self.placement().elsewhere)
            for name in [n for n in self.unowned if n in running]:
                del self.unowned[name]
        return dict(self.unowned)

    def resume(self, now: float) -> None:
        """After a NATS outage: every worker counts as heard now."""
        for member in self.members.values():
            member.heard = now

    def settled(self, now: float) -> bool:
        """True once every expected worker was heard, or the timeout passed since the start.
        Once settled, always settled."""
        if not self._settled:
            heard = set(self.members) | {self.me}
            self._settled = self.expected <= heard or now - self.started >= self.timeout
        return self._settled

    def live(self) -> tuple[str, ...]:
        """The live workers, this one included, sorted."""
        others = (w for w, m in self.members.items() if not m.beat.leaving)
        return tuple(sorted({self.me, *others}))

    def placement(self) -> Placement:
        """Placement over the live workers; single-owner modules still running on a
        live or leaving worker count as running there."""
        elsewhere: dict[str, str] = {}
        files: dict[str, frozenset[str]] = {}
        for worker in sorted(self.members):
            beat = self.members[worker].beat
            for name in beat.owned:
                elsewhere.setdefault(name, worker)
            if beat.files is not None:
                files[worker] = frozenset(n for n, _ in beat.files)
        if self.files is not None:
            files[self.me] = frozenset(self.files)
        return Placement(self.me, self.live(), elsewhere, files)

    def fleet(self, mine: Beat, now: float) -> dict[str, object]:
        """The whole fleet as this worker sees it (JSON for /api/modules)."""
        rows = {self.me: _row(mine, MemberState.LEAVING if mine.leaving else MemberState.LIVE, 0.0)}
        for worker, member in sorted(self.members.items()):
            rows[worker] = _row(member.beat, member.state, now - member.heard)
        return {
            "me": self.me,
            "live": list(self.live()),
            "workers": rows,
            "nowhere": self.nowhere(),
            "differing": self.differing(),
            "clashes": self.clashes(now),
        }


def _row(beat: Beat, state: MemberState, age: float) -> dict[str, object]:
    return {
        "state": state.value,
        "owned": sorted(beat.owned),
        "replicas": sorted(beat.replicas),
        "files": None if beat.files is None else dict(beat.files),
        "heard_ms_ago": round(age * 1000),
    }
