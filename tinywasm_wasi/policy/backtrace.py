"""A trap's wasm backtrace, read from wasmtime's error text (pure).

wasmtime reports a trap as::

    error while executing at wasm backtrace:
        0:     0x44 - chat!parse_number
        1:     0x4c - chat!handle_cmd
        2:     0x53 - chat!on_message

    Caused by: ...

The names come from the module's ``name`` section, which `tinywasm build` keeps.
"""

from __future__ import annotations

import re

__all__ = ["MAX_FRAMES", "describe", "frames"]

MAX_FRAMES = 8  # innermost first; deeper frames are counted, not listed
_FRAME = re.compile(r"^\s*\d+:\s+0x[0-9a-fA-F]+ - (?:[^!\s]*!)?(?P<name>.+?)\s*$")


def frames(details: str) -> tuple[str, ...]:
    """The function of each frame in `details`, innermost first (empty if there is none)."""
    found = []
    for line in details.partition("Caused by:")[0].splitlines():
        match = _FRAME.match(line)
        if match:
            found.append(match["name"])
    return tuple(found)


def describe(names: tuple[str, ...]) -> str:
    """``parse_number ← handle_cmd ← on_message`` (at most `MAX_FRAMES`), or ``""``.

    Empty too when no frame has a name (a module built without a name section): a list
    of function numbers says nothing an author can act on.
    """
    if all(name.startswith("<wasm function ") for name in names):
        return ""
    shown = " ← ".join(names[:MAX_FRAMES])
    if len(names) > MAX_FRAMES:
        shown += f" ← ({len(names) - MAX_FRAMES} more)"
    return shown
