"""Per-module configuration: `<name>.toml` beside the module, string keys and values.

The file holds top-level ``key = "value"`` pairs, all strings (a number or a
table is refused with the key named). A value may name environment variables as
``${NAME}``; the server substitutes them when the module loads, and such a value
is a *secret*: it is never shown by the API (`redacted`), only given to the module
through `config_get`. A `${NAME}` that is not set refuses the version with the
variable's name (never a value).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinywasm_wasi.exceptions import TinywasmError

__all__ = [
    "CONFIG_SUFFIX",
    "SECRET",
    "ConfigError",
    "ModuleConfig",
    "config_file_name",
    "parse_module_config",
]

CONFIG_SUFFIX = ".toml"
SECRET = "(secret)"  # what the API shows instead of a value that came from the environment
MAX_KEY = 255
MAX_VALUE = 64 * 1024
MAX_KEYS = 1024
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(TinywasmError, ValueError):
    """A module's config file cannot be used; the message names the key or variable."""


@dataclass(frozen=True, slots=True)
class ModuleConfig:
    values: Mapping[str, str] = field(default_factory=dict)
    secrets: frozenset[str] = frozenset()  # keys whose value came from the environment

    def redacted(self) -> dict[str, str]:
        """For the API: every key, secrets' values replaced by `SECRET`."""
        return {k: SECRET if k in self.secrets else v for k, v in sorted(self.values.items())}

    def encoded(self) -> dict[bytes, bytes]:
        """For the guest's `config_get`: keys and values as UTF-8."""
        return {k.encode(): v.encode() for k, v in self.values.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModuleConfig):
            return NotImplemented
        return dict(self.values) == dict(other.values) and self.secrets == other.secrets

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.values.items())), self.secrets))


def config_file_name(module: str) -> str:
    return f"{module}{CONFIG_SUFFIX}"


def _substitute(key: str, value: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match[1]
        if name not in env:
            raise ConfigError(
                f"config key {key!r} refers to ${{{name}}}, which is not set in the server's "
                "environment: set it, or remove the reference"
            )
        return env[name]

    return _REF.sub(one, value)


def parse_module_config(text: str, env: Mapping[str, str], source: str = "config") -> ModuleConfig:
    """Parse a module's config file; `env` supplies ``${NAME}`` references.

    Raises:
        ConfigError: not TOML, a value that is not a string, too many or too long
            keys or values, or an unset variable (named; no value is ever quoted).
    """
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    if len(data) > MAX_KEYS:
        raise ConfigError(f"{source} has over {MAX_KEYS} keys")
    values: dict[str, str] = {}
    secrets = set()
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(
                f"{source}: {key!r} must be a string (quote it), not {type(value).__name__}"
            )
        if not key or len(key.encode()) > MAX_KEY:
            raise ConfigError(f"{source}: a key must be 1 to {MAX_KEY} bytes")
        if _REF.search(value):
            secrets.add(key)
            value = _substitute(key, value, env)
        if len(value.encode()) > MAX_VALUE:
            raise ConfigError(f"{source}: the value of {key!r} is over {MAX_VALUE} bytes")
        values[key] = value
    return ModuleConfig(values, frozenset(secrets))
