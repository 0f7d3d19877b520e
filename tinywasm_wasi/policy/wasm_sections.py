"""Reading and trimming a WebAssembly binary's sections (pure).

Compilers that keep function names (the ``name`` custom section, which backtraces use)
often keep DWARF too (``.debug_*`` sections), which makes a 1 KiB module 800 KiB.
`strip_debug` drops the DWARF and keeps everything else; `custom_sections` lists what is there.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["WasmFormatError", "custom_sections", "sections", "strip_debug"]

_MAGIC = b"\0asm"
_HEADER = 8  # magic and version
_CUSTOM = 0


class WasmFormatError(ValueError):
    """The bytes are not a well-formed WebAssembly binary at the section level."""


def _leb_u32(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 number at `pos`; returns (value, position after it)."""
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise WasmFormatError(f"bad LEB128 number at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def sections(data: bytes) -> Iterator[tuple[int, str | None, int, int]]:
    """Each section as (id, custom name or None, start, end) byte offsets, in order.

    Raises:
        WasmFormatError: no WebAssembly header, or a section runs past the end.
    """
    if not data.startswith(_MAGIC) or len(data) < _HEADER:
        raise WasmFormatError("not a WebAssembly binary (no \\0asm header)")
    pos = _HEADER
    while pos < len(data):
        start = pos
        section_id = data[pos]
        size, body = _leb_u32(data, pos + 1)
        end = body + size
        if end > len(data):
            raise WasmFormatError(f"section at byte {start} runs past the end of the file")
        name = None
        if section_id == _CUSTOM:
            length, at = _leb_u32(data, body)
            name = data[at : at + length].decode("utf-8", "replace")
        yield section_id, name, start, end
        pos = end


def custom_sections(data: bytes) -> list[str]:
    """The names of the custom sections, in order."""
    return [name for _, name, _, _ in sections(data) if name is not None]


def strip_debug(data: bytes) -> bytes:
    """`data` without its ``.debug_*`` custom sections (DWARF); the ``name`` section stays."""
    kept = [data[:_HEADER]]
    for _, name, start, end in sections(data):
        if name is None or not name.startswith(".debug"):
            kept.append(data[start:end])
    return b"".join(kept)
