"""One module version's life cycle: its states and the transitions allowed between them.

::

    STARTING --activate/take_over--> LIVE --drain or cut-over--> DRAINING --close--> CLOSED
    STARTING --start fails--> FAILED       DRAINING --take_over (roll back)--> LIVE
    STARTING --close (never went live)--> CLOSED         LIVE --close--> CLOSED

A FAILED version stays FAILED when it is closed. Anything else raises
`ModuleStateError` naming the module and both states.
"""

from __future__ import annotations

import enum

from tinywasm_wasi.exceptions import TinywasmError

__all__ = ["TRANSITIONS", "ModuleState", "ModuleStateError", "check_transition"]


class ModuleState(enum.Enum):
    STARTING = "starting"
    LIVE = "live"
    DRAINING = "draining"
    CLOSED = "closed"
    FAILED = "failed"


TRANSITIONS: dict[ModuleState, frozenset[ModuleState]] = {
    ModuleState.STARTING: frozenset({ModuleState.LIVE, ModuleState.FAILED, ModuleState.CLOSED}),
    ModuleState.LIVE: frozenset({ModuleState.DRAINING, ModuleState.CLOSED}),
    ModuleState.DRAINING: frozenset({ModuleState.LIVE, ModuleState.CLOSED}),
    ModuleState.FAILED: frozenset(),
    ModuleState.CLOSED: frozenset(),
}


class ModuleStateError(TinywasmError, RuntimeError):
    """A module version was asked to move to a state its life cycle does not allow."""


def check_transition(name: str, current: ModuleState, new: ModuleState) -> ModuleState:
    """Return `new` if a version may go from `current` to it; raise otherwise."""
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "nothing"
        raise ModuleStateError(
            f"module {name!r} cannot go from {current.value} to {new.value} "
            f"(from {current.value} it may go to: {allowed})"
        )
    return new
