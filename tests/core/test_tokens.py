"""Access tokens: what is issued, and every forgery the verifier must refuse.

Forged tokens are built by hand here (base64url pieces signed with ``cryptography`` or
``hmac``), never with the issuer under test, so a bug in the issuer cannot hide a bug in
the verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tokenward.errors import TokenExpired, TokenInvalid
from tokenward.keys import KeySet, SigningKey, generate_key
from tokenward.tokens import AccessTokens

NOW = 1_800_000_000
ISS = "https://tokenward.test"
AUD = "tokenward"
TTL = 600
LEEWAY = 30

Signer = Callable[[bytes], bytes]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge(header: dict[str, Any], payload: dict[str, Any], sign: Signer) -> str:
    """A compact JWS assembled by hand: ``b64(header).b64(payload).b64(sign(input))``."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return signing_input + "." + b64url(sign(signing_input.encode()))


def ed25519_signer(key: SigningKey) -> Signer:
    private = key.private_key
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return private.sign


def es256_signer(key: SigningKey) -> Signer:
    private = key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def signer_for(key: SigningKey) -> Signer:
    return ed25519_signer(key) if key.alg == "EdDSA" else es256_signer(key)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "a" * 32,
        "sid": "s" * 22,
        "iat": NOW,
        "exp": NOW + TTL,
        "jti": "j" * 22,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def header_for(key: SigningKey, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def key() -> SigningKey:
    return generate_key("EdDSA")


@pytest.fixture
def tokens(key: SigningKey) -> AccessTokens:
    return AccessTokens(KeySet([key]), issuer=ISS, audience=AUD, ttl=TTL, leeway=LEEWAY)


def test_hand_built_token_is_accepted(tokens: AccessTokens, key: SigningKey) -> None:
    """The forging helper builds genuine tokens, so the refusals below are meaningful."""
    token = forge(header_for(key), claims(), ed25519_signer(key))
    assert tokens.verify(token, now=NOW).sub == "a" * 32


def test_issued_header_is_eddsa_with_kid_and_at_jwt_typ(
    tokens: AccessTokens, key: SigningKey
) -> None:
    """EdDSA is the default; the header names the kid and typ ``at+jwt``, nothing else."""
    token, _ = tokens.issue(sub="u1", sid="s1", now=NOW)
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert header == {"alg": "EdDSA", "kid": key.kid, "typ": "at+jwt"}


def test_issued_claims_are_exactly_the_rfc9068_set(tokens: AccessTokens) -> None:
    """Claims are ``iss aud sub sid iat exp jti`` with exp = iat + ttl."""
    token, issued = tokens.issue(sub="u1", sid="s1", now=NOW)
    payload = json.loads(b64url_decode(token.split(".")[1]))
    assert set(payload) == {"iss", "aud", "sub", "sid", "iat", "exp", "jti"}
    assert payload["iss"] == ISS
    assert payload["aud"] == AUD
    assert (payload["sub"], payload["sid"]) == ("u1", "s1")
    assert (payload["iat"], payload["exp"]) == (NOW, NOW + TTL)
    assert payload["jti"] == issued.jti


def test_issued_signature_verifies_with_the_public_key_alone(
    tokens: AccessTokens, key: SigningKey
) -> None:
    """The signature is a real Ed25519 signature over the signing input."""
    token, _ = tokens.issue(sub="u1", sid="s1", now=NOW)
    signing_input, _, signature = token.rpartition(".")
    public = key.public_key
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(b64url_decode(signature), signing_input.encode())


def test_jti_carries_at_least_128_random_bits(tokens: AccessTokens) -> None:
    """Every jti decodes to >= 16 bytes, and 1000 of them are all different."""
    jtis = [tokens.issue(sub="u", sid="s", now=NOW)[1].jti for _ in range(1000)]
    assert all(len(b64url_decode(j)) >= 16 for j in jtis)
    assert len(set(jtis)) == 1000


def test_es256_key_signs_es256_tokens() -> None:
    """A P-256 key issues ES256 tokens that verify."""
    key = generate_key("ES256")
    tokens = AccessTokens(KeySet([key]), issuer=ISS, audience=AUD, ttl=TTL)
    token, _ = tokens.issue(sub="u1", sid="s1", now=NOW)
    assert json.loads(b64url_decode(token.split(".")[0]))["alg"] == "ES256"
    assert tokens.verify(token, now=NOW).sub == "u1"


def test_hand_built_es256_token_is_accepted() -> None:
    """An ES256 token signed by hand (raw r||s) verifies: the verifier is not issuer-bound."""
    key = generate_key("ES256")
    tokens = AccessTokens(KeySet([key]), issuer=ISS, audience=AUD, ttl=TTL)
    token = forge(header_for(key), claims(), es256_signer(key))
    assert tokens.verify(token, now=NOW).sid == "s" * 22


def test_alg_none_is_refused(tokens: AccessTokens, key: SigningKey) -> None:
    """``alg: none`` with an empty signature is refused."""
    for alg in ("none", "None", "NONE"):
        token = forge(header_for(key, alg=alg), claims(), lambda _: b"")
        with pytest.raises(TokenInvalid):
            tokens.verify(token, now=NOW)


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
@pytest.mark.parametrize("encoding", ["pem", "raw-or-der", "jwk-x"])
def test_hmac_signed_with_the_public_key_is_refused(alg: str, encoding: str) -> None:
    """Algorithm confusion: HS256 keyed with the public key's bytes is refused."""
    key = generate_key(alg)  # type: ignore[arg-type]
    tokens = AccessTokens(KeySet([key]), issuer=ISS, audience=AUD, ttl=TTL)
    public = key.public_key
    if encoding == "pem":
        secret = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif encoding == "raw-or-der":
        secret = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        secret = key.public_jwk()["x"].encode()
    for hs in ("HS256", "HS384", "HS512"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[hs]
        token = forge(
            header_for(key, alg=hs),
            claims(),
            lambda data, s=secret, d=digest: hmac.new(s, data, d).digest(),  # type: ignore[misc]
        )
        with pytest.raises(TokenInvalid):
            tokens.verify(token, now=NOW)


def test_alg_other_than_the_keys_pinned_alg_is_refused(tokens: AccessTokens) -> None:
    """An Ed25519 key's kid with ``alg: ES256`` is refused, even if otherwise well signed."""
    other = generate_key("ES256")
    mixed = AccessTokens(KeySet([other]), issuer=ISS, audience=AUD, ttl=TTL)
    token = forge(header_for(other, alg="EdDSA"), claims(), es256_signer(other))
    with pytest.raises(TokenInvalid):
        mixed.verify(token, now=NOW)


def test_unknown_kid_is_refused(tokens: AccessTokens) -> None:
    """A token signed by a key that is not ours, with its own kid, is refused."""
    stranger = generate_key("EdDSA")
    token = forge(header_for(stranger), claims(), ed25519_signer(stranger))
    with pytest.raises(TokenInvalid, match="unknown"):
        tokens.verify(token, now=NOW)


def test_missing_or_non_string_kid_is_refused(tokens: AccessTokens, key: SigningKey) -> None:
    """Without a usable kid there is no key to check with."""
    for kid in (None, 7, ["x"]):
        header = {"alg": "EdDSA", "typ": "at+jwt", **({} if kid is None else {"kid": kid})}
        with pytest.raises(TokenInvalid):
            tokens.verify(forge(header, claims(), ed25519_signer(key)), now=NOW)


def test_our_kid_signed_by_another_key_is_refused(tokens: AccessTokens, key: SigningKey) -> None:
    """Naming our kid does not help a signature made with another key."""
    stranger = generate_key("EdDSA")
    token = forge(header_for(key), claims(), ed25519_signer(stranger))
    with pytest.raises(TokenInvalid):
        tokens.verify(token, now=NOW)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jwk", None),
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("x5c", ["MIIB"]),
    ],
)
def test_embedded_key_headers_are_refused(
    tokens: AccessTokens, key: SigningKey, name: str, value: Any
) -> None:
    """``jwk``/``jku``/``x5u``/``x5c`` in the header are refused even on a genuine signature."""
    if value is None:
        value = {k: v for k, v in key.public_jwk().items() if k in ("kty", "crv", "x")}
    token = forge(header_for(key, **{name: value}), claims(), ed25519_signer(key))
    with pytest.raises(TokenInvalid):
        tokens.verify(token, now=NOW)


def test_embedded_jwk_of_the_attackers_key_is_refused(tokens: AccessTokens) -> None:
    """The classic jwk-injection: attacker key embedded and used to sign, our kid named."""
    attacker = generate_key("EdDSA")
    ours = tokens.keys.signing_key
    header = header_for(ours, jwk=attacker.public_jwk())
    with pytest.raises(TokenInvalid):
        tokens.verify(forge(header, claims(), ed25519_signer(attacker)), now=NOW)


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+JWT ", "application/at+jwt", None])
def test_wrong_or_missing_typ_is_refused(
    tokens: AccessTokens, key: SigningKey, typ: str | None
) -> None:
    """Only ``typ: at+jwt`` is an access token (an ID token or other JWT is not)."""
    header = header_for(key, typ=typ)
    with pytest.raises(TokenInvalid):
        tokens.verify(forge(header, claims(), ed25519_signer(key)), now=NOW)


def test_wrong_issuer_is_refused(tokens: AccessTokens, key: SigningKey) -> None:
    """A genuine signature over another issuer's claims is refused."""
    token = forge(header_for(key), claims(iss="https://other.test"), ed25519_signer(key))
    with pytest.raises(TokenInvalid):
        tokens.verify(token, now=NOW)


@pytest.mark.parametrize("aud", ["other-service", ["tokenward"], ["tokenward", "x"], ""])
def test_wrong_audience_is_refused(tokens: AccessTokens, key: SigningKey, aud: Any) -> None:
    """``aud`` must be exactly our audience string."""
    token = forge(header_for(key), claims(aud=aud), ed25519_signer(key))
    with pytest.raises(TokenInvalid):
        tokens.verify(token, now=NOW)


@pytest.mark.parametrize("missing", ["iss", "aud", "sub", "sid", "iat", "exp", "jti"])
def test_missing_claim_is_refused(tokens: AccessTokens, key: SigningKey, missing: str) -> None:
    """Every RFC 9068 claim we issue is required on verification."""
    payload = claims()
    del payload[missing]
    with pytest.raises(TokenInvalid):
        tokens.verify(forge(header_for(key), payload, ed25519_signer(key)), now=NOW)


def test_expired_token_raises_token_expired(tokens: AccessTokens, key: SigningKey) -> None:
    """Past exp + leeway a genuine token is TokenExpired, whose problem type is token-expired."""
    token = forge(header_for(key), claims(), ed25519_signer(key))
    with pytest.raises(TokenExpired) as caught:
        tokens.verify(token, now=NOW + TTL + LEEWAY + 1)
    assert caught.value.slug == "token-expired"
    assert caught.value.status == 401


def test_exp_within_leeway_is_accepted(tokens: AccessTokens, key: SigningKey) -> None:
    """Up to exactly exp + leeway the token is still accepted (clock skew)."""
    token = forge(header_for(key), claims(), ed25519_signer(key))
    assert tokens.verify(token, now=NOW + TTL - 1).sub
    assert tokens.verify(token, now=NOW + TTL + LEEWAY).sub


def test_token_already_expired_at_first_sight_is_token_expired(
    tokens: AccessTokens, key: SigningKey
) -> None:
    """Expiry does not depend on having seen the token before (no cache involved)."""
    token = forge(
        header_for(key), claims(iat=NOW - 10_000, exp=NOW - 10_000 + TTL), ed25519_signer(key)
    )
    with pytest.raises(TokenExpired):
        tokens.verify(token, now=NOW)


def test_cached_token_still_expires(tokens: AccessTokens) -> None:
    """The verified-token cache never extends a token's life."""
    token, _ = tokens.issue(sub="u", sid="s", now=NOW)
    tokens.verify(token, now=NOW)  # now cached
    with pytest.raises(TokenExpired):
        tokens.verify(token, now=NOW + TTL + LEEWAY + 1)


def test_expired_tokens_leave_the_cache_as_new_ones_come(tokens: AccessTokens) -> None:
    """The cache holds live tokens, not every token a worker ever saw: once the first ones
    are past exp + leeway, each new token verified pushes some out (a worker's memory stays
    with the tokens still usable, as bench/soak.py measures)."""
    first = [tokens.issue(sub=f"u{i}", sid=f"s{i}", now=NOW)[0] for i in range(20)]
    for token in first:
        tokens.verify(token, now=NOW)
    assert len(tokens._cache) == 20
    later = NOW + TTL + LEEWAY + 1
    fresh = [tokens.issue(sub=f"v{i}", sid=f"t{i}", now=later)[0] for i in range(10)]
    for token in fresh:
        tokens.verify(token, now=later)
    assert len(tokens._cache) == 10, "the 20 expired ones are gone, the 10 live ones kept"
    for token in fresh:
        assert tokens.verify(token, now=later).sub.startswith("v")
    # Keyed by a digest: a cached entry does not keep the token string alive.
    assert all(isinstance(k, bytes) and len(k) == 16 for k in tokens._cache)


def test_the_cache_is_bounded_and_keeps_the_tokens_in_use(key: SigningKey) -> None:
    """At most ``cache_size`` entries; the least recently used leaves first, so a token
    presented all along stays while 50 others pass through."""
    small = AccessTokens(KeySet([key]), issuer=ISS, audience=AUD, ttl=TTL, cache_size=8)
    busy, _ = small.issue(sub="busy", sid="s-busy", now=NOW)
    small.verify(busy, now=NOW)
    entry = next(iter(small._cache))
    for i in range(50):
        small.verify(small.issue(sub=f"u{i}", sid=f"s{i}", now=NOW)[0], now=NOW)
        small.verify(busy, now=NOW)
    assert len(small._cache) == 8
    assert entry in small._cache


def test_iat_in_the_future_is_refused(tokens: AccessTokens, key: SigningKey) -> None:
    """A token issued beyond the leeway in the future is refused; within it, accepted."""
    later = NOW + LEEWAY + 1
    bad = forge(header_for(key), claims(iat=later, exp=later + TTL), ed25519_signer(key))
    with pytest.raises(TokenInvalid):
        tokens.verify(bad, now=NOW)
    skewed = NOW + LEEWAY
    ok = forge(header_for(key), claims(iat=skewed, exp=skewed + TTL), ed25519_signer(key))
    assert tokens.verify(ok, now=NOW).iat == skewed


def test_nbf_in_the_future_is_refused(tokens: AccessTokens, key: SigningKey) -> None:
    """``nbf`` beyond the leeway is refused."""
    token = forge(header_for(key), {**claims(), "nbf": NOW + LEEWAY + 1}, ed25519_signer(key))
    with pytest.raises(TokenInvalid):
        tokens.verify(token, now=NOW)


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": "1800000600"},
        {"exp": 1.8e9 + 600.5},
        {"iat": True},
        {"sub": 42},
        {"jti": 5},
        {"exp": NOW},
    ],
)
def test_malformed_claim_types_are_refused(
    tokens: AccessTokens, key: SigningKey, bad: dict[str, Any]
) -> None:
    """Numeric dates must be integers, identifiers strings, and exp after iat."""
    payload = claims(**bad)
    with pytest.raises(TokenInvalid):
        tokens.verify(forge(header_for(key), payload, ed25519_signer(key)), now=NOW)


def test_tampered_payload_is_refused(tokens: AccessTokens) -> None:
    """Swapping the payload of a genuine token (another sub) breaks the signature."""
    token, _ = tokens.issue(sub="victim-not", sid="s1", now=NOW)
    header, payload, signature = token.split(".")
    body = json.loads(b64url_decode(payload))
    body["sub"] = "victim"
    forged = ".".join([header, b64url(json.dumps(body).encode()), signature])
    with pytest.raises(TokenInvalid):
        tokens.verify(forged, now=NOW)


def test_tampered_header_is_refused(tokens: AccessTokens) -> None:
    """The header is signed too: re-encoding it (same meaning, new bytes) breaks the signature."""
    token, _ = tokens.issue(sub="u", sid="s1", now=NOW)
    header, payload, signature = token.split(".")
    decoded = json.loads(b64url_decode(header))
    reencoded = b64url(json.dumps(decoded, indent=1).encode())
    with pytest.raises(TokenInvalid):
        tokens.verify(".".join([reencoded, payload, signature]), now=NOW)


def test_truncated_signature_is_refused(tokens: AccessTokens) -> None:
    """A signature cut short, or flipped in one bit, is refused."""
    token, _ = tokens.issue(sub="u", sid="s1", now=NOW)
    head, _, signature = token.rpartition(".")
    raw = bytearray(b64url_decode(signature))
    raw[0] ^= 1
    for forged in (head + "." + signature[:-4], head + "." + b64url(bytes(raw)), head + "."):
        with pytest.raises(TokenInvalid):
            tokens.verify(forged, now=NOW)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "...",
        "e30.e30.",
        "e30.e30.e30",
        "eyJhbGciOiJFZERTQSJ9..",
        "Bearer x.y.z",
        "ä.ö.ü",
        "x" * 5000,
        "eyJ" + "A" * 100 + "..",
        "null.null.null",
        b64url(b"[]") + "." + b64url(b"{}") + ".",
    ],
)
def test_garbage_strings_are_token_invalid(tokens: AccessTokens, garbage: str) -> None:
    """Anything that is not a JWT raises TokenInvalid (never another exception)."""
    with pytest.raises(TokenInvalid):
        tokens.verify(garbage, now=NOW)


def test_non_object_payload_is_refused(tokens: AccessTokens, key: SigningKey) -> None:
    """A genuinely signed payload that is not a JSON object is refused."""
    signing_input = b64url(json.dumps(header_for(key)).encode()) + "." + b64url(b"[1,2]")
    token = signing_input + "." + b64url(ed25519_signer(key)(signing_input.encode()))
    with pytest.raises(TokenInvalid):
        tokens.verify(token, now=NOW)


def test_refused_token_is_not_remembered(tokens: AccessTokens, key: SigningKey) -> None:
    """A refusal is not cached as success: the same forged string fails every time."""
    stranger = generate_key("EdDSA")
    token = forge(header_for(key), claims(), ed25519_signer(stranger))
    for _ in range(3):
        with pytest.raises(TokenInvalid):
            tokens.verify(token, now=NOW)
