"""Log text that cannot forge a line: control characters shown as escapes (pure).

File names, topics, header values and a module's own output are chosen by
others. Written to the log as they are, a newline in one starts what looks like
a new record (``x\\nERROR forged.wasm``), and a terminal escape sequence can
rewrite what an operator sees. `escape` turns every such character into a
visible escape, so one record is always one line.
"""

from __future__ import annotations

import re

__all__ = ["escape", "shorten"]

# C0 controls except tab, DEL, C1 controls, the Unicode line and paragraph
# separators, and lone surrogates (a non-UTF-8 file name as os.listdir decodes it,
# which a UTF-8 log stream could not even write).
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every character that could break or fake a log line escaped.

    Tabs and printable characters (any script) are kept; ``\\n`` and ``\\r`` become
    those two-character escapes, other controls ``\\xNN`` or ``\\uNNNN``.
    """
    return _UNSAFE.sub(_escaped, text)


def shorten(text: str, limit: int = 200) -> str:
    """At most `limit` characters of `text`, with a note of how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
