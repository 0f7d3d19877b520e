"""Which worker runs a module when there are several (``--workers N``). Pure.

A module runs in exactly one worker, its owner, unless its limits say
``replicas = "all"``; middlewares (a file name with a rule) always run in every
worker, since each worker runs the chain of the requests it receives. The owner
is chosen by rendezvous (highest random weight) hashing of the module name
against each worker's name: every worker computes the same owner from the same
list, with no coordination, and removing a worker moves only the modules it owned.

The workers of one supervisor are ``w0`` … ``w{N-1}``. A `Placement` is one
worker's view at one moment: the workers it hears as live (policy/membership.py)
and which modules other workers run now. When a worker dies, placement over the
survivors gives its modules to them; when it is back, they return to it (the
rendezvous owner over the same live set is always the same worker).

Three questions, three methods:
- `owner(name)`: who should run it (rendezvous over the live workers);
- `where(name)`: who runs it now (another worker that says so), else its owner:
  where a request for it is sent;
- `runs_here(...)`: whether this worker should run it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tinywasm_wasi.policy.limits import Replicas

__all__ = ["Placement", "owner", "worker_name", "worker_names"]


def worker_name(index: int) -> str:
    """The name of the worker at `index` (0-based)."""
    if index < 0:
        raise ValueError(f"a worker index is 0 or more, not {index}")
    return f"w{index}"


def worker_names(count: int) -> tuple[str, ...]:
    """The names of `count` workers."""
    return tuple(worker_name(i) for i in range(count))


def _weight(worker: str, name: str) -> bytes:
    return hashlib.sha256(f"{worker}\0{name}".encode()).digest()


def owner(name: str, workers: Sequence[str]) -> str:
    """The worker that owns module `name` among `workers` (rendezvous hashing).

    Raises:
        ValueError: `workers` is empty.
    """
    if not workers:
        raise ValueError("no workers to place a module on")
    return max(workers, key=lambda worker: _weight(worker, name))


@dataclass(frozen=True, slots=True)
class Placement:
    """One worker's view: its own name, the live workers', and who runs what elsewhere."""

    me: str
    workers: tuple[str, ...]
    # module name -> the other worker that runs it now (from its heartbeats)
    elsewhere: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.me not in self.workers:
            raise ValueError(f"worker {self.me!r} is not among {self.workers}")

    @classmethod
    def of(cls, index: int, count: int) -> Placement:
        """Worker `index` of `count` workers."""
        if not 0 <= index < count:
            raise ValueError(f"worker index {index} is outside 0..{count - 1}")
        return cls(worker_name(index), worker_names(count))

    def owner(self, name: str) -> str:
        """The live worker that should run `name`."""
        return owner(name, self.workers)

    def where(self, name: str) -> str:
        """The worker that runs `name` now, as far as this one knows; else its owner."""
        return self.elsewhere.get(name) or self.owner(name)

    def successor(self, name: str) -> str | None:
        """Who owns `name` once this worker has left (a handover's target); None if nobody."""
        others = [w for w in self.workers if w != self.me]
        return owner(name, others) if others else None

    def runs_here(self, name: str, replicas: Replicas, middleware: bool) -> bool:
        """True if this worker should run module `name`."""
        return middleware or replicas is Replicas.ALL or self.owner(name) == self.me

    def may_start(self, name: str, replicas: Replicas, middleware: bool) -> bool:
        """True if this worker should run `name` and may start it now: a single-owner
        module waits until no other worker runs it (exactly one owner at a time)."""
        if middleware or replicas is Replicas.ALL:
            return True
        return self.owner(name) == self.me and name not in self.elsewhere
