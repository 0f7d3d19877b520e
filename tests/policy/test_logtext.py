"""Log text escaping (tinywasm_wasi.policy.logtext) and the filter that applies it."""

from __future__ import annotations

import logging

import pytest

from tinywasm_wasi.logsafe import EscapingFilter
from tinywasm_wasi.policy.logtext import escape, shorten


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("plain", "plain"),
        ("tab\tkept", "tab\tkept"),
        ("x\nERROR forged", "x\\nERROR forged"),
        ("cr\rover", "cr\\rover"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85next", "c1\\x85next"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("caf\udce9", "caf\\udce9"),  # a non-UTF-8 file name as os.listdir gives it
        ("café ünïcode 日本", "café ünïcode 日本"),
    ],
)
def test_escape(text: str, logged: str) -> None:
    assert escape(text) == logged
    assert "\n" not in escape(text)
    escape(text).encode("utf-8")  # always writable to a UTF-8 stream


def test_shorten() -> None:
    assert shorten("abc", 5) == "abc"
    assert shorten("abcdefgh", 5) == "abcde... (3 more characters)"


def test_the_filter_escapes_the_formatted_message_and_keeps_clean_records_as_they_are() -> None:
    forged = logging.LogRecord("t", logging.INFO, __file__, 1, "file %s: %s", ("a\nb", 3), None)
    assert EscapingFilter().filter(forged)
    assert (forged.getMessage(), forged.args) == ("file a\\nb: 3", None)
    clean = logging.LogRecord("t", logging.INFO, __file__, 1, "file %s", ("ok",), None)
    assert EscapingFilter().filter(clean)
    assert (clean.msg, clean.args) == ("file %s", ("ok",))
