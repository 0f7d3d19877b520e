"""Connection tokens for ``/ws``: verifying a JWT and reading its topic grants.

Pure: text in, `Claims` or a `TokenError` out. Signatures are PyJWT's: this file
only chooses the accepted algorithm from the configured key, refuses the rest,
and turns PyJWT's errors into reasons a client can act on.

A token carries ``sub`` (who connects, required), ``exp`` (optional: without it
the token never expires) and ``grants``: ``{"sub": [patterns], "pub": [patterns]}``
with the bus's wildcards. A missing ``grants`` claim, or a missing list, grants
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tinywasm_wasi.policy.grants import TopicGrants, parse_patterns

__all__ = [
    "PROTOCOL",
    "Claims",
    "TokenError",
    "TokenProblem",
    "TokenVerifier",
    "token_from_protocols",
]

# The subprotocol a client offers beside its token in Sec-WebSocket-Protocol (browsers
# cannot set other headers); the server answers with it.
PROTOCOL = "tinywasm.jwt"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash


class TokenProblem(StrEnum):
    """Why a token was refused."""

    MISSING = "missing"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad signature"
    ALGORITHM = "algorithm"
    CLAIMS = "claims"


class TokenError(ValueError):
    """A token was refused; `problem` says which way, the text says what to do (401 body)."""

    def __init__(self, problem: TokenProblem, text: str) -> None:
        super().__init__(text)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says: who, until when (epoch seconds, None: no end), may do what."""

    sub: str
    exp: float | None
    grants: TopicGrants


class TokenVerifier:
    """Verifies tokens with one key: an HS256 secret, or an RSA (RS256) or Ed25519 (EdDSA) key."""

    def __init__(self, *, secret: str | None = None, public_key: str | None = None) -> None:
        """Raises ValueError: neither or both given, a short secret, or an unusable key."""
        if (secret is None) == (public_key is None):
            raise ValueError("give exactly one of an auth secret (HS256) or a public key")
        self._key: str | RSAPublicKey | Ed25519PublicKey
        if secret is not None:
            if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"the auth secret is too short: use at least {MIN_SECRET_BYTES} bytes, "
                    "e.g. the output of: python -c 'import secrets; print(secrets.token_hex(32))'"
                )
            self._key, self.algorithm = secret, "HS256"
            return
        assert public_key is not None
        try:
            key = load_pem_public_key(public_key.encode("utf-8"))
        except ValueError as exc:
            raise ValueError(f"the auth public key is not a PEM public key: {exc}") from None
        if isinstance(key, RSAPublicKey):
            self._key, self.algorithm = key, "RS256"
        elif isinstance(key, Ed25519PublicKey):
            self._key, self.algorithm = key, "EdDSA"
        else:
            raise ValueError(
                f"the auth public key is a {type(key).__name__}: use an RSA key (RS256) "
                "or an Ed25519 key (EdDSA)"
            )

    def verify(self, token: str | None) -> Claims:
        """The claims of a valid token.

        Raises:
            TokenError: no token, not a JWT, another algorithm (``none`` included), a bad
                signature, expired, or claims that are missing or malformed.
        """
        if not token:
            raise TokenError(
                TokenProblem.MISSING,
                "missing token: connect with ?token=<JWT> or offer the subprotocols "
                f"{PROTOCOL!r} and the token in Sec-WebSocket-Protocol",
            )
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.DecodeError as exc:
            raise TokenError(TokenProblem.MALFORMED, f"malformed token: {exc}") from None
        if alg != self.algorithm:
            raise TokenError(
                TokenProblem.ALGORITHM,
                f"token algorithm {alg!r} refused: this server accepts {self.algorithm} only",
            )
        try:
            data = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                options={"require": ["sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError(
                TokenProblem.EXPIRED, "token expired: get a new one and reconnect"
            ) from None
        except jwt.InvalidSignatureError:
            raise TokenError(
                TokenProblem.BAD_SIGNATURE, "bad token signature: it was not signed with our key"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(TokenProblem.CLAIMS, f"token refused: {exc}") from None
        except jwt.InvalidTokenError as exc:  # bad exp/nbf/iat, not-yet-valid, bad encoding
            raise TokenError(TokenProblem.MALFORMED, f"token refused: {exc}") from None
        return _claims(data)


def _claims(data: dict[str, object]) -> Claims:
    sub = data["sub"]
    if not isinstance(sub, str) or not sub:
        raise TokenError(TokenProblem.CLAIMS, "token refused: 'sub' must be non-empty text")
    exp = data.get("exp")
    grants = data.get("grants", {})
    if not isinstance(grants, dict):
        raise TokenError(
            TokenProblem.CLAIMS,
            'token refused: \'grants\' must be an object, e.g. {"sub": ["chat"], "pub": ["chat"]}',
        )
    try:
        subscribe = parse_patterns(grants.get("sub", []), "token grants 'sub'")
        publish = parse_patterns(grants.get("pub", []), "token grants 'pub'")
    except ValueError as exc:
        raise TokenError(TokenProblem.CLAIMS, f"token refused: {exc}") from None
    return Claims(
        sub=sub,
        exp=float(exp) if isinstance(exp, int | float) else None,
        grants=TopicGrants(publish=publish, subscribe=subscribe, broadcast=()),
    )


def token_from_protocols(header: str | None) -> str | None:
    """The token a client offered in Sec-WebSocket-Protocol beside `PROTOCOL`, if any."""
    if not header:
        return None
    offered = [p.strip() for p in header.split(",")]
    if PROTOCOL not in offered:
        return None
    others = [p for p in offered if p and p != PROTOCOL]
    return others[0] if len(others) == 1 else None
