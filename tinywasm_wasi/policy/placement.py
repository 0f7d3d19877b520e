"""Which worker runs a module when there are several (``--workers N``). Pure.

A module runs in exactly one worker, its owner, unless its limits say
``replicas = "all"``; middlewares (a file name with a rule) always run in every
worker, since each worker runs the chain of the requests it receives. The owner
is chosen by rendezvous (highest random weight) hashing of the module name
against each worker's name: every worker computes the same owner from the same
list, with no coordination, and removing a worker moves only the modules it owned.

The workers of one supervisor are ``<node>-w0`` … ``<node>-w{N-1}``: the node
(``--node``, by default the host's name) keeps them apart from another machine's
workers on the same NATS. A `Placement` is one worker's view at one moment: the
workers it hears as live (policy/membership.py), which module files each of them
has, and which modules other workers run now. A worker can own only a module it
has the file of: the rendezvous ranks only those workers (a worker whose files
are not known, such as an older version's, counts as having every file). When a
worker dies, placement over the survivors gives its modules to those of them
with the file; when nobody live has it, the module runs nowhere (`owner` is
None) until such a worker joins. When a worker is back, its modules return to it
(the rendezvous owner over the same live set is always the same worker).

Three questions, three methods:
- `owner(name)`: who should run it (rendezvous over the live workers with its file);
- `where(name)`: who runs it now (another worker that says so), else its owner:
  where a request for it is sent;
- `runs_here(...)`: whether this worker should run it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tinywasm_wasi.policy.limits import Replicas

__all__ = [
    "NODE_PATTERN",
    "Placement",
    "check_node_name",
    "node_from_host",
    "node_of",
    "owner",
    "worker_name",
    "worker_names",
]

# A node name is one NATS subject token and reads well in a log: letters, digits, - and _.
NODE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_NOT_NODE = re.compile(r"[^A-Za-z0-9_-]+")


def check_node_name(node: str) -> str:
    """`node` if it is a valid node name.

    Raises:
        ValueError: it is not; the message says what a node name may hold.
    """
    if not NODE_PATTERN.fullmatch(node):
        raise ValueError(
            f"{node!r} is not a node name: use 1 to 63 letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. the machine's short host name)"
        )
    return node


def node_from_host(hostname: str) -> str:
    """The default node name for a machine called `hostname`: its first label, with
    anything a node name cannot hold replaced by '-' ("node" if nothing is left)."""
    label = _NOT_NODE.sub("-", hostname.split(".", 1)[0]).strip("-_")[:63].strip("-_")
    return label or "node"


def worker_name(index: int, node: str = "") -> str:
    """The name of the worker at `index` (0-based) on `node` (``w<index>`` without one)."""
    if index < 0:
        raise ValueError(f"a worker index is 0 or more, not {index}")
    return f"{node}-w{index}" if node else f"w{index}"


def node_of(worker: str) -> str:
    """The node of worker `worker` (``alpha`` for ``alpha-w0``; "" for ``w0``)."""
    head, sep, index = worker.rpartition("-w")
    return head if sep and index.isdigit() else ""


def worker_names(count: int, node: str = "") -> tuple[str, ...]:
    """The names of `count` workers on `node`."""
    return tuple(worker_name(i, node) for i in range(count))


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
    """One worker's view: its own name, the live workers', their module files, and who
    runs what elsewhere."""

    me: str
    workers: tuple[str, ...]
    # module name -> the other worker that runs it now (from its heartbeats)
    elsewhere: Mapping[str, str] = field(default_factory=dict)
    # worker -> the module names it has a file for; a worker left out has every file
    files: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.me not in self.workers:
            raise ValueError(f"worker {self.me!r} is not among {self.workers}")

    @classmethod
    def of(cls, index: int, count: int, node: str = "") -> Placement:
        """Worker `index` of `count` workers on `node`, each with every file."""
        if not 0 <= index < count:
            raise ValueError(f"worker index {index} is outside 0..{count - 1}")
        return cls(worker_name(index, node), worker_names(count, node))

    def able(self, name: str) -> tuple[str, ...]:
        """The live workers that have a file for `name`."""
        return tuple(w for w in self.workers if w not in self.files or name in self.files[w])

    def owner(self, name: str) -> str | None:
        """The live worker that should run `name`; None when no live worker has its file."""
        able = self.able(name)
        return owner(name, able) if able else None

    def where(self, name: str) -> str | None:
        """The worker that runs `name` now, as far as this one knows; else its owner
        (None: it runs nowhere)."""
        return self.elsewhere.get(name) or self.owner(name)

    def deploy_target(self, name: str) -> str:
        """Who takes a deploy of `name` through this worker: where it runs or should run;
        when no live worker has its file yet (a new module), the owner among this
        machine's workers, which share the folder the deploy writes into."""
        found = self.where(name)
        if found is not None:
            return found
        mine = node_of(self.me)
        return owner(name, [w for w in self.workers if node_of(w) == mine])

    def successor(self, name: str, without_node: str | None = None) -> str | None:
        """Who owns `name` once this worker has left (a handover's target); None if no
        other live worker has its file. With `without_node`, that node's workers are
        leaving too: only another node's may take it."""
        others = [
            w
            for w in self.able(name)
            if w != self.me and (without_node is None or node_of(w) != without_node)
        ]
        return owner(name, others) if others else None

    def runs_here(self, name: str, replicas: Replicas, middleware: bool) -> bool:
        """True if this worker should run module `name` (it has its file)."""
        return middleware or replicas is Replicas.ALL or self.owner(name) == self.me

    def may_start(self, name: str, replicas: Replicas, middleware: bool) -> bool:
        """True if this worker should run `name` and may start it now: a single-owner
        module waits until no other worker runs it (exactly one owner at a time)."""
        if middleware or replicas is Replicas.ALL:
            return True
        return self.owner(name) == self.me and name not in self.elsewhere
