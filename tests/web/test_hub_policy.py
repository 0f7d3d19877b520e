"""The hub's policy: query parsing, inbound decisions, close reasons, origins, handshake text."""

from __future__ import annotations

import pytest
from aiohttp import WSCloseCode

from bus import Message, TopicError, encode_message
from tinywasm_wasi.web.hub_policy import (
    MAX_CLOSE_REASON_BYTES,
    MAX_TOPICS,
    OriginPolicy,
    Publish,
    Refuse,
    RequestError,
    WsRequest,
    check_origin,
    decide_inbound,
    fit_reason,
    handshake_refusal,
    parse_origins,
    parse_request,
    protocol_error_reason,
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
        (
            ENVELOPE,
            [">"],
            envelope("$sys.status"),
            1008,
            "'$sys.status': $sys.> is the server's own",
        ),
    ],
)
def test_inbound_refused(
    request_: WsRequest, allowed: list[str], data: bytes, code: int, reason: str
) -> None:
    decision = decide_inbound(request_, allowed, data)
    assert isinstance(decision, Refuse)
    assert decision.code == code
    assert isinstance(decision.code, WSCloseCode)  # aiohttp's enum, not a bare int
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


def test_refuse_topic_error() -> None:
    refusal = refuse_topic_error(TopicError("topic 'sys' is reserved"))
    assert refusal == Refuse(WSCloseCode.POLICY_VIOLATION, "topic refused: topic 'sys' is reserved")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (1009, "frame too big: the limit is 1048576 bytes (the server's --ws-max-frame setting)"),
        (1007, "text frame is not valid UTF-8: send other bytes as a binary frame"),
        (1002, "protocol error: malformed or unexpected WebSocket frame (see RFC 6455)"),
        (1000, ""),
        (1001, ""),
    ],
)
def test_protocol_error_reason(code: int, expected: str) -> None:
    assert protocol_error_reason(code, 1024 * 1024) == expected
    assert len(expected.encode()) <= MAX_CLOSE_REASON_BYTES


def test_protocol_error_reason_fits_a_huge_limit() -> None:
    reason = protocol_error_reason(1009, 10**60)
    assert reason.startswith("frame too big: the limit is 1000")
    assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES


# -- origins ------------------------------------------------------------------------------

SAME = parse_origins([])
ANY = parse_origins(["*"])
LISTED = parse_origins(["https://app.example.com", "http://localhost:3000"])


@pytest.mark.parametrize(
    ("policy", "origin", "host"),
    [
        # No Origin header: a program, not a browser.
        (SAME, None, "127.0.0.1:6060"),
        (LISTED, None, "127.0.0.1:6060"),
        (SAME, None, None),
        # The server's own origin, by the Host header; either scheme (TLS proxies).
        (SAME, "http://127.0.0.1:6060", "127.0.0.1:6060"),
        (SAME, "https://127.0.0.1:6060", "127.0.0.1:6060"),
        (SAME, "http://example.com", "example.com"),
        (SAME, "https://example.com", "example.com"),
        (SAME, "http://example.com", "example.com:80"),
        (SAME, "https://example.com", "example.com:443"),
        (SAME, "https://example.com:443", "example.com"),
        (SAME, "HTTP://Example.COM:8080", "example.com:8080"),
        (SAME, "http://[::1]:6060", "[::1]:6060"),
        (SAME, "http://localhost:6060/", "localhost:6060"),
        # Any origin.
        (ANY, "http://evil.example", "127.0.0.1:6060"),
        (ANY, "null", "127.0.0.1:6060"),
        # Listed origins, compared with default ports filled in and case folded.
        (LISTED, "https://app.example.com", "127.0.0.1:6060"),
        (LISTED, "https://APP.example.com:443", "127.0.0.1:6060"),
        (LISTED, "http://localhost:3000", "127.0.0.1:6060"),
    ],
)
def test_origin_allowed(policy: OriginPolicy, origin: str | None, host: str | None) -> None:
    assert check_origin(policy, origin, host) is None


@pytest.mark.parametrize(
    ("policy", "origin", "host", "texts"),
    [
        (
            SAME,
            "http://evil.example",
            "127.0.0.1:6060",
            [
                "origin 'http://evil.example' may not open /ws",
                "only the server's own origin may connect (the --ws-origins setting is empty)",
                "--ws-origins / TINYWASM_WS_ORIGINS",
                "TINYWASM_WS_ORIGINS=http://evil.example",
            ],
        ),
        (SAME, "http://127.0.0.1:6061", "127.0.0.1:6060", ["'http://127.0.0.1:6061'"]),
        (SAME, "http://127.0.0.1", "127.0.0.1:6060", ["may not open /ws"]),
        (SAME, "http://example.com", "example.com:8080", ["may not open /ws"]),
        (SAME, "https://example.com", "example.com:80", ["may not open /ws"]),
        (SAME, "http://localhost:6060", "127.0.0.1:6060", ["'http://localhost:6060'"]),
        (SAME, "ws://127.0.0.1:6060", "127.0.0.1:6060", ["may not open /ws"]),
        (SAME, "http://127.0.0.1:6060", None, ["may not open /ws"]),
        (SAME, "http://127.0.0.1:6060", "127.0.0.1:6060/x", ["may not open /ws"]),
        (SAME, "http://127.0.0.1:6060", "127.0.0.1:bad", ["may not open /ws"]),
        (
            SAME,
            "null",
            "127.0.0.1:6060",
            ["origin 'null' may not open /ws", "only --ws-origins / TINYWASM_WS_ORIGINS='*'"],
        ),
        (SAME, "http://a.example/path", "a.example", ["not a scheme://host[:port] origin"]),
        (SAME, "http://user@a.example", "a.example", ["not a scheme://host[:port] origin"]),
        (SAME, "http://a.example:99999", "a.example:99999", ["not a scheme://host[:port]"]),
        (
            LISTED,
            "https://evil.example",
            "127.0.0.1:6060",
            [
                "it is not one of the origins the server's --ws-origins setting allows",
                "e.g. TINYWASM_WS_ORIGINS=https://evil.example",
            ],
        ),
        # A listed policy replaces the default: the server's own origin must be listed too.
        (LISTED, "http://127.0.0.1:6060", "127.0.0.1:6060", ["'http://127.0.0.1:6060'"]),
        (LISTED, "http://app.example.com", "127.0.0.1:6060", ["http://app.example.com"]),
        (LISTED, "http://localhost:3001", "127.0.0.1:6060", ["=http://localhost:3001"]),
        (SAME, "http://[::1]:6061", "[::1]:6060", ["TINYWASM_WS_ORIGINS=http://[::1]:6061"]),
        (SAME, "https://" + "a" * 300 + ".example", "x", ["...'", "TINYWASM_WS_ORIGINS=https://"]),
    ],
)
def test_origin_refused(
    policy: OriginPolicy, origin: str, host: str | None, texts: list[str]
) -> None:
    refusal = check_origin(policy, origin, host)
    assert refusal is not None
    for text in texts:
        assert text in refusal


def test_parse_origins() -> None:
    assert parse_origins([]) == OriginPolicy()
    assert parse_origins(["*"]).any
    assert parse_origins(["https://a.example", "*"]).any
    assert parse_origins(["HTTPS://A.example:443/"]) == parse_origins(["https://a.example"])
    assert parse_origins(["http://a.example:8080"]) != parse_origins(["http://a.example"])


@pytest.mark.parametrize(
    "entry", ["example.com", "https://a.example/path", "https://a.example:99999", "null", "*.x"]
)
def test_parse_origins_refuses_a_non_origin(entry: str) -> None:
    with pytest.raises(ValueError, match=r"is not an origin: use scheme://host\[:port\]"):
        parse_origins(["https://ok.example", entry])


# -- handshakes ---------------------------------------------------------------------------


def test_handshake_refusal_gives_advice_then_aiohttps_reason() -> None:
    text = handshake_refusal('No WebSocket UPGRADE hdr: None\n Can "Upgrade" only to "WebSocket".')
    assert text == (
        "/ws is a WebSocket endpoint: connect with new WebSocket(...), e.g. "
        "ws://host:port/ws?topic=chat (handshake refused: No WebSocket UPGRADE hdr: None Can "
        '"Upgrade" only to "WebSocket".)'
    )


def test_handshake_refusal_cuts_a_long_reason() -> None:
    text = handshake_refusal("Unsupported version: " + "9" * 10_000)
    assert text.endswith("...)")
    assert len(text.encode()) < 400
