"""The WebSocket hub's own policy as pure functions: no sockets, no event loop.

What aiohttp does not decide for the hub: `parse_request` turns the ``/ws``
query into a `WsRequest` (or a `RequestError` whose text is the HTTP 400 body),
`check_origin` applies the ``--ws-origins`` policy (`parse_origins`) before the
upgrade, `decide_inbound` says what a frame a browser sent means (`Publish` or
`Refuse`), and the close reasons: `protocol_error_reason` names what was wrong
with a frame aiohttp refused, `handshake_refusal` puts aiohttp's reason for a
refused handshake after advice, and `fit_reason` makes a reason fit the 123
bytes a close frame allows. Close codes are aiohttp's `WSCloseCode`; the
handshake checks and the framing are aiohttp's too. `tinywasm_wasi.web.hub`
feeds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import urlsplit

import cbor2
from aiohttp import WSCloseCode

from bus import MessageError, TopicError, decode_message, matches, validate_pattern, validate_topic
from bus.topics import is_wildcard
from tinywasm_wasi.policy.grants import SYSTEM_TOKEN, is_system
from tinywasm_wasi.policy.topic_history import Position, parse_since

__all__ = [
    "HANDSHAKE_HEADERS",
    "INBOUND_SETTING",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_TOPICS",
    "TOKEN_PUB_GRANT",
    "AppCloseCode",
    "FrameType",
    "OriginPolicy",
    "Publish",
    "Refuse",
    "RequestError",
    "WsRequest",
    "check_origin",
    "decide_inbound",
    "encode_envelope",
    "fit_reason",
    "handshake_refusal",
    "non_ascii_handshake",
    "parse_origins",
    "parse_request",
    "protocol_error_reason",
    "refuse_topic_error",
    "same_origin",
]

MAX_CLOSE_REASON_BYTES = 123
MAX_TOPICS = 64
# A topic quoted inside a close reason is cut to this many bytes, so that the
# advice after it (which setting to change) still fits in the reason.
_QUOTED_TOPIC_BYTES = 32


INBOUND_SETTING = "the server's --ws-inbound setting"
TOKEN_PUB_GRANT = "the token's pub grant"


class AppCloseCode(IntEnum):
    """Close codes of our own, in the 3000-3999 range RFC 6455 leaves to applications."""

    TOKEN_EXPIRED = 3000  # the connection's token expired: get a new one and reconnect


class FrameType(IntEnum):
    """The ``type`` of an envelope frame the server sends."""

    MESSAGE = 0  # a broadcast (with offset and epoch on a topic that keeps history)
    SUBSCRIBED = 1  # first frame per topic with history: position, and `recovered` after since=
    JOIN = 2  # presence=1: a connection joined the topic (user, conn)
    LEAVE = 3  # presence=1: a connection left the topic (user, conn)


def encode_envelope(
    topic: str,
    payload: bytes,
    *,
    type: FrameType = FrameType.MESSAGE,
    offset: int | None = None,
    epoch: str | None = None,
    recovered: bool | None = None,
    member: dict[str, object] | None = None,
) -> bytes:
    """A CBOR envelope {topic, type, id, payload} plus the keys given (offset, epoch, recovered).

    Without extra keys it is byte for byte `bus.encode_message`'s frame.
    """
    frame: dict[str, object] = {"topic": topic, "type": int(type), "id": 0, "payload": payload}
    if offset is not None:
        frame["offset"] = offset
    if epoch is not None:
        frame["epoch"] = epoch
    if recovered is not None:
        frame["recovered"] = recovered
    if member is not None:
        frame.update(member)
    return cbor2.dumps(frame)


class RequestError(ValueError):
    """The ``/ws`` query is not valid; the text says why and is the HTTP 400 body."""


@dataclass(frozen=True, slots=True)
class WsRequest:
    """What a ``/ws`` connection asked for: its patterns, first one first, and framing."""

    patterns: tuple[str, ...]
    envelope: bool = False
    since: tuple[tuple[str, Position], ...] = ()  # (topic, last position seen) to recover from
    recent: bool = False  # deliver each topic's latest kept message first
    presence: bool = False  # send join/leave frames for this connection's topics


@dataclass(frozen=True, slots=True)
class Publish:
    """An inbound frame to hand to the bus."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Refuse:
    """An inbound frame refused: close the connection with `code` and `reason`."""

    code: WSCloseCode
    reason: str


def parse_request(query: Iterable[tuple[str, str]]) -> WsRequest:
    """Read the ``/ws`` query pairs into a WsRequest.

    ``topic`` may repeat (duplicates are kept once, in order); each value is a
    subscription pattern. ``envelope=cbor`` selects CBOR envelopes. ``since``
    (envelope mode only, may repeat) is ``offset:epoch`` for the one topic of the
    connection, or ``topic:offset:epoch``; ``recent=1`` asks for each topic's
    latest kept message. Other keys are ignored.

    Raises:
        RequestError: no topic, a bad pattern, too many topics, an unknown envelope,
            or a bad ``since``/``recent``.
    """
    topics: list[str] = []
    envelope = False
    since_values: list[str] = []
    recent = False
    presence = False
    for key, value in query:
        if key == "topic":
            topics.append(value)
        elif key == "since":
            since_values.append(value)
        elif key == "recent":
            if value not in ("0", "1"):
                raise RequestError(f"recent={value!r}: use recent=1 (or leave it out)")
            recent = value == "1"
        elif key == "presence":
            if value not in ("0", "1"):
                raise RequestError(f"presence={value!r}: use presence=1 (or leave it out)")
            presence = value == "1"
        elif key == "envelope":
            if value != "cbor":
                raise RequestError(
                    f"unknown envelope {value!r}: use envelope=cbor, or leave it out for raw frames"
                )
            envelope = True
    if not topics:
        raise RequestError(
            "missing ?topic=...: connect to /ws?topic=chat "
            "(repeat topic= to subscribe to several topics)"
        )
    patterns = tuple(dict.fromkeys(topics))
    if len(patterns) > MAX_TOPICS:
        raise RequestError(
            f"too many topics: {len(patterns)} given, the limit is {MAX_TOPICS} per connection"
        )
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except TopicError as exc:
            raise RequestError(f"invalid topic {pattern!r}: {exc}") from None
    since = _parse_since(since_values, patterns, envelope)
    if presence and not envelope:
        raise RequestError("presence=1 needs envelope=cbor: join and leave come as envelopes")
    return WsRequest(
        patterns=patterns, envelope=envelope, since=since, recent=recent, presence=presence
    )


def _parse_since(
    values: list[str], patterns: tuple[str, ...], envelope: bool
) -> tuple[tuple[str, Position], ...]:
    if not values:
        return ()
    if not envelope:
        raise RequestError("since= needs envelope=cbor: offsets and epochs come in envelope frames")
    concrete = [p for p in patterns if not is_wildcard(p)]
    result: dict[str, Position] = {}
    for value in values:
        try:
            topic, position = parse_since(value)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        if topic is None:
            if len(patterns) != 1 or not concrete:
                raise RequestError(
                    f"since={value!r} names no topic: with several topics, or a wildcard, "
                    "use since=topic:offset:epoch"
                )
            topic = concrete[0]
        if topic not in concrete:
            raise RequestError(
                f"since={value!r}: {topic!r} is not one of this connection's topics "
                "without a wildcard"
            )
        result[topic] = position
    return tuple(result.items())


def decide_inbound(
    request: WsRequest, allowed: Sequence[str], data: bytes, setting: str = INBOUND_SETTING
) -> Publish | Refuse:
    """Decide what a frame received on a connection means.

    In raw mode the frame is the payload for the connection's first topic,
    which must have no wildcard; in envelope mode it must be a CBOR Message.
    Either way the topic must match one of the `allowed` patterns (which come
    from `setting`, named in the refusal) and must not be a ``$sys`` topic.
    """
    if request.envelope:
        try:
            message = decode_message(data)
        except MessageError as exc:
            # 1007, which RFC 6455 names "invalid frame payload data": not only text.
            return Refuse(WSCloseCode.INVALID_TEXT, fit_reason(str(exc)))
        topic, payload = message.topic, message.payload
    else:
        topic, payload = request.patterns[0], data
        try:
            validate_topic(topic)
        except TopicError:
            return Refuse(
                WSCloseCode.POLICY_VIOLATION,
                fit_reason(
                    f"cannot publish to {_quote(topic)}: raw frames go to the first ?topic=, "
                    "which must have no wildcard"
                ),
            )
    if is_system(topic):
        return Refuse(
            WSCloseCode.POLICY_VIOLATION,
            fit_reason(f"cannot publish to {_quote(topic)}: {SYSTEM_TOKEN}.> is the server's own"),
        )
    if not any(matches(pattern, topic) for pattern in allowed):
        state = "controls it" if allowed else "is empty"
        why = f"publishing to {_quote(topic)} is not allowed: {setting}"
        return Refuse(WSCloseCode.POLICY_VIOLATION, fit_reason(f"{why} {state}"))
    return Publish(topic, payload)


def refuse_topic_error(exc: TopicError) -> Refuse:
    """The refusal for a frame whose topic the bus rejected."""
    return Refuse(WSCloseCode.POLICY_VIOLATION, fit_reason(f"topic refused: {exc}"))


def protocol_error_reason(code: int, max_frame: int) -> str:
    """The close reason for a frame refused by aiohttp's own checks, by close code."""
    if code == WSCloseCode.MESSAGE_TOO_BIG:
        return fit_reason(
            f"frame too big: the limit is {max_frame} bytes (the server's --ws-max-frame setting)"
        )
    if code == WSCloseCode.INVALID_TEXT:
        return "text frame is not valid UTF-8: send other bytes as a binary frame"
    if code == WSCloseCode.PROTOCOL_ERROR:
        return "protocol error: malformed or unexpected WebSocket frame (see RFC 6455)"
    return ""


# -- before the upgrade: origins and handshakes -------------------------------------------

# aiohttp's reason quotes a header the client sent: cut it, the advice matters more.
_HANDSHAKE_REASON_BYTES = 200

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_ORIGIN_SETTING = "--ws-origins / TINYWASM_WS_ORIGINS"

# (scheme, host, port): an origin with its default port filled in, host lower case.
_OriginKey = tuple[str, str, int | None]


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Which browser origins may open ``/ws`` (the ``--ws-origins`` setting).

    `any`: every origin. Otherwise exactly `origins`, or, when none are listed,
    the server's own origin. Clients that send no Origin header (programs, not
    browsers) are always let through: the header protects browsers' users, and a
    program can send any value it likes.
    """

    origins: frozenset[_OriginKey] = frozenset()
    any: bool = False


def parse_origins(entries: Iterable[str]) -> OriginPolicy:
    """Read ``--ws-origins`` entries: ``*``, or origins ``scheme://host[:port]``.

    Raises:
        ValueError: an entry is not an origin.
    """
    keys: set[_OriginKey] = set()
    allow_any = False
    for entry in entries:
        if entry.strip() == "*":
            allow_any = True
            continue
        key = _origin_key(entry)
        if key is None:
            raise ValueError(
                f"{entry!r} is not an origin: use scheme://host[:port] with no path, "
                "e.g. https://example.com, or * for any origin"
            )
        keys.add(key)
    return OriginPolicy(origins=frozenset(keys), any=allow_any)


def check_origin(policy: OriginPolicy, origin: str | None, host: str | None) -> str | None:
    """Decide a ``/ws`` handshake by its Origin header; None lets it through.

    `host` is the request's Host header: the server's own origin is an
    ``http`` or ``https`` origin with that host and port (a missing port is
    the scheme's default), so the check also holds behind a TLS proxy that
    keeps the Host header. Otherwise the text of the HTTP 403 refusal.
    """
    if origin is None or policy.any:
        return None
    key = _origin_key(origin)
    if policy.origins:
        if key in policy.origins:
            return None
        why = "it is not one of the origins the server's --ws-origins setting allows"
    else:
        if key is not None and _same_origin(key, host):
            return None
        why = "only the server's own origin may connect (the --ws-origins setting is empty)"
    quoted = repr(fit_reason(origin, 100))
    if key is None:
        return (
            f"origin {quoted} may not open /ws: {why}; it is not a scheme://host[:port] "
            f"origin, so only {_ORIGIN_SETTING}='*' would allow it"
        )
    return (
        f"origin {quoted} may not open /ws: {why}. To allow it, add it to "
        f"{_ORIGIN_SETTING}, e.g. TINYWASM_WS_ORIGINS={_format_origin(key)}"
    )


# The handshake headers the hub reads; RFC 6455 and RFC 6454 make them ASCII.
HANDSHAKE_HEADERS = (
    "Host",
    "Origin",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
)


def non_ascii_handshake(headers: Mapping[str, str]) -> str | None:
    """The 400 text for a handshake header that is not ASCII, or None when all are.

    aiohttp keeps bytes that are not UTF-8 as lone surrogates; a value holding them
    (or any non-ASCII character) in these headers is a broken handshake, refused
    before the header is used or echoed.
    """
    for name in HANDSHAKE_HEADERS:
        value = headers.get(name)
        if value is not None and not value.isascii():
            return (
                f"handshake refused: the {name} header holds bytes that are not ASCII; "
                "WebSocket handshake headers are ASCII (RFC 6455)"
            )
    return None


def handshake_refusal(reason: str) -> str:
    """The HTTP 400 text for a request to ``/ws`` that aiohttp refused as a handshake.

    `reason` is aiohttp's own (the text of the ``HTTPBadRequest`` it raised):
    it comes after advice for the common case, a plain GET from a browser tab.
    """
    why = fit_reason(" ".join(reason.split()), _HANDSHAKE_REASON_BYTES)
    return (
        "/ws is a WebSocket endpoint: connect with new WebSocket(...), "
        f"e.g. ws://host:port/ws?topic=chat (handshake refused: {why})"
    )


def _origin_key(text: str) -> _OriginKey | None:
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if (
        not parts.scheme
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    return (
        parts.scheme,
        parts.hostname,
        port if port is not None else _DEFAULT_PORTS.get(parts.scheme),
    )


def same_origin(origin: str, host: str | None) -> bool:
    """True when `origin` is the server's own: http(s), the Host header's name and port."""
    key = _origin_key(origin)
    return key is not None and _same_origin(key, host)


def _same_origin(key: _OriginKey, host: str | None) -> bool:
    scheme, hostname, port = key
    if scheme not in ("http", "https") or not host:
        return False
    try:
        parts = urlsplit("//" + host.strip())
        host_port = parts.port
    except ValueError:
        return False
    if parts.netloc != host.strip() or "@" in parts.netloc or parts.hostname is None:
        return False
    if host_port is None:
        host_port = _DEFAULT_PORTS[scheme]
    return parts.hostname == hostname and host_port == port


def _format_origin(key: _OriginKey) -> str:
    scheme, hostname, port = key
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def fit_reason(text: str, limit: int = MAX_CLOSE_REASON_BYTES) -> str:
    """Return `text` cut to at most `limit` UTF-8 bytes, ending in "..." if cut."""
    if limit < 3:
        raise ValueError(f"limit {limit} is too small: give at least 3 bytes")
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    # "ignore" drops only a multi-byte character split by the cut.
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def _quote(topic: str) -> str:
    """`topic` in quotes, cut so that a long one leaves room for the rest of a reason."""
    return repr(fit_reason(topic, _QUOTED_TOPIC_BYTES))
