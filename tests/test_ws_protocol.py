"""The hub's pure rules: query parsing, inbound decisions, close reasons."""

from __future__ import annotations

import pytest

from bus import Message, TopicError, encode_message
from tinywasm_wasi.ws_protocol import (
    MAX_CLOSE_REASON_BYTES,
    MAX_TOPICS,
    CloseCode,
    Publish,
    Refuse,
    RequestError,
    WsRequest,
    decide_inbound,
    fit_reason,
    parse_request,
    refuse_topic_error,
)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([("topic", "chat")], WsRequest(("chat",))),
        ([("topic", "a"), ("topic", "b.*")], WsRequest(("a", "b.*"))),
        ([("topic", "users.>")], WsRequest(("users.>",))),
        ([("topic", "a"), ("topic", "b"), ("topic", "a")], WsRequest(("a", "b"))),
        ([("topic", "chat"), ("envelope", "cbor")], WsRequest(("chat",), envelope=True)),
        ([("envelope", "cbor"), ("topic", "x"), ("cache", "123")], WsRequest(("x",), True)),
    ],
)
def test_parse_request(query: list[tuple[str, str]], expected: WsRequest) -> None:
    assert parse_request(query) == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([], "missing ?topic=...: connect to /ws?topic=chat"),
        ([("envelope", "cbor")], "missing ?topic="),
        ([("topic", "")], "invalid topic '': pattern is empty"),
        ([("topic", "a..b")], "invalid topic 'a..b': pattern 'a..b' has an empty token"),
        ([("topic", "ok"), ("topic", "a.>.b")], "invalid topic 'a.>.b'"),
        ([("topic", "ch*t")], "a wildcard must be a whole token"),
        ([("topic", "has space")], "white space"),
        ([("topic", "x" * 256)], "the limit is 255"),
        ([("topic", "chat"), ("envelope", "json")], "unknown envelope 'json': use envelope=cbor"),
        ([("topic", "chat"), ("envelope", "")], "unknown envelope ''"),
        ([("topic", f"t{i}") for i in range(MAX_TOPICS + 1)], "too many topics: 65 given"),
    ],
)
def test_parse_request_errors(query: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(query)
    assert message in str(info.value)


def test_max_topics_is_accepted() -> None:
    query = [("topic", f"t{i}") for i in range(MAX_TOPICS)]
    assert len(parse_request(query).patterns) == MAX_TOPICS


RAW_CHAT = WsRequest(("chat", "events"))
RAW_WILD = WsRequest(("chat.*",))
ENVELOPE = WsRequest(("chat",), envelope=True)


def envelope(topic: str, payload: bytes = b"hi") -> bytes:
    return encode_message(Message(topic=topic, payload=payload))


@pytest.mark.parametrize(
    ("request_", "allowed", "data", "expected"),
    [
        (RAW_CHAT, ["chat"], b"hi", Publish("chat", b"hi")),
        (RAW_CHAT, ["*"], b"\xff\x00", Publish("chat", b"\xff\x00")),
        (RAW_CHAT, [">"], b"", Publish("chat", b"")),
        (RAW_CHAT, ["other", "chat"], b"x", Publish("chat", b"x")),
        (WsRequest(("chat.room1",)), ["chat.*"], b"x", Publish("chat.room1", b"x")),
        (ENVELOPE, ["chat.>"], envelope("chat.a", b"p"), Publish("chat.a", b"p")),
        (ENVELOPE, ["users"], envelope("users", b"\x80"), Publish("users", b"\x80")),
    ],
)
def test_inbound_published(
    request_: WsRequest, allowed: list[str], data: bytes, expected: Publish
) -> None:
    assert decide_inbound(request_, allowed, data) == expected


@pytest.mark.parametrize(
    ("request_", "allowed", "data", "code", "reason"),
    [
        (RAW_CHAT, [], b"x", 1008, "publishing to 'chat' is not allowed"),
        (RAW_CHAT, [], b"x", 1008, "--ws-inbound setting is empty"),
        (RAW_CHAT, ["events"], b"x", 1008, "--ws-inbound setting controls it"),
        (RAW_CHAT, ["chat.*"], b"x", 1008, "'chat' is not allowed"),
        (RAW_WILD, [">"], b"x", 1008, "cannot publish to 'chat.*'"),
        (RAW_WILD, [">"], b"x", 1008, "must have no wildcard"),
        (ENVELOPE, ["chat"], envelope("users"), 1008, "publishing to 'users' is not allowed"),
        (ENVELOPE, ["chat"], b"\xff\xff", 1007, "not valid CBOR"),
        (ENVELOPE, ["chat"], b"garbage", 1007, ""),
        (ENVELOPE, ["chat"], b"\x01", 1007, "expected a CBOR map, got int"),
        (ENVELOPE, [">"], b"\xa1etopic\x01", 1007, "'topic' key must hold text"),
        (ENVELOPE, [">"], envelope("chat.*"), 1007, "contains a wildcard"),
        (ENVELOPE, ["chat"], envelope("chat") + b"\x00", 1007, "extra byte"),
    ],
)
def test_inbound_refused(
    request_: WsRequest, allowed: list[str], data: bytes, code: int, reason: str
) -> None:
    decision = decide_inbound(request_, allowed, data)
    assert isinstance(decision, Refuse)
    assert decision.code == code
    assert reason in decision.reason
    assert len(decision.reason.encode()) <= MAX_CLOSE_REASON_BYTES


def test_long_topic_reason_keeps_the_advice() -> None:
    topic = "t" * 200
    decision = decide_inbound(WsRequest((topic,)), ["chat"], b"x")
    assert isinstance(decision, Refuse)
    assert decision.reason.endswith("--ws-inbound setting controls it")
    assert len(decision.reason.encode()) <= MAX_CLOSE_REASON_BYTES


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 123, "short"),
        ("", 123, ""),
        ("x" * 123, 123, "x" * 123),
        ("x" * 124, 123, "x" * 120 + "..."),
        ("abcdef", 5, "ab..."),
        ("é" * 10, 8, "éé..."),  # 2-byte characters: never cut one in half
        ("aé" * 10, 8, "aéa..."),
        ("€" * 5, 9, "€€..."),
        ("bad \udc80 surrogate", 123, "bad ? surrogate"),
    ],
)
def test_fit_reason(text: str, limit: int, expected: str) -> None:
    assert fit_reason(text, limit) == expected
    assert len(fit_reason(text, limit).encode()) <= limit


def test_fit_reason_rejects_a_tiny_limit() -> None:
    with pytest.raises(ValueError, match="too small"):
        fit_reason("abc", 2)


def test_close_codes() -> None:
    assert [int(c) for c in CloseCode] == [1001, 1007, 1008, 1013]


def test_refuse_topic_error() -> None:
    refusal = refuse_topic_error(TopicError("topic 'sys' is reserved"))
    assert refusal == Refuse(CloseCode.POLICY_VIOLATION, "topic refused: topic 'sys' is reserved")
