"""JWT verification with the reference server's rules, codes and messages.

HS256/384/512 use the configured secret (or an ``oct`` JWK with the token's ``kid``);
RS*, ES* and EdDSA need a ``kid`` that names a key of the right type in the JWKS.
``role`` and ``exp`` are required claims. Pure: no I/O beyond reading the JWKS file once.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt
from jwt.algorithms import get_default_algorithms

HS_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RS_ALGORITHMS = frozenset({"RS256", "RS384", "RS512"})
ES_ALGORITHMS = frozenset({"ES256", "ES384", "ES512"})
# "EdDSA" is the registered JOSE name; the reference server also accepts the curve names.
ED_ALGORITHMS = frozenset({"EdDSA", "Ed25519", "Ed448"})
_KTY_FOR = {**dict.fromkeys(RS_ALGORITHMS, "RSA"), **dict.fromkeys(ES_ALGORITHMS, "EC")}
_KTY_FOR.update(dict.fromkeys(ED_ALGORITHMS, "OKP"))


class AuthError(Exception):
    """A refused token: ``code`` is the reference server's error code, ``message`` its text."""

    def __init__(self, code: str, message: str, http_message: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        #: What the WebSocket handshake answers (HTTP 401 ``{"error": ...}``); a few differ from joins.
        self.http_message = http_message or message

    @property
    def reason(self) -> str:
        """The join error reason: ``<Code>: <message>``."""
        return f"{self.code}: {self.message}"


def missing_key() -> AuthError:
    return AuthError("MissingApiKey", "API key is missing")


def malformed() -> AuthError:
    return AuthError("MalformedJWT", "The token provided is not a valid JWT")


def bad_signature() -> AuthError:
    return AuthError("JwtSignatureError", "Failed to validate JWT signature")


def signer_error(kid: str | None = None) -> AuthError:
    if kid is None:
        text = "Failed to generate JWT signer, check your JWT secret or JWKS configuration"
    else:
        text = (
            f'Failed to generate JWT signer for key ID (kid) "{kid}", '
            "check your JWT secret or JWKS configuration"
        )
    return AuthError("JwtSignerError", text)


def missing_claims() -> AuthError:
    return AuthError("InvalidJWTToken", "Fields `role` and `exp` are required in JWT")


def role_not_allowed() -> AuthError:
    return AuthError("InvalidJWTToken", "The role in the token is not allowed", "Unauthorized")


def expired(seconds_ago: int) -> AuthError:
    return AuthError("InvalidJWTToken", f"Token has expired {seconds_ago} seconds ago", "Token has expired")


@dataclass(frozen=True)
class Verifier:
    """Verifies tokens against one secret and an optional JWKS."""

    secret: str | None = None
    jwks: dict[str, Any] = field(default_factory=dict)
    #: Exact-match claim validators (the reference server's JWT_CLAIM_VALIDATORS), e.g. {"iss": "..."}.
    claim_validators: dict[str, Any] = field(default_factory=dict)
    #: The roles a token may name (None: any). ``none`` would make the sidecar switch to itself.
    allowed_roles: frozenset[str] | None = None
    #: Leeway for ``nbf`` / ``iat`` in the future, in seconds (clock skew between issuer and us).
    leeway: int = 0

    @classmethod
    def from_config(
        cls,
        secret: str | None,
        jwks: str | None,
        claim_validators: dict[str, Any] | None = None,
        allowed_roles: frozenset[str] | None = None,
    ) -> Verifier:
        return cls(
            secret=secret or None,
            jwks=load_jwks(jwks),
            claim_validators=claim_validators or {},
            allowed_roles=allowed_roles,
        )

    def verify(self, raw_token: str | None, now: float | None = None) -> dict[str, Any]:
        """The token's claims, or :class:`AuthError` with the reference server's code and text."""
        if raw_token is None:
            raise missing_key()
        # The reference server URI-decodes the token and strips whitespace before parsing.
        token = unquote(raw_token).strip()
        if not token:
            raise missing_key()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise malformed() from None
        if not isinstance(header, dict) or not isinstance(unverified, dict):
            raise malformed()
        alg = header.get("alg")
        key = self._key_for(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[str(alg)],
                leeway=self.leeway,
                # exp is checked below with the reference server's message; required claims too.
                options={"verify_exp": False, "verify_aud": False, "verify_iss": False, "require": []},
            )
        except jwt.InvalidSignatureError:
            raise bad_signature() from None
        except jwt.ImmatureSignatureError:
            raise AuthError("InvalidJWTToken", "Token is not valid yet") from None
        except jwt.InvalidKeyError:
            raise signer_error(header.get("kid") if isinstance(header.get("kid"), str) else None) from None
        except jwt.PyJWTError:
            raise malformed() from None
        return self._validate_claims(claims, time.time() if now is None else now)

    def _key_for(self, header: dict[str, Any]) -> Any:
        alg = header.get("alg")
        kid = header.get("kid")
        keys = self.jwks.get("keys") or []
        if not isinstance(alg, str):
            raise signer_error()
        if alg in HS_ALGORITHMS:
            if isinstance(kid, str):
                for jwk in keys:
                    if jwk.get("kty") == "oct" and jwk.get("kid") == kid:
                        return _jwk_key(jwk, alg)
            if not self.secret:
                raise signer_error()
            return self.secret
        kty = _KTY_FOR.get(alg)
        if kty is None or not isinstance(kid, str):
            # alg "none", unknown algorithms and asymmetric tokens without a kid.
            raise signer_error()
        for jwk in keys:
            if jwk.get("kty") == kty and jwk.get("kid") == kid:
                return _jwk_key(jwk, alg)
        raise signer_error(kid)

    def _validate_claims(self, claims: dict[str, Any], now: float) -> dict[str, Any]:
        exp = claims.get("exp")
        if exp is not None:
            if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
                raise malformed()
            if round(exp) <= now:
                raise expired(int(now - round(exp)))
        iat = claims.get("iat")
        if iat is not None and (isinstance(iat, bool) or not isinstance(iat, int | float)):
            raise malformed()
        for name, expected in self.claim_validators.items():
            if claims.get(name) != expected:
                raise AuthError("InvalidJWTToken", f"Invalid claim: {name}")
        if "role" not in claims or "exp" not in claims or not isinstance(claims["role"], str):
            raise missing_claims()
        role = claims["role"]
        if not role or role == "none" or (self.allowed_roles is not None and role not in self.allowed_roles):
            raise role_not_allowed()
        return claims


def _jwk_key(jwk: dict[str, Any], alg: str) -> Any:
    algorithm = get_default_algorithms().get("EdDSA" if alg in ED_ALGORITHMS else alg)
    if algorithm is None:
        raise signer_error(jwk.get("kid"))
    try:
        return algorithm.from_jwk(json.dumps(jwk))
    except (jwt.PyJWTError, ValueError, KeyError, TypeError):
        raise signer_error(jwk.get("kid")) from None


def load_jwks(value: str | None) -> dict[str, Any]:
    """A JWKS given as JSON text or as the path of a file holding it; {} when not set."""
    if not value:
        return {}
    text = value.strip()
    if not text.startswith("{"):
        text = Path(text).read_text()
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("keys", []), list):
        raise ValueError('a JWKS must be a JSON object with a "keys" list')
    return data


def expires_in(claims: dict[str, Any], now: float | None = None) -> float:
    """Seconds until the token's ``exp`` (negative once expired)."""
    return float(claims["exp"]) - (time.time() if now is None else now)


def sign(
    claims: dict[str, Any], secret: str, alg: str = "HS256", headers: dict[str, Any] | None = None
) -> str:
    """Sign claims (for the embedded server's keys, tests and benchmarks)."""
    return jwt.encode(claims, secret, algorithm=alg, headers=headers)
