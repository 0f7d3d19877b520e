"""Module names: the documented character set, as one pure check.

A module name is what `/m/<name>`, `/api/modules/<name>`, the history, the log,
metric labels and the middleware rules call a module. It uses ASCII letters,
digits, ``_``, ``.`` and ``-``, starts and ends with a letter, digit or ``_``
(so never ``.``, ``..``, a leading ``-`` or a trailing ``.``), and is at most
`MAX_NAME_LENGTH` characters long: the same set middleware rules accept
(`policy/rules.py`), so every module can be named in a rule and in a URL without
quoting. ``docs/abi.md`` ("Module names") documents it.

`name_problem` says what is wrong with a name, quoting it with escapes (a name
holding a newline cannot forge a log line); `check_module_name` raises with it.
"""

from __future__ import annotations

import re

from tinywasm_wasi.exceptions import TinywasmError

__all__ = [
    "MAX_NAME_LENGTH",
    "NAME_CHARSET",
    "ModuleNameError",
    "check_module_name",
    "is_module_name",
    "name_problem",
]

MAX_NAME_LENGTH = 128
NAME_CHARSET = (
    "letters, digits, '_', '.' and '-', starting and ending with a letter, digit or '_', "
    f"at most {MAX_NAME_LENGTH} characters"
)
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")


class ModuleNameError(TinywasmError, ValueError):
    """A module name outside the documented character set; the message says which it is."""


def name_problem(name: str) -> str | None:
    """What is wrong with `name` as a module name, or None when it is fine.

    The name is quoted with `ascii()`, so the reason is safe to log and to send.
    """
    if len(name) > MAX_NAME_LENGTH:
        return f"module name of {len(name)} characters is too long: names use {NAME_CHARSET}"
    if _NAME.fullmatch(name) is None:
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        if not name:
            what = "it is empty"
        elif bad:
            what = f"it has {', '.join(ascii(c) for c in bad)}"
        else:
            what = "it starts or ends with '.' or '-'"
        return f"invalid module name {name!a}: {what}; names use {NAME_CHARSET}"
    return None


def is_module_name(name: str) -> bool:
    """True when `name` is inside the module-name character set."""
    return name_problem(name) is None


def check_module_name(name: str) -> str:
    """Return `name` if it is a valid module name.

    Raises:
        ModuleNameError: it is empty, too long or has a character outside `NAME_CHARSET`.
    """
    problem = name_problem(name)
    if problem is not None:
        raise ModuleNameError(problem)
    return name
