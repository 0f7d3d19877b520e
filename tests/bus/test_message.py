"""The Message envelope and its CBOR encoding: pure code, no event loop."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import (
    BusError,
    Message,
    MessageError,
    TopicError,
    decode_message,
    encode_message,
    validate_topic,
)
from bus.message import too_many_items

MAX_U32 = 2**32 - 1


def _is_topic(text: str) -> bool:
    try:
        validate_topic(text)
    except TopicError:
        return False
    return True


token_st = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Z"], exclude_characters=".*>"),
    min_size=1,
    max_size=12,
)
topics_st = st.lists(token_st, min_size=1, max_size=6).map(".".join).filter(_is_topic)
messages_st = st.builds(
    Message,
    topic=topics_st,
    payload=st.binary(max_size=300),
    type=st.integers(0, MAX_U32),
    id=st.integers(0, MAX_U32),
)


@settings(database=None, deadline=None)
@given(messages_st)
def test_roundtrip(message: Message) -> None:
    data = encode_message(message)
    assert message.encode() == data
    assert decode_message(data) == message


@pytest.mark.parametrize("value", [0, 1, MAX_U32])
def test_type_and_id_bounds_roundtrip(value: int) -> None:
    message = Message(topic="chat", payload=b"x", type=value, id=value)
    assert decode_message(message.encode()) == message


def test_decode_fills_defaults() -> None:
    assert decode_message(cbor2.dumps({"topic": "chat"})) == Message(
        topic="chat", payload=b"", type=0, id=0
    )


def test_decode_ignores_unknown_keys() -> None:
    data = cbor2.dumps({"topic": "chat", "payload": b"hi", "extra": [1, 2]})
    assert decode_message(data) == Message(topic="chat", payload=b"hi")


def test_text_payload_is_utf8() -> None:
    message = decode_message(cbor2.dumps({"topic": "chat", "payload": "héllo €"}))
    assert message.payload == "héllo €".encode()
    assert isinstance(message.payload, bytes)


def test_encode_accepts_bytearray_payload() -> None:
    message = Message(topic="chat", payload=bytearray(b"abc"))  # type: ignore[arg-type]
    assert decode_message(message.encode()).payload == b"abc"


def _map(**fields: object) -> bytes:
    return cbor2.dumps({"topic": "chat", **fields})


MALFORMED = [
    # Not CBOR at all.
    (b"", "not valid CBOR"),
    (b"\xff", "not valid CBOR"),
    (b"\x5a\x00\x00\x00\x09abc", "not valid CBOR"),  # a byte string cut short
    (b"\xa1\x65topic", "not valid CBOR"),  # a map cut short
    # CBOR, but not a map.
    (cbor2.dumps(["chat", b"x"]), "expected a CBOR map, got list"),
    (cbor2.dumps("chat"), "expected a CBOR map, got str"),
    (cbor2.dumps(None), "expected a CBOR map, got NoneType"),
    # One map, then more.
    (cbor2.dumps({"topic": "chat"}) + b"\x00", "1 extra byte(s) after the CBOR map"),
    (cbor2.dumps({"topic": "a"}) * 2, "extra byte(s) after the CBOR map"),
    # Topic.
    (cbor2.dumps({}), "the 'topic' key must hold text"),
    (cbor2.dumps({"payload": b"x"}), "the 'topic' key must hold text"),
    (_map(topic=b"chat"), "the 'topic' key must hold text"),
    (_map(topic=7), "the 'topic' key must hold text"),
    (_map(topic=None), "the 'topic' key must hold text"),
    (_map(topic=""), "the 'topic' key: topic is empty"),
    (_map(topic="a..b"), "the 'topic' key: topic 'a..b' has an empty token"),
    (_map(topic="a b"), "contains white space or a control character"),
    (_map(topic="x" * 256), "topic is 256 bytes long"),
    (_map(topic="chat.*"), "the 'topic' key: topic 'chat.*' contains a wildcard"),
    (_map(topic="users.>"), "contains a wildcard"),
    # Payload.
    (_map(payload=5), "the 'payload' key must hold bytes or text"),
    (_map(payload=None), "the 'payload' key must hold bytes or text"),
    (_map(payload=[1, 2]), "the 'payload' key must hold bytes or text"),
    (_map(payload=1.5), "the 'payload' key must hold bytes or text"),
    # Type and id.
    (_map(type=-1), "the 'type' key must hold an integer from 0 to 4294967295"),
    (_map(type=2**32), "the 'type' key must hold an integer from 0 to 4294967295"),
    (_map(type=True), "the 'type' key must hold an integer"),
    (_map(type=1.0), "the 'type' key must hold an integer"),
    (_map(type="1"), "the 'type' key must hold an integer"),
    (_map(id=-1), "the 'id' key must hold an integer from 0 to 4294967295"),
    (_map(id=2**32), "the 'id' key must hold an integer"),
    (_map(id=2**70), "the 'id' key must hold an integer"),
    (_map(id=False), "the 'id' key must hold an integer"),
    (_map(id=None), "the 'id' key must hold an integer"),
]


@pytest.mark.parametrize(("data", "fragment"), MALFORMED)
def test_decode_rejects(data: bytes, fragment: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_message(data)
    assert fragment in str(info.value)
    assert isinstance(info.value, BusError) and isinstance(info.value, ValueError)


def _check_decode(data: bytes) -> None:
    try:
        message = decode_message(data)
    except MessageError:
        return
    validate_topic(message.topic)
    assert isinstance(message.payload, bytes)
    assert 0 <= message.type <= MAX_U32 and 0 <= message.id <= MAX_U32


@settings(database=None, max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_message_error(data: bytes) -> None:
    _check_decode(data)


any_value_st = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.sampled_from(["chat", "chat.*", "a..b", "", MAX_U32, MAX_U32 + 1]),
)


@settings(database=None, max_examples=500, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(["topic", "payload", "type", "id"]), st.integers()),
        any_value_st,
        max_size=5,
    ),
    st.binary(max_size=3),
)
def test_random_maps_raise_only_message_error(fields: dict[object, object], tail: bytes) -> None:
    _check_decode(cbor2.dumps(fields) + tail)


@pytest.mark.parametrize(
    ("data", "too_many"),
    [
        (cbor2.dumps({"topic": "chat", "payload": b"x" * 1_000_000, "type": 1, "id": 2}), False),
        (cbor2.dumps({"topic": "chat", "payload": "text"}), False),
        (cbor2.dumps({"topic": "chat", "payload": list(range(100))}), True),
        (cbor2.dumps({"topic": "chat", "payload": [[[[[[[[1]]]]]]]] * 20}), True),
        (b"\xbb" + (2**60).to_bytes(8, "big") + b"\x00" * 200, True),  # 2**60 entries declared
        (b"\x9f" * 100, True),  # nested indefinite arrays
        (b"\xbf" + b"\x61a\x01" * 100 + b"\xff", True),  # an indefinite map, 200 items
        (b"\x5f" + b"\x41x" * 3 + b"\xff", False),  # an indefinite byte string in 3 chunks
        (b"\x9b\xff", False),  # truncated: left to the decoder
        (b"", False),
    ],
)
def test_too_many_items_stops_early(data: bytes, too_many: bool) -> None:
    assert too_many_items(data) is too_many


def test_a_message_of_many_items_is_refused_without_decoding() -> None:
    hostile = cbor2.dumps({"topic": "chat", "payload": list(range(500_000))})
    with pytest.raises(MessageError, match="more than 64 CBOR items"):
        decode_message(hostile)
