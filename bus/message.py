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

__all__ = ["Message", "decode_message", "encode_message"]

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
