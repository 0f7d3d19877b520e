"""The module life cycle as a table: every state x state."""

from __future__ import annotations

import itertools

import pytest

from tinywasm_wasi.policy.lifecycle import ModuleState, ModuleStateError, check_transition

S = ModuleState
ALLOWED = {
    (S.STARTING, S.LIVE),
    (S.STARTING, S.FAILED),
    (S.STARTING, S.CLOSED),
    (S.LIVE, S.DRAINING),
    (S.LIVE, S.CLOSED),
    (S.DRAINING, S.LIVE),
    (S.DRAINING, S.CLOSED),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(S, S)), ids=str)
def test_every_transition(current: ModuleState, new: ModuleState) -> None:
    if (current, new) in ALLOWED:
        assert check_transition("chat", current, new) is new
    else:
        with pytest.raises(
            ModuleStateError, match=f"module 'chat' cannot go from {current.value} to {new.value}"
        ):
            check_transition("chat", current, new)


def test_the_message_says_what_is_allowed() -> None:
    with pytest.raises(ModuleStateError) as caught:
        check_transition("chat", S.CLOSED, S.LIVE)
    assert str(caught.value) == (
        "module 'chat' cannot go from closed to live (from closed it may go to: nothing)"
    )
    with pytest.raises(ModuleStateError) as caught:
        check_transition("chat", S.LIVE, S.STARTING)
    assert str(caught.value).endswith("(from live it may go to: closed, draining)")
