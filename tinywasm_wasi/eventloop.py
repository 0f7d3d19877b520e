"""Which asyncio event loop the server runs on: uvloop's when it is installed and wanted.

uvloop is a dependency, but an install may lack it (a platform without a wheel),
so its absence is not an error: the standard loop is used and the choice logged.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ASYNCIO", "UVLOOP", "LoopChoice", "choose_loop"]

ASYNCIO, UVLOOP = "asyncio", "uvloop"


@dataclass(frozen=True, slots=True)
class LoopChoice:
    """The event loop to run on: its name and a factory for `asyncio.Runner`."""

    name: str
    factory: Callable[[], asyncio.AbstractEventLoop] | None  # None: asyncio's default loop
    why: str  # said in the start-up log when uvloop was wanted but is not used


def choose_loop(prefer_uvloop: bool) -> LoopChoice:
    """uvloop's loop if `prefer_uvloop` and it imports, else asyncio's own."""
    if not prefer_uvloop:
        return LoopChoice(ASYNCIO, None, "")
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        return LoopChoice(ASYNCIO, None, f"uvloop is not installed ({exc})")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return LoopChoice(UVLOOP, factory, "")
