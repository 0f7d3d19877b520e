"""Connection tokens (tinywasm_wasi.policy.tokens): every token case, as a table."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tinywasm_wasi.policy.grants import TopicGrants
from tinywasm_wasi.policy.tokens import (
    PROTOCOL,
    Claims,
    TokenError,
    TokenProblem,
    TokenVerifier,
    token_from_protocols,
)

SECRET = "s" * 32
OTHER_SECRET = "o" * 32
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


GRANTS = {"sub": ["chat", "rooms.>"], "pub": ["chat"]}
SOON = int(time.time()) + 3600
CLAIMS = {"sub": "ann", "exp": SOON, "grants": GRANTS}
EXPECTED = Claims(
    sub="ann",
    exp=float(SOON),
    grants=TopicGrants(publish=("chat",), subscribe=("chat", "rooms.>"), broadcast=()),
)
HS = TokenVerifier(secret=SECRET)
RS = TokenVerifier(public_key=pem(RSA_KEY))
ED = TokenVerifier(public_key=pem(ED_KEY))


def unsigned(claims: dict[str, object]) -> str:
    """A token with alg none (PyJWT refuses to verify these; we refuse them earlier)."""

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize(
    ("verifier", "token"),
    [
        (HS, jwt.encode(CLAIMS, SECRET, algorithm="HS256")),
        (RS, jwt.encode(CLAIMS, RSA_KEY, algorithm="RS256")),
        (ED, jwt.encode(CLAIMS, ED_KEY, algorithm="EdDSA")),
    ],
    ids=["HS256", "RS256", "EdDSA"],
)
def test_valid_tokens_give_their_claims(verifier: TokenVerifier, token: str) -> None:
    assert verifier.verify(token) == EXPECTED


def test_no_exp_never_expires_and_no_grants_grant_nothing() -> None:
    claims = HS.verify(jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256"))
    assert claims == Claims(sub="bob", exp=None, grants=TopicGrants((), (), ()))


@pytest.mark.parametrize(
    ("verifier", "token", "problem", "text"),
    [
        (HS, None, TokenProblem.MISSING, "missing token: connect with ?token=<JWT>"),
        (HS, "", TokenProblem.MISSING, "missing token"),
        (HS, "not-a-jwt", TokenProblem.MALFORMED, "malformed token"),
        (HS, jwt.encode({**CLAIMS, "exp": 1000}, SECRET, algorithm="HS256"),
         TokenProblem.EXPIRED, "token expired: get a new one and reconnect"),
        (HS, jwt.encode(CLAIMS, OTHER_SECRET, algorithm="HS256"),
         TokenProblem.BAD_SIGNATURE, "bad token signature"),
        (RS, jwt.encode(CLAIMS, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                        algorithm="RS256"),
         TokenProblem.BAD_SIGNATURE, "bad token signature"),
        (HS, jwt.encode(CLAIMS, SECRET * 2, algorithm="HS512"),
         TokenProblem.ALGORITHM, "token algorithm 'HS512' refused: this server accepts HS256 only"),
        (HS, jwt.encode(CLAIMS, RSA_KEY, algorithm="RS256"),
         TokenProblem.ALGORITHM, "token algorithm 'RS256' refused"),
        # The classic confusion: an HS256 token signed with the public key's PEM text.
        (RS, jwt.encode(CLAIMS, "x" * 40, algorithm="HS256"),
         TokenProblem.ALGORITHM, "token algorithm 'HS256' refused: this server accepts RS256 only"),
        (HS, unsigned(CLAIMS), TokenProblem.ALGORITHM, "token algorithm 'none' refused"),
        (ED, unsigned(CLAIMS), TokenProblem.ALGORITHM, "token algorithm 'none' refused"),
        (HS, jwt.encode({"exp": SOON}, SECRET, algorithm="HS256"),
         TokenProblem.CLAIMS, "token refused: Token is missing the \"sub\" claim"),
        (HS, jwt.encode({"sub": ""}, SECRET, algorithm="HS256"),
         TokenProblem.CLAIMS, "token refused: 'sub' must be non-empty text"),
        (HS, jwt.encode({"sub": "a", "grants": ["chat"]}, SECRET, algorithm="HS256"),
         TokenProblem.CLAIMS, "token refused: 'grants' must be an object"),
        (HS, jwt.encode({"sub": "a", "grants": {"sub": "chat"}}, SECRET, algorithm="HS256"),
         TokenProblem.CLAIMS, "token refused: token grants 'sub': expected a list of topic patterns"),
        (HS, jwt.encode({"sub": "a", "grants": {"pub": ["a..b"]}}, SECRET, algorithm="HS256"),
         TokenProblem.CLAIMS, "token refused: token grants 'pub': pattern 'a..b' has an empty token"),
        (HS, jwt.encode({"sub": "a", "exp": "soon"}, SECRET, algorithm="HS256"),
         TokenProblem.MALFORMED, "token refused: Expiration Time claim (exp) must be"),
        (HS, jwt.encode({"sub": "a", "nbf": SOON}, SECRET, algorithm="HS256"),
         TokenProblem.MALFORMED, "token refused: The token is not yet valid"),
    ],
)  # fmt: skip
def test_refused_tokens_say_why(
    verifier: TokenVerifier, token: str | None, problem: TokenProblem, text: str
) -> None:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    assert caught.value.problem is problem
    assert str(caught.value).startswith(text), str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({}, "give exactly one of"),
        ({"secret": SECRET, "public_key": pem(ED_KEY)}, "give exactly one of"),
        ({"secret": "short"}, "the auth secret is too short: use at least 32 bytes"),
        ({"public_key": "not pem"}, "the auth public key is not a PEM public key"),
        ({"public_key": pem(EC_KEY)}, "the auth public key is a"),
    ],
)
def test_verifier_settings_are_checked(kwargs: dict[str, str], text: str) -> None:
    with pytest.raises(ValueError) as caught:
        TokenVerifier(**kwargs)
    assert str(caught.value).startswith(text)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        (f"{PROTOCOL}, abc.def.ghi", "abc.def.ghi"),
        (f"abc.def.ghi,{PROTOCOL}", "abc.def.ghi"),
        ("abc.def.ghi", None),  # our protocol not offered: not a token
        (PROTOCOL, None),
        (f"{PROTOCOL}, a, b", None),  # which one? none
    ],
)
def test_token_from_protocols(header: str | None, expected: str | None) -> None:
    assert token_from_protocols(header) == expected
