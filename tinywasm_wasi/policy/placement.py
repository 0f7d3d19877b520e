"""Which worker runs a module when there are several (``--workers N``). Pure.

A module runs in exactly one worker, its owner, unless its limits say
``replicas = "all"``; middlewares (a file name with a rule) always run in every
worker, since each worker runs the chain of the requests it receives. The owner
is chosen by rendezvous (highest random weight) hashing of the module name
against each worker's name: every worker computes the same owner from the same
list, with no coordination, and removing a worker moves only the modules it owned.

The workers of one supervisor are ``w0`` … ``w{N-1}``. The list is fixed: a worker
that dies is restarted under the same name (with backoff), so it owns the same
modules again when it is back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

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
    """One worker's view: its own name and every worker's."""

    me: str
    workers: tuple[str, ...]

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
        return owner(name, self.workers)

    def runs_here(self, name: str, replicas: Replicas, middleware: bool) -> bool:
        """True if this worker runs module `name`."""
        return middleware or replicas is Replicas.ALL or self.owner(name) == self.me
