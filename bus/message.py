"""The message envelope and its CBOR encoding.

`Message` mirrors the reference's ``binary.Message`` (topic, type, id,
payload). It is what crosses a wire with its metadata: the WebSocket envelope
mode and, later, a distributed bus. Encoded as a CBOR map with the text keys
``topic``, ``type``, ``id`` and ``payload``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import cbor2

from bus.exceptions import MessageError, TopicError
from bus.topics import validate_topic

__all__ = ["MAX_ENVELOPE_ITEMS", "Message", "decode_message", "encode_message", "too_many_items"]

MAX_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Message:
    """One message: a topic, a small type code, a correlation id and the payload bytes."""

    topic: str
    payload: bytes
    type: int = 0
    id: int = 0

    def encode(self) -> bytes:
        """This message as CBOR bytes."""
        return encode_message(self)


def encode_message(message: Message) -> bytes:
    """Encode `message` as a CBOR map."""
    return cbor2.dumps(
        {
            "topic": message.topic,
            "type": message.type,
            "id": message.id,
            "payload": bytes(message.payload),
        }
    )


def decode_message(data: bytes) -> Message:
    """Decode CBOR bytes into a Message, or raise MessageError saying what is wrong."""
    if too_many_items(data):
        raise MessageError(
            f"a message is a CBOR map of topic, payload, type and id, and this one holds more "
            f"than {MAX_ENVELOPE_ITEMS} CBOR items: send the data as the payload's bytes"
        )
    stream = io.BytesIO(data)
    try:
        obj: Any = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types for bad input
        raise MessageError(f"not valid CBOR: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"expected a CBOR map, got {type(obj).__name__}")
    # cbor2.loads() ignores bytes after the first item; a message is exactly one item.
    extra = len(data) - stream.tell()
    if extra:
        raise MessageError(f"{extra} extra byte(s) after the CBOR map: send one message per frame")
    topic = obj.get("topic")
    payload = obj.get("payload", b"")
    mtype = obj.get("type", 0)
    mid = obj.get("id", 0)
    if not isinstance(topic, str):
        raise MessageError("the 'topic' key must hold text")
    try:
        validate_topic(topic)
    except TopicError as exc:
        raise MessageError(f"the 'topic' key: {exc}") from None
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if not isinstance(payload, bytes | bytearray):
        raise MessageError("the 'payload' key must hold bytes or text")
    for name, value in (("type", mtype), ("id", mid)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_U32:
            raise MessageError(f"the {name!r} key must hold an integer from 0 to {MAX_U32}")
    return Message(topic=topic, payload=bytes(payload), type=mtype, id=mid)


MAX_ENVELOPE_ITEMS = 64  # a Message is a map of at most 4 keys: 9 CBOR items


def too_many_items(data: bytes, limit: int = MAX_ENVELOPE_ITEMS) -> bool:
    """True when the first CBOR item of `data` holds more than `limit` data items.

    Reads only item heads and skips string contents by their length, and stops at
    `limit`, so a hostile 1 MiB envelope (an array of half a million integers, a
    map declaring 2**60 entries, deep nesting) costs at most `limit` steps instead
    of half a million Python objects built on the event loop. Malformed or
    truncated input returns False: the decoder reports what is wrong with it.
    """
    items = 0
    stack = [1]  # items still to read in each open container; -1: until a break
    pos, end = 0, len(data)
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        if pos >= end:
            return False
        head = data[pos]
        pos += 1
        if stack[-1] == -1 and head == 0xFF:  # the break that ends an indefinite container
            stack.pop()
            continue
        if stack[-1] > 0:
            stack[-1] -= 1
        items += 1
        if items > limit:
            return True
        major, info = head >> 5, head & 31
        value: int | None
        if info < 24:
            value = info
        elif info <= 27:
            size = 1 << (info - 24)
            if pos + size > end:
                return False
            value = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        elif info == 31 and major in (2, 3, 4, 5):
            value = None
        else:
            return False
        if major in (2, 3):  # byte or text string: skip its contents
            if value is None:
                stack.append(-1)
            else:
                pos += value
        elif major == 4:
            stack.append(-1 if value is None else value)
        elif major == 5:
            stack.append(-1 if value is None else 2 * value)
        elif major == 6:  # a tag: one item follows
            stack.append(1)
    return False
