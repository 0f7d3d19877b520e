"""The ``--ws-inbound-file`` format: the topic patterns browsers may publish to.

The file is read at start and again on SIGHUP, so the list can change without a
restart. One pattern per line, or several separated by commas; ``#`` starts a
comment; blank lines are skipped. A file with no pattern means browsers may not
publish (like an empty ``--ws-inbound``). Any bad pattern refuses the whole file,
with its line number, so a mistake never leaves half a list in force.
"""

from __future__ import annotations

from bus.exceptions import TopicError
from bus.topics import validate_pattern

__all__ = ["MAX_INBOUND_FILE", "InboundFileError", "parse_inbound_file"]

MAX_INBOUND_FILE = 64 * 1024  # bytes: far more than any real list, small enough to read at once


class InboundFileError(ValueError):
    """The inbound file cannot be used; the message names the line and the fix."""


def parse_inbound_file(text: str) -> tuple[str, ...]:
    """The patterns in `text`, in order, without repeats.

    Raises:
        InboundFileError: a pattern is not valid, or the text is over `MAX_INBOUND_FILE`.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_INBOUND_FILE:
        raise InboundFileError(
            f"over {MAX_INBOUND_FILE} bytes: an inbound file lists topic patterns, "
            "one per line (is this the right file?)"
        )
    patterns: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        for part in line.partition("#")[0].split(","):
            pattern = part.strip()
            if not pattern:
                continue
            try:
                validate_pattern(pattern)
            except TopicError as exc:
                raise InboundFileError(f"line {number}: {exc}") from None
            patterns[pattern] = None
    return tuple(patterns)
