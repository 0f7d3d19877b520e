"""The --ws-inbound-file format (tinywasm_wasi.policy.inbound), as a table."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.inbound import MAX_INBOUND_FILE, InboundFileError, parse_inbound_file


@pytest.mark.parametrize(
    ("text", "patterns"),
    [
        ("", ()),
        ("# nobody may publish\n\n", ()),
        ("chat\n", ("chat",)),
        ("chat\nrooms.>\n", ("chat", "rooms.>")),
        ("chat, rooms.*  # the demo\n  news\n", ("chat", "rooms.*", "news")),
        ("chat\nchat,chat\n", ("chat",)),
        ("a\r\nb\r\n", ("a", "b")),
    ],
)
def test_patterns(text: str, patterns: tuple[str, ...]) -> None:
    assert parse_inbound_file(text) == patterns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chat\na..b\n", "line 2: "),
        ("ok\n\n# fine\nbad topic\n", "line 4: "),
        ("x" * (MAX_INBOUND_FILE + 1), f"over {MAX_INBOUND_FILE} bytes"),
    ],
)
def test_a_mistake_refuses_the_whole_file(text: str, message: str) -> None:
    with pytest.raises(InboundFileError, match=message):
        parse_inbound_file(text)
