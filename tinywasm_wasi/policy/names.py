"""Module names: the documented character set, as one pure check.

A module name is what `/m/<name>`, `/api/modules/<name>`, the history and the
middleware rules call a module. It uses letters, digits, ``_``, ``.`` and ``-``,
starts and ends with a letter, digit or ``_``, and is at most `MAX_NAME_LENGTH`
characters long: the same set middleware rules accept (`policy/rules.py`), so
every module can be named in a rule and in a URL without quoting.
"""

from __future__ import annotations

import re

from tinywasm_wasi.exceptions import TinywasmError

__all__ = ["MAX_NAME_LENGTH", "NAME_CHARSET", "ModuleNameError", "check_module_name"]

MAX_NAME_LENGTH = 128
NAME_CHARSET = (
    "letters, digits, '_', '.' and '-', starting and ending with a letter, digit or '_', "
    f"at most {MAX_NAME_LENGTH} characters"
)
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")


class ModuleNameError(TinywasmError, ValueError):
    """A module name outside the documented character set; the message says which it is."""


def check_module_name(name: str) -> str:
    """Return `name` if it is a valid module name.

    Raises:
        ModuleNameError: it is empty, too long or has a character outside `NAME_CHARSET`.
    """
    if len(name) > MAX_NAME_LENGTH:
        raise ModuleNameError(
            f"module name of {len(name)} characters is too long: names use {NAME_CHARSET}"
        )
    if not _NAME.fullmatch(name):
        raise ModuleNameError(f"invalid module name {name!r}: names use {NAME_CHARSET}")
    return name
