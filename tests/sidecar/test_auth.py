"""Token verification with plain values: algorithms, keys, claims, hostile tokens."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from pg_realtime.auth import AuthError, Verifier, load_jwks

SECRET = "a-test-secret-that-is-long-enough-for-hs512-keys-0123456789abcdef"
NOW = 1_800_000_000


def claims(**extra):
    return {"role": "authenticated", "exp": NOW + 60, "sub": "user-1", **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hs_tokens_verify_with_the_secret(alg):
    token = jwt.encode(claims(), SECRET, algorithm=alg)
    assert Verifier(secret=SECRET).verify(token, now=NOW)["sub"] == "user-1"


def _jwks_for(kind):
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if kind == "RS256":
        private = rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    elif kind == "ES256":
        private = ec_key = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    else:
        private = ed_key = ed25519.Ed25519PrivateKey.generate()
        public = json.loads(OKPAlgorithm.to_jwk(ed_key.public_key()))
    public["kid"] = "key-1"
    return private, {"keys": [public]}


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_asymmetric_tokens_verify_with_the_jwks_key_named_by_kid(alg):
    private, jwks = _jwks_for(alg)
    token = jwt.encode(claims(), private, algorithm=alg, headers={"kid": "key-1"})
    verifier = Verifier(secret=SECRET, jwks=jwks)
    assert verifier.verify(token, now=NOW)["role"] == "authenticated"

    unknown = jwt.encode(claims(), private, algorithm=alg, headers={"kid": "other"})
    with pytest.raises(AuthError) as err:
        verifier.verify(unknown, now=NOW)
    assert err.value.message.startswith('Failed to generate JWT signer for key ID (kid) "other"')

    no_kid = jwt.encode(claims(), private, algorithm=alg)
    with pytest.raises(AuthError) as err:
        verifier.verify(no_kid, now=NOW)
    assert err.value.message == "Failed to generate JWT signer, check your JWT secret or JWKS configuration"


def test_a_key_from_another_pair_fails_the_signature():
    _private, jwks = _jwks_for("RS256")
    other, _ = _jwks_for("RS256")
    token = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "key-1"})
    with pytest.raises(AuthError) as err:
        Verifier(jwks=jwks).verify(token, now=NOW)
    assert err.value.reason == "JwtSignatureError: Failed to validate JWT signature"


def test_hs_token_with_kid_uses_a_matching_oct_key_else_the_secret():
    jwks = {"keys": [{"kty": "oct", "kid": "hs-1", "k": b64(b"another-secret-of-sufficient-length-000")}]}
    verifier = Verifier(secret=SECRET, jwks=jwks)
    by_jwk = jwt.encode(claims(), "another-secret-of-sufficient-length-000", "HS256", headers={"kid": "hs-1"})
    assert verifier.verify(by_jwk, now=NOW)["sub"] == "user-1"
    by_secret = jwt.encode(claims(), SECRET, "HS256", headers={"kid": "not-in-jwks"})
    assert verifier.verify(by_secret, now=NOW)["sub"] == "user-1"


def test_alg_none_is_refused():
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    with pytest.raises(AuthError) as err:
        Verifier(secret=SECRET).verify(f"{header}.{body}.", now=NOW)
    assert err.value.code == "JwtSignerError"


def test_unknown_algorithm_is_refused():
    header = b64(json.dumps({"alg": "XS999", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    with pytest.raises(AuthError):
        Verifier(secret=SECRET).verify(f"{header}.{body}.c2ln", now=NOW)


def test_forged_signature_is_refused():
    token = jwt.encode(claims(), "not-the-secret-but-just-as-long-as-it-0123456789", algorithm="HS256")
    with pytest.raises(AuthError) as err:
        Verifier(secret=SECRET).verify(token, now=NOW)
    assert err.value.reason == "JwtSignatureError: Failed to validate JWT signature"


def test_tampered_claims_fail_the_signature():
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    header, _, signature = token.split(".")
    forged = b64(json.dumps(claims(role="service_role")).encode())
    with pytest.raises(AuthError) as err:
        Verifier(secret=SECRET).verify(f"{header}.{forged}.{signature}", now=NOW)
    assert err.value.code == "JwtSignatureError"


def test_expired_token_says_how_long_ago():
    token = jwt.encode(claims(exp=NOW - 42), SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as err:
        Verifier(secret=SECRET).verify(token, now=NOW)
    assert err.value.reason == "InvalidJWTToken: Token has expired 42 seconds ago"
    assert err.value.http_message == "Token has expired"


def test_not_yet_valid_token_is_refused():
    token = jwt.encode(claims(nbf=int(time.time()) + 3600), SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as err:
        Verifier(secret=SECRET).verify(token)
    assert err.value.code == "InvalidJWTToken"


@pytest.mark.parametrize("missing", ["role", "exp"])
def test_role_and_exp_are_required(missing):
    body = claims()
    del body[missing]
    token = jwt.encode(body, SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as err:
        Verifier(secret=SECRET).verify(token, now=NOW)
    assert err.value.reason == "InvalidJWTToken: Fields `role` and `exp` are required in JWT"


@pytest.mark.parametrize(
    "token", ["", "   ", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "\x00\x01"]
)
def test_malformed_tokens_are_refused_cleanly(token):
    with pytest.raises(AuthError) as err:
        Verifier(secret=SECRET).verify(token, now=NOW)
    assert err.value.code in {"MalformedJWT", "MissingApiKey"}


def test_non_object_claims_are_malformed():
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps([1, 2]).encode())
    with pytest.raises(AuthError) as err:
        Verifier(secret=SECRET).verify(f"{header}.{body}.sig", now=NOW)
    assert err.value.code == "MalformedJWT"


def test_percent_encoded_token_with_whitespace_is_cleaned_first():
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert Verifier(secret=SECRET).verify(f"  {token.replace('.', '%2E')}\n", now=NOW)["sub"] == "user-1"


def test_claim_validators_must_match_exactly():
    token = jwt.encode(claims(iss="someone-else"), SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        Verifier(secret=SECRET, claim_validators={"iss": "supabase"}).verify(token, now=NOW)


def test_jwks_from_text_or_file(tmp_path):
    _, jwks = _jwks_for("ES256")
    assert load_jwks(json.dumps(jwks)) == jwks
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    assert load_jwks(str(path)) == jwks
    assert load_jwks(None) == {}
    with pytest.raises(ValueError):
        load_jwks('{"keys": 5}')
