"""A module's <name>.toml as a table: strings only, ${ENV} secrets, errors that quote no value."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.module_config import (
    SECRET,
    ConfigError,
    ModuleConfig,
    parse_module_config,
)

ENV = {"DB_PASSWORD": "hunter2", "REGION": "eu"}


def test_strings_and_secrets() -> None:
    text = 'greeting = "hello"\nurl = "postgres://app:${DB_PASSWORD}@db/${REGION}"\nempty = ""\n'
    config = parse_module_config(text, ENV)
    assert config.values == {
        "greeting": "hello",
        "url": "postgres://app:hunter2@db/eu",
        "empty": "",
    }
    assert config.secrets == {"url"}
    assert config.redacted() == {"empty": "", "greeting": "hello", "url": SECRET}
    assert "hunter2" not in repr(config.redacted())
    assert config.encoded()[b"url"] == b"postgres://app:hunter2@db/eu"
    assert parse_module_config("", ENV) == ModuleConfig()
    assert parse_module_config('a = "$HOME and ${ not a ref"', {}).secrets == frozenset()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a = 1", "'a' must be a string (quote it), not int"),
        ("[table]\nx = 'y'", "'table' must be a string (quote it), not dict"),
        ("a = [1]", "not list"),
        ("a = ", "not valid TOML"),
        ('a = "${MISSING_VAR}"', "${MISSING_VAR}, which is not set"),
        (f'a = "{"x" * (64 * 1024 + 1)}"', "over 65536 bytes"),
    ],
)
def test_invalid_config_is_refused_without_quoting_values(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_module_config(text, ENV, "m.toml")
    assert says in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_secret_too_long_after_substitution_names_the_key_only() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_module_config('k = "${BIG}"', {"BIG": "s" * 70_000})
    assert "'k'" in str(caught.value) and "sss" not in str(caught.value)
