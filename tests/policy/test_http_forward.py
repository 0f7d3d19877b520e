"""Forwarded HTTP requests and answers: round trips and refusals, as tables."""

from __future__ import annotations

import cbor2
import pytest

from tinywasm_wasi.policy.http_forward import (
    Forwarded,
    ForwardedAnswer,
    ForwardError,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    subject_for,
)


@pytest.mark.parametrize(
    "request_",
    [
        Forwarded("echo", "GET", "/m/echo", "", (), b""),
        Forwarded("api", "POST", "/m/api/x%20y", "a=1&a=2", (("X-A", "1"), ("X-A", "2")), b"\0\1"),
    ],
)
def test_requests_round_trip(request_: Forwarded) -> None:
    assert decode_request(encode_request(request_)) == request_


@pytest.mark.parametrize(
    "answer",
    [
        ForwardedAnswer(200, (("Content-Type", "text/plain"),), b"hi"),
        ForwardedAnswer(503, (), b"busy\n", retry_after=1),
        ForwardedAnswer(204, (), b""),
    ],
)
def test_answers_round_trip(answer: ForwardedAnswer) -> None:
    assert decode_answer(encode_answer(answer)) == answer


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not CBOR"),
        (cbor2.dumps([1]), "must be a CBOR map"),
        (cbor2.dumps({"name": "x"}), "needs text name"),
        (
            cbor2.dumps(
                {
                    "name": "x",
                    "method": "GET",
                    "path": "/",
                    "query": "",
                    "body": b"",
                    "headers": [1],
                }
            ),
            "headers must be a list",
        ),
    ],
)
def test_bad_requests_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ForwardError, match=message):
        decode_request(data)


@pytest.mark.parametrize(
    "fields",
    [
        {"status": 99, "body": b"", "headers": []},
        {"status": True, "body": b"", "headers": []},
        {"status": 200, "body": "text", "headers": []},
        {"status": 200, "body": b"", "headers": [], "retry_after": "1"},
    ],
)
def test_bad_answers_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ForwardError, match="needs a status"):
        decode_answer(cbor2.dumps(fields))


def test_each_worker_has_its_subject() -> None:
    assert subject_for("w1") == "tw.http.w1"
