"""An HTTP request forwarded to the worker that owns the module, and its answer. Pure.

Both are CBOR maps. The request carries what the owner needs to run the same
dispatch as a local request: the route name, method, raw path and query, the
headers (in order, repeats kept) and the body. The answer carries the status,
headers and body, or the short reason of a failure with its Retry-After.
"""

from __future__ import annotations

from dataclasses import dataclass

import cbor2

from tinywasm_wasi.exceptions import TinywasmError

__all__ = [
    "ForwardError",
    "Forwarded",
    "ForwardedAnswer",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "subject_for",
]

SUBJECT_PREFIX = "tw.http."


class ForwardError(TinywasmError, ValueError):
    """Bytes that should hold a forwarded request or answer do not."""


def subject_for(worker: str) -> str:
    """The NATS subject a worker answers forwarded requests on."""
    return SUBJECT_PREFIX + worker


@dataclass(frozen=True, slots=True)
class Forwarded:
    name: str
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class ForwardedAnswer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    retry_after: int | None = None


def encode_request(request: Forwarded) -> bytes:
    return bytes(
        cbor2.dumps(
            {
                "name": request.name,
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "headers": [list(h) for h in request.headers],
                "body": request.body,
            }
        )
    )


def _pairs(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    ):
        raise ForwardError("headers must be a list of [name, value] text pairs")
    return tuple((p[0], p[1]) for p in value)


def _map(data: bytes, what: str) -> dict[str, object]:
    try:
        value = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise ForwardError(f"a forwarded {what} is not CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise ForwardError(f"a forwarded {what} must be a CBOR map")
    return value


def decode_request(data: bytes) -> Forwarded:
    """Raises ForwardError for bytes that are not a forwarded request."""
    m = _map(data, "request")
    texts = [m.get(k) for k in ("name", "method", "path", "query")]
    if not all(isinstance(t, str) for t in texts) or not isinstance(m.get("body"), bytes):
        raise ForwardError("a forwarded request needs text name, method, path, query and a body")
    name, method, path, query = (str(t) for t in texts)
    body = m["body"]
    assert isinstance(body, bytes)
    return Forwarded(name, method, path, query, _pairs(m.get("headers")), body)


def encode_answer(answer: ForwardedAnswer) -> bytes:
    return bytes(
        cbor2.dumps(
            {
                "status": answer.status,
                "headers": [list(h) for h in answer.headers],
                "body": answer.body,
                "retry_after": answer.retry_after,
            }
        )
    )


def decode_answer(data: bytes) -> ForwardedAnswer:
    """Raises ForwardError for bytes that are not a forwarded answer."""
    m = _map(data, "answer")
    status, body, retry = m.get("status"), m.get("body"), m.get("retry_after")
    if (
        not isinstance(status, int)
        or isinstance(status, bool)
        or not 100 <= status <= 599
        or not isinstance(body, bytes)
        or not (retry is None or (isinstance(retry, int) and not isinstance(retry, bool)))
    ):
        raise ForwardError("a forwarded answer needs a status 100-599, a body and a retry_after")
    return ForwardedAnswer(status, _pairs(m.get("headers")), body, retry)
