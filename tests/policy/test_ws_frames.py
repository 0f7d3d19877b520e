"""Client frame headers (tinywasm_wasi.policy.ws_frames): where an unmasked frame starts."""

from __future__ import annotations

import struct

import pytest

from tinywasm_wasi.policy.ws_frames import FrameScanner


def frame(payload: bytes, *, masked: bool = True, opcode: int = 0x2) -> bytes:
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([0x80 | opcode, bit | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, bit | 127]) + struct.pack("!Q", n)
    return head + (b"\x01\x02\x03\x04" if masked else b"") + payload


GOOD = [
    frame(b""),
    frame(b"a" * 125),
    frame(b"b" * 126),
    frame(b"c" * 70_000),
    frame(b"p", opcode=0x9),
]


@pytest.mark.parametrize("split", [None, 1, 2, 3, 7, 1000])
def test_masked_frames_pass_however_the_bytes_are_split(split: int | None) -> None:
    data = b"".join(GOOD)
    scanner = FrameScanner()
    chunks = [data] if split is None else [data[i : i + split] for i in range(0, len(data), split)]
    assert all(scanner.feed(chunk) is None for chunk in chunks)
    assert not scanner.failed


@pytest.mark.parametrize(
    ("before", "bad"),
    [
        (b"", frame(b"hello", masked=False)),
        (frame(b"ok"), frame(b"hello", masked=False)),
        (frame(b"x" * 300), frame(b"y" * 300, masked=False)),
        (frame(b"x" * 70_000), frame(b"", masked=False, opcode=0x8)),
    ],
)
def test_an_unmasked_frame_is_found_where_it_starts(before: bytes, bad: bytes) -> None:
    scanner = FrameScanner()
    assert scanner.feed(before + bad + frame(b"after")) == len(before)
    assert scanner.failed
    assert scanner.feed(frame(b"later")) == 0  # stays failed


def test_an_unmasked_header_split_across_reads_reports_offset_zero() -> None:
    scanner = FrameScanner()
    data = frame(b"ok") + frame(b"bad", masked=False)
    cut = len(frame(b"ok")) + 1  # the bad header's first byte ends the first read
    assert scanner.feed(data[:cut]) is None
    assert scanner.feed(data[cut:]) == 0
