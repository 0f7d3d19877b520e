"""Errors raised by the bus.

Hierarchy::

    BusError                 root of every error this package raises
    ├── TopicError           a topic or subscription pattern is not valid
    ├── MessageError         bytes are not a valid CBOR-encoded Message
    └── BusClosedError       the bus was used after close()
"""

from __future__ import annotations

__all__ = ["BusClosedError", "BusError", "MessageError", "TopicError"]


class BusError(Exception):
    """Root of every error raised by the `bus` package."""


class TopicError(BusError, ValueError):
    """A topic or subscription pattern breaks the topic rules."""


class MessageError(BusError, ValueError):
    """Bytes that should hold a CBOR-encoded Message do not."""


class BusClosedError(BusError, RuntimeError):
    """The bus was used after it was closed."""
