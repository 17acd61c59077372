"""Fuzzing the token parsers with hypothesis: random and mutated tokens are never accepted,
and never cause anything but a precise 4xx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator

import httpx
import jwt
import orjson
import pytest
from abuse_support import BEARER, LiveServer
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tokenward.errors import TokenExpired, TokenInvalid
from tokenward.keys import KeySet
from tokenward.refresh import RefreshToken
from tokenward.tokens import AccessTokens

NOW = 1_800_000_000
ISSUER = "https://tokenward.test"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    return KeySet.load_or_generate(tmp_path_factory.mktemp("keys"), "EdDSA")


@pytest.fixture(scope="module")
def tokens(keys: KeySet) -> AccessTokens:
    # cache off: every call takes the full verification path
    return AccessTokens(keys, issuer=ISSUER, audience="tokenward", ttl=600, cache_size=0)


@pytest.fixture(scope="module")
def genuine(tokens: AccessTokens) -> str:
    token, _ = tokens.issue(sub="a" * 32, sid="b" * 22, now=NOW)
    return token


@st.composite
def mutations(draw: st.DrawFn, original: str) -> str:
    """1 to 3 edits: replace, insert or delete characters, cut, swap or duplicate parts."""
    token = original
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "cut", "swap", "dup", "case"]))
        i = draw(st.integers(0, max(0, len(token) - 1)))
        char = draw(st.one_of(st.sampled_from(B64 + ".=+/ "), st.characters()))
        parts = token.split(".")
        if kind == "replace" and token:
            token = token[:i] + char + token[i + 1 :]
        elif kind == "insert":
            token = token[:i] + char + token[i:]
        elif kind == "delete" and token:
            token = token[:i] + token[i + 1 :]
        elif kind == "cut":
            token = token[:i]
        elif kind == "swap" and len(parts) >= 2:
            j = draw(st.integers(0, len(parts) - 1))
            k = draw(st.integers(0, len(parts) - 1))
            parts[j], parts[k] = parts[k], parts[j]
            token = ".".join(parts)
        elif kind == "dup" and parts:
            token = ".".join([*parts, parts[draw(st.integers(0, len(parts) - 1))]])
        elif kind == "case" and token:
            token = token[:i] + token[i:].swapcase()
    return token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- access tokens ---------------------------------------------------------------------------


@FUZZ
@given(text=st.text(max_size=800))
def test_random_text_is_never_an_access_token(tokens: AccessTokens, text: str) -> None:
    """Any string: TokenInvalid, nothing else (no crash, no other exception)."""
    with pytest.raises(TokenInvalid):
        tokens.verify(text, now=NOW)


@FUZZ
@given(data=st.data())
def test_mutated_access_tokens_are_never_accepted(
    tokens: AccessTokens, genuine: str, data: st.DataObject
) -> None:
    """An altered genuine token is refused, whatever the edit."""
    mutated = data.draw(mutations(genuine))
    assume(mutated != genuine)
    with pytest.raises((TokenInvalid, TokenExpired)):
        tokens.verify(mutated, now=NOW)


@FUZZ
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "jwk", "jku", "x5u", "crit", "cty", "b64"]),
        st.one_of(st.text(max_size=20), st.integers(), st.none(), st.booleans()),
        max_size=5,
    ),
    claims=st.dictionaries(
        st.sampled_from(["iss", "aud", "sub", "sid", "iat", "exp", "jti", "nbf"]),
        st.one_of(
            st.text(max_size=20), st.integers(-(2**40), 2**40), st.none(), st.lists(st.text())
        ),
    ),
    signature=st.binary(max_size=80),
)
def test_forged_tokens_with_any_header_and_claims_are_refused(
    tokens: AccessTokens, header: dict[str, object], claims: dict[str, object], signature: bytes
) -> None:
    """Hand-built JWS with arbitrary headers and claims and a random signature: refused."""
    encoded = [json.dumps(part).encode() for part in (header, claims)]
    token = ".".join([_b64(encoded[0]), _b64(encoded[1]), _b64(signature)])
    with pytest.raises((TokenInvalid, TokenExpired)):
        tokens.verify(token, now=NOW)


def test_classic_forgeries_are_refused(tokens: AccessTokens, keys: KeySet, genuine: str) -> None:
    """alg none, HMAC keyed with the public key, an embedded jwk: all refused."""
    key = keys.signing_key
    claims = jwt.decode(genuine, options={"verify_signature": False})
    header = {"kid": key.kid, "typ": "at+jwt"}
    with pytest.raises(TokenInvalid):
        tokens.verify(jwt.encode(claims, None, algorithm="none", headers=header), now=NOW)
    public = key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{_b64(orjson.dumps({**header, 'alg': 'HS256'}))}.{genuine.split('.')[1]}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(TokenInvalid):
        tokens.verify(f"{signing_input}.{_b64(mac)}", now=NOW)
    jwk_header = {**header, "alg": key.alg, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA"}}
    with pytest.raises(TokenInvalid):
        tokens.verify(f"{_b64(orjson.dumps(jwk_header))}.{genuine.split('.', 1)[1]}", now=NOW)


# -- refresh tokens --------------------------------------------------------------------------


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_parses_only_as_its_own_canonical_refresh_token(text: str) -> None:
    """parse() refuses anything but the exact wire form it would itself produce."""
    try:
        parsed = RefreshToken.parse(text)
    except TokenInvalid:
        return
    assert parsed.encode() == text


@FUZZ
@given(data=st.data())
def test_mutated_refresh_tokens_never_name_the_same_secret(data: st.DataObject) -> None:
    """An edited token is refused, or names another session or another secret: it can
    never be taken for the original (no malleable spellings of a secret)."""
    original = RefreshToken.new("c" * 32, "d" * 22)
    wire = original.encode()
    mutated = data.draw(mutations(wire))
    assume(mutated != wire)
    try:
        parsed = RefreshToken.parse(mutated)
    except TokenInvalid:
        return
    assert (parsed.uid, parsed.sid, parsed.digest) != (original.uid, original.sid, original.digest)


def test_no_other_spelling_of_a_refresh_secret_parses() -> None:
    """43 base64 characters hold 258 bits for a 256-bit secret: the 3 other spellings of the
    last character must be refused, or an altered token would rotate the session."""
    for _ in range(20):
        original = RefreshToken.new("e" * 32, "f" * 22)
        wire = original.encode()
        same_secret = []
        for char in B64:
            variant = wire[:-1] + char
            try:
                parsed = RefreshToken.parse(variant)
            except TokenInvalid:
                continue
            if parsed.digest == original.digest:
                same_secret.append(variant)
        assert same_secret == [wire]


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_no_other_spelling_of_a_signature_verifies(
    tmp_path_factory: pytest.TempPathFactory, alg: str
) -> None:
    """Same for the JWT signature's spare bits: only the issued spelling verifies."""
    keyset = KeySet.load_or_generate(tmp_path_factory.mktemp(alg), alg)  # type: ignore[arg-type]
    issuer = AccessTokens(keyset, issuer=ISSUER, audience="tokenward", ttl=600, cache_size=0)
    token, _ = issuer.issue(sub="a" * 32, sid="b" * 22, now=NOW)
    accepted = []
    for char in B64:
        try:
            issuer.verify(token[:-1] + char, now=NOW)
        except TokenInvalid:
            continue
        accepted.append(char)
    assert accepted == [token[-1]]


# -- through HTTP ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(fuzz_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def victim(fuzz_server: LiveServer, http: httpx.Client) -> dict[str, str]:
    body = fuzz_server.bearer_login(http)
    return {"access": body["access_token"], "refresh": body["refresh_token"]}


HTTP_FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HTTP_FUZZ
@given(data=st.data())
def test_http_never_accepts_a_mutated_or_random_access_token(
    http: httpx.Client, victim: dict[str, str], data: st.DataObject
) -> None:
    """Bearer header and access cookie: 400/401 only, never 200, never 5xx."""
    token = data.draw(
        st.one_of(mutations(victim["access"]), st.text(alphabet=B64 + ".", max_size=600))
    )
    assume(token != victim["access"])
    as_header = token.encode("utf-8", "surrogateescape")
    try:
        r = http.get("/auth/me", headers={"Authorization": b"Bearer " + as_header})
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # not even expressible as an HTTP header
    assert r.status_code in (400, 401), (r.status_code, r.text)
    r = http.get(
        "/auth/me", headers={"cookie": f"access_token={token.encode('ascii', 'replace').decode()}"}
    )
    assert r.status_code in (400, 401), (r.status_code, r.text)


@HTTP_FUZZ
@given(data=st.data())
def test_http_never_accepts_a_mutated_or_random_refresh_token(
    http: httpx.Client, victim: dict[str, str], data: st.DataObject
) -> None:
    """Bearer refresh with altered tokens: 401 or 422, never 200, never 5xx."""
    token = data.draw(st.one_of(mutations(victim["refresh"]), st.text(max_size=600)))
    assume(token != victim["refresh"])
    r = http.post("/auth/refresh", json={"refresh_token": token}, headers=BEARER)
    assert r.status_code in (401, 422), (r.status_code, r.text)


def test_after_the_fuzzing_the_victims_session_is_intact(
    http: httpx.Client, victim: dict[str, str]
) -> None:
    """Thousands of wrong tokens naming the session did not end it (no denial of service)."""
    r = http.post("/auth/refresh", json={"refresh_token": victim["refresh"]}, headers=BEARER)
    assert r.status_code == 200, r.text
