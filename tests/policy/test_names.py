"""Module names: the documented character set, as a table."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.names import MAX_NAME_LENGTH, ModuleNameError, check_module_name


@pytest.mark.parametrize(
    "name",
    ["chat", "echo_http", "a", "_", "v1.2", "my-module", "A9", "x" * MAX_NAME_LENGTH, "a.b-c_d"],
)
def test_valid_names(name: str) -> None:
    assert check_module_name(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "invalid module name ''"),
        ("with space", "invalid module name 'with space'"),
        ("-dash", "invalid"),
        ("dot.", "invalid"),
        (".hidden", "invalid"),
        ("a/b", "invalid"),
        ("..", "invalid"),
        ("auth@[x]", "invalid"),
        ("caf\u00e9", "invalid"),
        ("tab\t", "invalid"),
        ("x" * (MAX_NAME_LENGTH + 1), "too long"),
    ],
)
def test_invalid_names_say_why_and_what_is_allowed(name: str, says: str) -> None:
    with pytest.raises(ModuleNameError) as caught:
        check_module_name(name)
    assert says in str(caught.value)
    assert "letters, digits" in str(caught.value)
    assert isinstance(caught.value, ValueError)
