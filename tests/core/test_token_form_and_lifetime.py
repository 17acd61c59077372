"""Access tokens: one spelling per token, and no lifetime longer than the access TTL.

Tokens are built by hand (as in test_tokens.py), signed with the verifier's own key, so
every refusal here is of a token whose signature is good.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from tokenward.errors import TokenInvalid
from tokenward.keys import KeySet, SigningKey, generate_key
from tokenward.tokens import AccessTokens, check_compact_form, check_lifetime

NOW = 1_800_000_000
ISS = "https://tokenward.test"
AUD = "tokenward"
TTL = 600
LEEWAY = 30


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(key: SigningKey, **overrides: Any) -> str:
    """A genuine token of ``key`` with these claims changed (``None`` drops one)."""
    private = key.private_key
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    header = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}
    payload: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "a" * 32,
        "sid": "s" * 22,
        "iat": NOW,
        "exp": NOW + TTL,
        "jti": "j" * 22,
    }
    payload.update(overrides)
    payload = {k: v for k, v in payload.items() if v is not None}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return signing_input + "." + b64url(private.sign(signing_input.encode()))


@pytest.fixture
def key() -> SigningKey:
    return generate_key("EdDSA")


@pytest.fixture
def tokens(key: SigningKey) -> AccessTokens:
    return AccessTokens(KeySet([key]), issuer=ISS, audience=AUD, ttl=TTL, leeway=LEEWAY)


def _respellings(token: str) -> list[str]:
    """Other spellings of ``token`` that a lenient base64url decoder reads as the same bytes.

    ``=`` padding on each segment (as far as its length allows), characters outside the
    base64url alphabet, and the standard alphabet's ``+``/``/`` for ``-``/``_``.
    """
    segments = token.split(".")
    variants: list[str] = []
    for i, segment in enumerate(segments):
        padded = segment + "=" * (-len(segment) % 4)
        for spelling in {padded, segment + "=" * 4, segment[:4] + "!" + segment[4:]}:
            variants.append(".".join([*segments[:i], spelling, *segments[i + 1 :]]))
        standard = segment.replace("-", "+").replace("_", "/")
        if standard != segment:
            variants.append(".".join([*segments[:i], standard, *segments[i + 1 :]]))
    return [v for v in variants if v != token]


def test_a_genuine_token_has_exactly_one_accepted_spelling(
    tokens: AccessTokens, key: SigningKey
) -> None:
    """``=`` padding or a non-base64url character makes a genuine token malformed, refused
    before any parsing, and never a second entry of the verified-token cache.

    Before the fix PyJWT accepted the signature segment padded with ``==``, so each such
    spelling was verified and remembered separately.
    """
    # jti lengths vary, so the payload segment takes every length mod 4 (the header and the
    # 64-byte Ed25519 signature have one length each).
    genuine = [signed(key, jti=f"{'j' * (20 + i % 4)}{i:02d}") for i in range(20)]
    accepted: list[str] = []
    reasons: set[str] = set()
    tried = 0
    for token in genuine:
        assert tokens.verify(token, now=NOW).sub == "a" * 32
        for variant in _respellings(token):
            tried += 1
            try:
                tokens.verify(variant, now=NOW)
            except TokenInvalid as exc:
                reasons.add(exc.detail)
            else:
                accepted.append(variant)
    assert tried >= 150
    assert accepted == [], f"{len(accepted)} of {tried} re-spellings accepted"
    assert len(tokens._cache) == len(genuine)
    assert reasons == {"malformed token"}, "refused before parsing, not by the signature check"


@pytest.mark.parametrize(
    "text",
    [
        "a.b.c=",
        "a=.b.c",
        "a.b=.c",
        "a.b.c==",
        "a+.b.c",
        "a/.b.c",
        "a.b.c\n",
        " a.b.c",
        "a..c",
        "a.b.c.d",
        "a.b.",
        "ä.b.c",
    ],
)
def test_compact_form_is_unpadded_base64url_only(text: str) -> None:
    """The shared pre-parse check (also used by the verifier) refuses each of these."""
    with pytest.raises(TokenInvalid):
        check_compact_form(text)


def test_compact_form_accepts_what_the_issuer_makes(tokens: AccessTokens) -> None:
    for i in range(50):
        token, _ = tokens.issue(sub=f"u{i}", sid="s" * 22, now=NOW)
        check_compact_form(token)


def test_token_living_longer_than_ttl_plus_leeway_is_refused(
    tokens: AccessTokens, key: SigningKey
) -> None:
    """Correctly signed, current, but ``exp - iat`` above TTL + leeway: refused.

    Up to TTL + leeway is accepted (the issuer makes exactly TTL); one second more, or a
    day, or a year, is not.
    """
    assert tokens.verify(signed(key, exp=NOW + TTL + LEEWAY), now=NOW).sub
    for lifetime in (TTL + LEEWAY + 1, 2 * TTL, 86_400, 365 * 86_400):
        with pytest.raises(TokenInvalid) as caught:
            tokens.verify(signed(key, exp=NOW + lifetime), now=NOW)
        assert caught.value.slug == "unauthenticated"
        assert "lifetime" in caught.value.detail
    # Issued in the past, still current by its own exp: refused all the same.
    with pytest.raises(TokenInvalid):
        tokens.verify(signed(key, iat=NOW - 3600, exp=NOW + TTL), now=NOW)


def test_token_without_iat_is_refused(tokens: AccessTokens, key: SigningKey) -> None:
    """Without ``iat`` the lifetime cannot be checked: refused."""
    with pytest.raises(TokenInvalid):
        tokens.verify(signed(key, iat=None), now=NOW)


def test_check_lifetime_bounds() -> None:
    check_lifetime(NOW, NOW + TTL + LEEWAY, max_lifetime=TTL, leeway=LEEWAY)
    for iat, exp in ((NOW, NOW + TTL + LEEWAY + 1), (NOW, NOW), (NOW, NOW - 1)):
        with pytest.raises(TokenInvalid):
            check_lifetime(iat, exp, max_lifetime=TTL, leeway=LEEWAY)
