"""get_metadata's answer, checked as a table: JSON or CBOR, keys, types, sizes, the name."""

from __future__ import annotations

import json

import cbor2
import pytest

from tinywasm_wasi.policy.metadata import MAX_METADATA, Metadata, MetadataError, parse_metadata

FULL = {
    "name": "chat",
    "version": "1.2.0",
    "description": "a chat room",
    "publishes": ["chat.out"],
    "subscribes": ["chat", "rooms.>"],
    "routes": ["/", "/history"],
}


@pytest.mark.parametrize("encode", [lambda v: json.dumps(v).encode(), cbor2.dumps])
def test_json_and_cbor_give_the_same_metadata(encode: object) -> None:
    meta = parse_metadata(encode(FULL), "chat")  # type: ignore[operator]
    assert meta.to_json() == FULL
    assert parse_metadata(encode({}), "chat") == Metadata()  # type: ignore[operator]
    assert parse_metadata(encode({"version": "2"}), "x").version == "2"  # type: ignore[operator]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "returned nothing"),
        (b"{not json", "invalid JSON"),
        (b"\xff\xff", "neither JSON nor valid CBOR"),
        (cbor2.dumps({"name": "chat"}) + b"\x00", "bytes after the map"),
        (b"[1, 2]", "must be a map, not list"),
        (cbor2.dumps([1]), "must be a map, not list"),
        (json.dumps({"nmae": "chat"}).encode(), "unknown metadata key(s) nmae"),
        (json.dumps({"name": "other"}).encode(), "names it 'other', but it loads as 'chat'"),
        (json.dumps({"name": "bad name"}).encode(), "invalid module name"),
        (json.dumps({"name": 3}).encode(), "'name' must be text, not int"),
        (json.dumps({"version": "x" * 65}).encode(), "'version' is over 64 characters"),
        (json.dumps({"description": "x" * 1025}).encode(), "over 1024"),
        (json.dumps({"publishes": "chat"}).encode(), "'publishes' must be a list of text"),
        (json.dumps({"routes": [1]}).encode(), "'routes[0]' must be text"),
        (json.dumps({"subscribes": [""]}).encode(), "empty entry"),
        (json.dumps({"subscribes": ["a"] * 65}).encode(), "over 64 entries"),
        (b" " * (MAX_METADATA + 1), "over 65536 bytes"),
    ],
)
def test_invalid_metadata_is_refused_with_the_reason(raw: bytes, says: str) -> None:
    with pytest.raises(MetadataError) as caught:
        parse_metadata(raw, "chat")
    assert says in str(caught.value)
