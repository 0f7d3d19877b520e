"""The HTTP guest interface as pure functions: request bytes in, typed response out.

Two modes, chosen by what the module exports (``handle_http`` wins when both are):

- compat (``handle``, the reference's): the request is the text
  ``"METHOD\\nPATH\\n"``; the answer is NUL-terminated text (the guest side reads
  it, at most 64 KiB), served as ``200 text/plain; charset=utf-8``.
- full (``handle_http``): the request is a CBOR map (`encode_full_request`), the
  answer a CBOR map checked by `parse_response`.

A middleware in full mode answers like a route, or passes the request on with
``{"next": true, "headers": {...}}``: those headers replace any of the same name
in the request the next module sees. Returning 0 passes it on unchanged (and is
the only way to pass it on in compat mode). The schemas are in ``docs/http.md``.
"""

from __future__ import annotations

import enum
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import cbor2

from tinywasm_wasi.exceptions import TinywasmError

__all__ = [
    "TEXT_PLAIN",
    "HttpMode",
    "HttpRequest",
    "HttpResponse",
    "PassOn",
    "ResponseError",
    "compat_response",
    "encode_compat_request",
    "encode_full_request",
    "http_mode",
    "join_headers",
    "not_text",
    "parse_response",
    "text_problem",
]

TEXT_PLAIN = "text/plain; charset=utf-8"
BINARY_CONTENT_TYPE = "application/octet-stream"
RESPONSE_KEYS = ("status", "headers", "body", "next")
# Set by the server from the body it sends; a module may not set them.
SERVER_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class HttpMode(enum.Enum):
    """How a module answers HTTP; the value is the export that is called."""

    COMPAT = "handle"
    FULL = "handle_http"


def http_mode(exports: Iterable[str]) -> HttpMode | None:
    """The mode a module with these exports answers in, or None if it has no HTTP export."""
    names = set(exports)
    if HttpMode.FULL.value in names:
        return HttpMode.FULL
    if HttpMode.COMPAT.value in names:
        return HttpMode.COMPAT
    return None


class ResponseError(TinywasmError, ValueError):
    """A module's full-mode response is malformed; the message says which rule it broke."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request to `/m/<route>[/...]` as modules see it."""

    method: str  # upper case, e.g. "GET"
    path: str  # the whole path as sent, percent-encoding kept: "/m/echo/a%20b"
    route: str  # the target module: "echo"
    query: str = ""  # as sent, without "?": "a=1&b=2"
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    def with_headers(self, added: Mapping[str, str]) -> HttpRequest:
        """This request with `added` headers, replacing any of the same name."""
        return replace(self, headers={**self.headers, **added})


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An answer to send: status, header pairs (a name may repeat) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class PassOn:
    """A middleware's ``{"next": true}``: continue the chain with these headers set."""

    headers: Mapping[str, str]


def join_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header pairs as one map: lower-case names, repeats joined by ", " ("; " for cookie)."""
    joined: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key in joined:
            joined[key] += ("; " if key == "cookie" else ", ") + value
        else:
            joined[key] = value
    return joined


_SURROGATE = re.compile("[\ud800-\udfff]")


def not_text(request: HttpRequest) -> str | None:
    """Which part of `request` is not UTF-8 text, or None when all of it is.

    aiohttp keeps header bytes that are not UTF-8 as lone surrogates
    (``surrogateescape``); modules get the method, path, query and headers as CBOR
    text strings, which must be UTF-8, so such a request is answered 400 with
    this reason before any module sees it.
    """
    return text_problem(request.method, request.path, request.query, request.headers.items())


def text_problem(
    method: str, path: str, query: str, headers: Iterable[tuple[str, str]]
) -> str | None:
    """`not_text` of a request given by its parts (header pairs, a name may repeat)."""
    for part, text in (("method", method), ("path", path), ("query", query)):
        if _SURROGATE.search(text):
            return f"the request's {part} is not UTF-8"
    for name, value in headers:
        if _SURROGATE.search(name):
            return "a header name is not UTF-8"
        if _SURROGATE.search(value):
            shown = _SURROGATE.sub("?", name)
            return (
                f"the value of the {shown} header is not UTF-8 text: "
                "modules receive headers as text, so send them UTF-8 encoded"
            )
    return None


def encode_compat_request(request: HttpRequest) -> bytes:
    """The reference's request text, ``"METHOD\\nPATH\\n"`` (no query, headers or body)."""
    return f"{request.method}\n{request.path}\n".encode()


def encode_full_request(request: HttpRequest) -> bytes:
    """The full-mode request: a CBOR map {method, path, route, query, headers, body}."""
    return bytes(
        cbor2.dumps(
            {
                "method": request.method,
                "path": request.path,
                "route": request.route,
                "query": request.query,
                "headers": dict(request.headers),
                "body": bytes(request.body),
            }
        )
    )


def compat_response(body: bytes) -> HttpResponse:
    """A compat-mode answer: the text the module returned, as ``200 text/plain``."""
    return HttpResponse(200, (("content-type", TEXT_PLAIN),), body)


def parse_response(data: bytes, *, max_body: int, middleware: bool) -> HttpResponse | PassOn:
    """Check a full-mode response and type it.

    Args:
        data: the bytes `handle_http` pointed at.
        max_body: the largest body allowed (``Config.http_max_body``).
        middleware: whether the module may pass the request on (``next``).

    Raises:
        ResponseError: not exactly one CBOR map, an unknown key, a wrong type, a
            status outside 200-599, an invalid or server-managed header, or a body
            over `max_body`.
    """
    obj = _decode_map(data)
    unknown = [k for k in obj if k not in RESPONSE_KEYS]
    if unknown:
        raise ResponseError(
            f"unknown key {unknown[0]!r} in the response map: "
            f"the keys are {', '.join(RESPONSE_KEYS)}"
        )
    passes = obj.get("next", False)
    if not isinstance(passes, bool):
        raise ResponseError("'next' must be true or false")
    if passes:
        if not middleware:
            raise ResponseError(
                "only a middleware can pass a request on with 'next': a route "
                "must answer with a 'status'"
            )
        if "status" in obj or "body" in obj:
            raise ResponseError(
                "a response with 'next': true passes the request on, so it cannot "
                "have a 'status' or 'body' too"
            )
        pairs = _headers(obj.get("headers", {}), allow_lists=False)
        return PassOn(dict(pairs))

    status = obj.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        got = "none" if status is None else repr(status)
        raise ResponseError(f"'status' must be an integer from 200 to 599, got {got}")
    headers = _headers(obj.get("headers", {}), allow_lists=True)
    body = obj.get("body", b"")
    is_text = isinstance(body, str)
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if not isinstance(body, bytes):
        raise ResponseError(f"'body' must be a byte string or text, got {type(body).__name__}")
    if len(body) > max_body:
        raise ResponseError(
            f"the body is {len(body)} bytes, over the {max_body} byte limit (--http-max-body)"
        )
    if body and status in (204, 304):
        raise ResponseError(f"status {status} cannot have a body")
    if body and not any(name == "content-type" for name, _ in headers):
        kind = TEXT_PLAIN if is_text else BINARY_CONTENT_TYPE
        headers.append(("content-type", kind))
    return HttpResponse(status, tuple(headers), body)


def _decode_map(data: bytes) -> dict[Any, Any]:
    stream = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types for bad input
        raise ResponseError(f"not valid CBOR: {exc}") from None
    if not isinstance(obj, dict):
        raise ResponseError(f"expected a CBOR map, got {type(obj).__name__}")
    extra = len(data) - stream.tell()
    if extra:
        raise ResponseError(
            f"{extra} extra byte(s) after the CBOR map: return its exact length in the low 32 bits"
        )
    return obj


def _headers(value: object, *, allow_lists: bool) -> list[tuple[str, str]]:
    """Validate a headers map; values are text (or, in a response, a list of texts)."""
    if not isinstance(value, dict):
        raise ResponseError(f"'headers' must be a map, got {type(value).__name__}")
    pairs: list[tuple[str, str]] = []
    for name, values in value.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ResponseError(f"header name {name!r} is not a valid HTTP token")
        key = name.lower()
        if key in SERVER_HEADERS:
            raise ResponseError(f"header {name!r} is set by the server: leave it out")
        items = values if allow_lists and isinstance(values, list) else [values]
        for item in items:
            if not isinstance(item, str):
                want = "text or a list of texts" if allow_lists else "text"
                raise ResponseError(f"header {name!r} must be {want}")
            if _BAD_VALUE.search(item):
                raise ResponseError(f"header {name!r} has a control character in its value")
            pairs.append((key, item))
    return pairs
