"""Client frame headers, scanned for the one rule aiohttp's reader does not check (pure).

RFC 6455 section 5.1: a client masks every frame it sends, and a server that
receives an unmasked one closes the connection with 1002. aiohttp's reader
unmasks when the bit is set and reads the payload as it is when it is not, so
`FrameScanner` walks the same bytes first: it reads each frame's header (2 to
14 bytes), skips its payload by count, and reports where the first unmasked
frame starts. It keeps only the bytes of a header that is split across reads.
"""

from __future__ import annotations

__all__ = ["UNMASKED_REASON", "FrameScanner"]

UNMASKED_REASON = "protocol error: client frames must be masked (RFC 6455 section 5.1)"


class FrameScanner:
    """Feed it what a client sends, in order; it says where an unmasked frame begins."""

    __slots__ = ("_head", "_skip", "failed")

    def __init__(self) -> None:
        self._head = bytearray()  # the current frame header, while it is incomplete
        self._skip = 0  # payload bytes of the current frame still to come
        self.failed = False

    def feed(self, data: bytes) -> int | None:
        """The offset in `data` where the first unmasked frame starts, or None if there is none.

        0 when that frame's header began in an earlier read. After a report the
        scanner stays failed: later reads are not scanned.
        """
        if self.failed:
            return 0
        pos, end = 0, len(data)
        head = self._head
        while pos < end:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                continue
            head.append(data[pos])
            pos += 1
            if len(head) < 2:
                continue
            if not head[1] & 0x80:
                self.failed = True
                return max(0, pos - len(head))
            code = head[1] & 0x7F
            extended = 2 if code == 126 else 8 if code == 127 else 0
            if len(head) < 2 + extended + 4:  # the extended length, then the 4-byte mask
                continue
            self._skip = code if not extended else int.from_bytes(head[2 : 2 + extended], "big")
            head.clear()
        return None
