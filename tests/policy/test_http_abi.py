"""The HTTP guest interface (tinywasm_wasi.policy.http_abi): request encoding, response checking."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from tinywasm_wasi.policy.http_abi import (
    TEXT_PLAIN,
    HttpMode,
    HttpRequest,
    HttpResponse,
    PassOn,
    ResponseError,
    compat_response,
    encode_compat_request,
    encode_full_request,
    http_mode,
    join_headers,
    not_text,
    parse_response,
    text_problem,
)

REQUEST = HttpRequest(
    method="POST",
    path="/m/echo_http/a%20b",
    route="echo_http",
    query="x=1&y=%C3%A9",
    headers={"authorization": "Bearer t", "x-n": "1, 2"},
    body=b"\x00hi",
)


def parse(obj: Any, *, max_body: int = 1024, middleware: bool = False) -> HttpResponse | PassOn:
    return parse_response(cbor2.dumps(obj), max_body=max_body, middleware=middleware)


@pytest.mark.parametrize(
    ("exports", "mode"),
    [
        (["memory", "handle"], HttpMode.COMPAT),
        (["handle_http"], HttpMode.FULL),
        (["handle", "handle_http"], HttpMode.FULL),
        (["memory", "on_message"], None),
    ],
)
def test_mode_follows_the_exports(exports: list[str], mode: HttpMode | None) -> None:
    assert http_mode(exports) is mode


BAD = "caf\udce9"  # aiohttp's surrogateescape of a byte that is not UTF-8


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "problem"),
    [
        ("GET", "/m/e", "", [("host", "x")], None),
        ("GET", "/m/é", "a=é", [("x-name", "é")], None),
        (BAD, "/m/e", "", [], "the request's method is not UTF-8"),
        ("GET", "/m/" + BAD, "", [], "the request's path is not UTF-8"),
        ("GET", "/m/e", BAD, [], "the request's query is not UTF-8"),
        ("GET", "/m/e", "", [(BAD, "1")], "a header name is not UTF-8"),
        (
            "GET",
            "/m/e",
            "",
            [("x-a", "1"), ("x-a", BAD)],  # a repeated name: every value is looked at
            "the value of the x-a header is not UTF-8 text: "
            "modules receive headers as text, so send them UTF-8 encoded",
        ),
    ],
)
def test_text_problem_names_the_part_that_is_not_utf8(
    method: str, path: str, query: str, headers: list[tuple[str, str]], problem: str | None
) -> None:
    assert text_problem(method, path, query, headers) == problem
    request = HttpRequest(method, path, "e", query, dict(headers))
    assert not_text(request) == problem


def test_compat_request_is_the_references_text() -> None:
    assert encode_compat_request(REQUEST) == b"POST\n/m/echo_http/a%20b\n"


def test_full_request_is_a_cbor_map_of_the_documented_fields() -> None:
    assert cbor2.loads(encode_full_request(REQUEST)) == {
        "method": "POST",
        "path": "/m/echo_http/a%20b",
        "route": "echo_http",
        "query": "x=1&y=%C3%A9",
        "headers": {"authorization": "Bearer t", "x-n": "1, 2"},
        "body": b"\x00hi",
    }


def test_join_headers_lower_cases_and_joins_repeats() -> None:
    pairs = [("X-A", "1"), ("Cookie", "a=1"), ("x-a", "2"), ("COOKIE", "b=2"), ("Host", "h")]
    assert join_headers(pairs) == {"x-a": "1, 2", "cookie": "a=1; b=2", "host": "h"}


def test_with_headers_replaces_same_names_and_keeps_the_rest() -> None:
    passed = REQUEST.with_headers({"x-n": "mine", "x-tag": "t"})
    assert passed.headers == {"authorization": "Bearer t", "x-n": "mine", "x-tag": "t"}
    assert REQUEST.headers["x-n"] == "1, 2"  # the original is unchanged


def test_compat_response_is_plain_text_200() -> None:
    assert compat_response(b"hello") == HttpResponse(200, (("content-type", TEXT_PLAIN),), b"hello")


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"status": 204}, HttpResponse(204, (), b"")),
        (
            {"status": 200, "body": "héllo"},
            HttpResponse(200, (("content-type", TEXT_PLAIN),), "héllo".encode()),
        ),
        (
            {"status": 201, "body": b"\x01"},
            HttpResponse(201, (("content-type", "application/octet-stream"),), b"\x01"),
        ),
        (
            {"status": 401, "headers": {"WWW-Authenticate": "Bearer", "Content-Type": "a/b"}},
            HttpResponse(401, (("www-authenticate", "Bearer"), ("content-type", "a/b")), b""),
        ),
        (
            {"status": 200, "headers": {"set-cookie": ["a=1", "b=2"]}, "body": b"", "next": False},
            HttpResponse(200, (("set-cookie", "a=1"), ("set-cookie", "b=2")), b""),
        ),
        (
            {"status": 599, "body": b"x" * 1024},
            HttpResponse(599, (("content-type", "application/octet-stream"),), b"x" * 1024),
        ),
    ],
)
def test_valid_responses(obj: Any, expected: HttpResponse) -> None:
    assert parse(obj) == expected
    assert parse(obj, middleware=True) == expected


def test_a_middleware_passes_the_request_on_with_headers() -> None:
    assert parse({"next": True, "headers": {"X-Tag": "t"}}, middleware=True) == PassOn(
        {"x-tag": "t"}
    )
    assert parse({"next": True}, middleware=True) == PassOn({})


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "not valid CBOR"),
        (b"\xff\x00", "not valid CBOR"),
        (cbor2.dumps([200]), "expected a CBOR map, got list"),
        (cbor2.dumps({"status": 200}) + b"\x00", "1 extra byte(s) after the CBOR map"),
        (cbor2.dumps({"status": 200, "stauts": 1}), "unknown key 'stauts'"),
        (cbor2.dumps({1: 200}), "unknown key 1"),
        (cbor2.dumps({}), "'status' must be an integer from 200 to 599, got none"),
        (cbor2.dumps({"status": "200"}), "got '200'"),
        (cbor2.dumps({"status": True}), "got True"),
        (cbor2.dumps({"status": 199}), "got 199"),
        (cbor2.dumps({"status": 600}), "got 600"),
        (cbor2.dumps({"status": 200, "body": 5}), "'body' must be a byte string or text, got int"),
        (cbor2.dumps({"status": 200, "body": b"x" * 1025}), "1025 bytes, over the 1024 byte"),
        (cbor2.dumps({"status": 204, "body": b"x"}), "status 204 cannot have a body"),
        (cbor2.dumps({"status": 200, "headers": []}), "'headers' must be a map, got list"),
        (cbor2.dumps({"status": 200, "headers": {"a b": "1"}}), "not a valid HTTP token"),
        (cbor2.dumps({"status": 200, "headers": {"x": 1}}), "must be text or a list of texts"),
        (cbor2.dumps({"status": 200, "headers": {"x": ["a", 1]}}), "must be text or a list"),
        (cbor2.dumps({"status": 200, "headers": {"x": "a\r\nb: c"}}), "control character"),
        (cbor2.dumps({"status": 200, "headers": {"Content-Length": "3"}}), "set by the server"),
        (cbor2.dumps({"status": 200, "next": 1}), "'next' must be true or false"),
        (cbor2.dumps({"next": True}), "only a middleware can pass a request on"),
    ],
)
def test_malformed_responses_say_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(ResponseError) as info:
        parse_response(data, max_body=1024, middleware=False)
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("obj", "says"),
    [
        ({"next": True, "status": 200}, "cannot have a 'status' or 'body' too"),
        ({"next": True, "body": b""}, "cannot have a 'status' or 'body' too"),
        ({"next": True, "headers": {"x": ["a", "b"]}}, "header 'x' must be text"),
        ({"next": True, "headers": {"transfer-encoding": "chunked"}}, "set by the server"),
    ],
)
def test_malformed_pass_on_says_what_is_wrong(obj: Any, says: str) -> None:
    with pytest.raises(ResponseError) as info:
        parse(obj, middleware=True)
    assert says in str(info.value)
