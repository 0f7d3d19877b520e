"""A small publish/subscribe bus with NATS-style wildcards. Knows nothing of WebAssembly."""

from bus.exceptions import BusClosedError, BusError, MessageError, TopicError
from bus.local import Bus, BusStats, Handler, Subscription
from bus.message import Message, decode_message, encode_message
from bus.topics import MAX_TOPIC_BYTES, TopicIndex, matches, validate_pattern, validate_topic

__all__ = [
    "MAX_TOPIC_BYTES",
    "Bus",
    "BusClosedError",
    "BusError",
    "BusStats",
    "Handler",
    "Message",
    "MessageError",
    "Subscription",
    "TopicError",
    "TopicIndex",
    "decode_message",
    "encode_message",
    "matches",
    "validate_pattern",
    "validate_topic",
]
