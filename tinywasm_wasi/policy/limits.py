"""Per-module limits: the global defaults from Config, overridden per module by `limits.toml`.

Pure: parsing sizes and the override file takes text and returns data. The
override file sits in the modules folder and has one table per module name::

    [chat]
    memory_limit = "128MiB"
    call_timeout = 0.5        # seconds
    max_payload = "4MiB"
    replicas = "all"          # with --workers N: run in every worker (stateless modules)
    publish = ["chat.>"]      # topic grants (policy/grants.py); default: everything
    subscribe = ["chat", "$sys.>"]
    broadcast = ["chat"]

Any key left out keeps the global default (set by flag or TINYWASM_* variable).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from tinywasm_wasi.config import MAX_CALL_TIMEOUT, MAX_MEMORY, MAX_SIZE
from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.policy.grants import GrantAction, TopicGrants, parse_patterns

EVERYTHING = TopicGrants()

__all__ = [
    "LIMITS_FILE",
    "MAX_CALL_TIMEOUT",
    "MAX_MEMORY",
    "MAX_SIZE",
    "Limits",
    "LimitsError",
    "Replicas",
    "limits_from_tables",
    "parse_overrides",
    "parse_size",
]

LIMITS_FILE = "limits.toml"
MAX_LOG_LINE = 4096  # bytes of one guest log line; longer lines are cut
COMPAT_RESPONSE_CAP = 64 * 1024  # bytes a compat-mode `handle` response may span


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
}


class LimitsError(TinywasmError, ValueError):
    """A limit value or the limits file is invalid; the message names the key and the fix."""


def parse_size(value: str | int) -> int:
    """Bytes from ``65536``, ``"64KiB"``, ``"16MiB"``, ``"1.5 GiB"`` (units are powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("bgikm")
        try:
            size = int(float(number) * _SIZE_UNITS[text[len(number) :]])
        except (KeyError, ValueError, OverflowError):
            size = 0
    if size < 1:
        raise LimitsError(f"{value!r} is not a size: use bytes, e.g. 65536, 64KiB or 16MiB")
    if size > MAX_SIZE:
        raise LimitsError(f"{value!r} is too large: sizes go up to 1TiB")
    return size


class Replicas(StrEnum):
    """How many workers run a module when there are several (``--workers N``)."""

    ONE = "1"  # one owner, chosen by placement: per-module order and state hold
    ALL = "all"  # every worker: a stateless module, each message handled where published


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """What one module may use."""

    memory_limit: int = 64 * 1024 * 1024  # bytes of linear memory
    call_timeout: float = 0.1  # seconds per call into the guest
    max_payload: int = 1024 * 1024  # bytes per publish / ws_broadcast
    replicas: Replicas = Replicas.ONE  # with several workers: one owner, or all of them
    grants: TopicGrants = EVERYTHING  # topics it may publish, subscribe, broadcast to

    def __post_init__(self) -> None:
        if self.memory_limit < 1 or self.max_payload < 1:
            raise LimitsError("memory_limit and max_payload must be at least 1 byte")
        if not (math.isfinite(self.call_timeout) and self.call_timeout > 0):
            raise LimitsError("call_timeout must be a number of seconds more than zero, e.g. 0.1")
        if self.call_timeout > MAX_CALL_TIMEOUT:
            raise LimitsError(
                f"call_timeout must be at most {MAX_CALL_TIMEOUT:g} seconds, e.g. 0.1"
            )
        if self.memory_limit > MAX_MEMORY:
            raise LimitsError(
                "memory_limit must be at most 4GiB, the most a 32-bit WebAssembly memory "
                "can address"
            )
        if self.max_payload > MAX_SIZE:
            raise LimitsError("max_payload must be at most 1TiB")


_GRANTS = {action.value: action for action in GrantAction}
_FIELDS = {f.name for f in dataclasses.fields(Limits)} - {"grants"} | set(_GRANTS)


def parse_overrides(text: str, defaults: Limits) -> dict[str, Limits]:
    """Per-module Limits from the TOML text of a limits file.

    Raises:
        LimitsError: the text is not TOML, or names an unknown key or a bad value.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LimitsError(f"{LIMITS_FILE} is not valid TOML: {exc}") from None
    return limits_from_tables(data, defaults)


def limits_from_tables(data: Mapping[str, object], defaults: Limits) -> dict[str, Limits]:
    """Per-module Limits from tables already parsed from TOML (limits.toml or module.toml).

    Raises:
        LimitsError: an entry is not a table, or names an unknown key or a bad value.
    """
    result: dict[str, Limits] = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise LimitsError(
                f"{LIMITS_FILE}: {name!r} must be a table, e.g. [{name}] then key = value lines"
            )
        changes: dict[str, object] = {}
        grants: dict[GrantAction, tuple[str, ...]] = {}
        for key, value in table.items():
            where = f"{LIMITS_FILE}: [{name}] {key}"
            if key not in _FIELDS:
                raise LimitsError(f"{where}: unknown key; use one of {', '.join(sorted(_FIELDS))}")
            if key == "replicas":
                if value == "all" or (value == 1 and not isinstance(value, bool)):
                    changes[key] = Replicas.ALL if value == "all" else Replicas.ONE
                    continue
                raise LimitsError(
                    f'{where}: expected "all" (every worker) or 1 (one owner), not {value!r}'
                )
            if key in _GRANTS:
                try:
                    grants[_GRANTS[key]] = parse_patterns(value, where)
                except ValueError as exc:
                    raise LimitsError(str(exc)) from None
            elif key == "call_timeout":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise LimitsError(f"{where}: expected seconds as a number, e.g. 0.5")
                changes[key] = float(value)
            else:
                try:
                    changes[key] = parse_size(value)
                except LimitsError as exc:
                    raise LimitsError(f"{where}: {exc}") from None
        if grants:
            changes["grants"] = dataclasses.replace(
                defaults.grants, **{action.value: patterns for action, patterns in grants.items()}
            )
        try:
            result[name] = dataclasses.replace(defaults, **changes)  # type: ignore[arg-type]
        except LimitsError as exc:
            raise LimitsError(f"{LIMITS_FILE}: [{name}]: {exc}") from None
    return result
