"""The WebSocket hub's rules as pure functions: no aiohttp, no asyncio.

`parse_request` turns the ``/ws`` query into a `WsRequest` (or a `RequestError`
whose text is the HTTP 400 body), `decide_inbound` says what a frame a browser
sent means (`Publish` or `Refuse`), and `fit_reason` makes a close reason fit
the 123 bytes a WebSocket close frame allows. `tinywasm_wasi.hub` feeds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from bus import MessageError, TopicError, decode_message, matches, validate_pattern, validate_topic

__all__ = [
    "MAX_CLOSE_REASON_BYTES",
    "MAX_TOPICS",
    "CloseCode",
    "Publish",
    "Refuse",
    "RequestError",
    "WsRequest",
    "decide_inbound",
    "fit_reason",
    "parse_request",
    "refuse_topic_error",
]

MAX_CLOSE_REASON_BYTES = 123
MAX_TOPICS = 64
# A topic quoted inside a close reason is cut to this many bytes, so that the
# advice after it (which setting to change) still fits in the reason.
_QUOTED_TOPIC_BYTES = 32


class CloseCode(IntEnum):
    """The WebSocket close codes the hub sends (RFC 6455 section 7.4)."""

    GOING_AWAY = 1001  # the server is shutting down
    INVALID_DATA = 1007  # an envelope frame is not a valid CBOR Message
    POLICY_VIOLATION = 1008  # the client may not publish to that topic
    TRY_AGAIN_LATER = 1013  # slow consumer: its send queue overflowed


class RequestError(ValueError):
    """The ``/ws`` query is not valid; the text says why and is the HTTP 400 body."""


@dataclass(frozen=True, slots=True)
class WsRequest:
    """What a ``/ws`` connection asked for: its patterns, first one first, and framing."""

    patterns: tuple[str, ...]
    envelope: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    """An inbound frame to hand to the bus."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Refuse:
    """An inbound frame refused: close the connection with `code` and `reason`."""

    code: CloseCode
    reason: str


def parse_request(query: Iterable[tuple[str, str]]) -> WsRequest:
    """Read the ``/ws`` query pairs into a WsRequest.

    ``topic`` may repeat (duplicates are kept once, in order); each value is a
    subscription pattern. ``envelope=cbor`` selects CBOR envelopes. Other keys
    are ignored.

    Raises:
        RequestError: no topic, a bad pattern, too many topics or an unknown envelope.
    """
    topics: list[str] = []
    envelope = False
    for key, value in query:
        if key == "topic":
            topics.append(value)
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
    return WsRequest(patterns=patterns, envelope=envelope)


def decide_inbound(request: WsRequest, allowed: Sequence[str], data: bytes) -> Publish | Refuse:
    """Decide what a frame received on a connection means.

    In raw mode the frame is the payload for the connection's first topic,
    which must have no wildcard; in envelope mode it must be a CBOR Message.
    Either way the topic must match one of the `allowed` patterns.
    """
    if request.envelope:
        try:
            message = decode_message(data)
        except MessageError as exc:
            return Refuse(CloseCode.INVALID_DATA, fit_reason(str(exc)))
        topic, payload = message.topic, message.payload
    else:
        topic, payload = request.patterns[0], data
        try:
            validate_topic(topic)
        except TopicError:
            return Refuse(
                CloseCode.POLICY_VIOLATION,
                fit_reason(
                    f"cannot publish to {_quote(topic)}: raw frames go to the first ?topic=, "
                    "which must have no wildcard"
                ),
            )
    if not any(matches(pattern, topic) for pattern in allowed):
        setting = "controls it" if allowed else "is empty"
        why = f"publishing to {_quote(topic)} is not allowed: the server's --ws-inbound setting"
        return Refuse(CloseCode.POLICY_VIOLATION, fit_reason(f"{why} {setting}"))
    return Publish(topic, payload)


def refuse_topic_error(exc: TopicError) -> Refuse:
    """The refusal for a frame whose topic the bus rejected."""
    return Refuse(CloseCode.POLICY_VIOLATION, fit_reason(f"topic refused: {exc}"))


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
