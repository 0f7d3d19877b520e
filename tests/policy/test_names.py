"""Module names: the documented character set, as a table."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.names import (
    MAX_NAME_LENGTH,
    ModuleNameError,
    check_module_name,
    is_module_name,
    name_problem,
)


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


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "it is empty"),
        ("a b", "it has ' '"),
        ("x\nINFO forged", "it has '\\n', ' '"),
        ("bell\x07", "it has '\\x07'"),
        ("caf\xe9", "it has '\\xe9'"),
        ("caf\udce9", "it has '\\udce9'"),  # a non-UTF-8 file name as os.listdir decodes it
        ("a\\b", "it has '\\\\'"),
        ("a%2e", "it has '%'"),
        ("..", "starts or ends with"),
        ("-flag", "starts or ends with"),
        ("x" * (MAX_NAME_LENGTH + 1), f"of {MAX_NAME_LENGTH + 1} characters is too long"),
    ],
)
def test_name_problem_names_the_characters_and_is_safe_to_log(name: str, says: str) -> None:
    problem = name_problem(name)
    assert problem is not None and says in problem
    assert "\n" not in problem and "\r" not in problem
    problem.encode("utf-8")  # no lone surrogates either
    assert not is_module_name(name)


def test_is_module_name() -> None:
    assert is_module_name("echo_http") and name_problem("echo_http") is None
