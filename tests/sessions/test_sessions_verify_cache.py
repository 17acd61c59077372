"""The verified-token cache on the hot path: effective, bounded, and impossible to poison."""

from __future__ import annotations

import pytest

from tokenward.errors import TokenExpired, TokenInvalid
from tokenward.keys import KeySet, generate_key
from tokenward.tokens import AccessClaims, AccessTokens

NOW = 1_800_000_000
ISSUER = "https://tokenward.test"


class CountingTokens(AccessTokens):
    """Counts the verifications that reach the signature check."""

    signature_checks = 0

    def _verify_signed(self, token: str, now: int) -> AccessClaims:
        self.signature_checks += 1
        return super()._verify_signed(token, now)


def make(keys: KeySet, cache_size: int = 65_536) -> CountingTokens:
    return CountingTokens(keys, issuer=ISSUER, audience="tokenward", ttl=600, cache_size=cache_size)


def test_a_token_seen_before_skips_the_signature_check() -> None:
    """Effective: a hundred presentations of one token cost one signature verification."""
    tokens = make(KeySet([generate_key()]))
    token, _ = tokens.issue(sub="u", sid="s", now=NOW)
    for i in range(100):
        assert tokens.verify(token, now=NOW + i).sid == "s"
    assert tokens.signature_checks == 1


def test_the_cache_is_bounded() -> None:
    """Bounded: never more entries than its size; the oldest go first."""
    tokens = make(KeySet([generate_key()]), cache_size=8)
    issued = [tokens.issue(sub="u", sid=f"s{i}", now=NOW)[0] for i in range(50)]
    for token in issued:
        tokens.verify(token, now=NOW)
    assert len(tokens._cache) == 8
    tokens.verify(issued[0], now=NOW)  # evicted: verified again
    assert tokens.signature_checks == 51


def test_refusals_are_not_cached_and_lookalikes_do_not_hit() -> None:
    """Not poisonable: only genuine tokens are stored, keyed by the exact string."""
    tokens = make(KeySet([generate_key()]))
    token, _ = tokens.issue(sub="u", sid="s", now=NOW)
    tokens.verify(token, now=NOW)
    head, payload, signature = token.split(".")
    tampered_signature = (
        f"{head}.{payload}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    )
    other_payload = f"{head}.{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{signature}"
    for forged in (tampered_signature, other_payload, token + " ", token[:-1]):
        for _ in range(2):
            with pytest.raises(TokenInvalid):
                tokens.verify(forged, now=NOW)
    assert len(tokens._cache) == 1


def test_a_cached_token_still_expires() -> None:
    """A hit never extends a token's life."""
    tokens = make(KeySet([generate_key()]))
    token, claims = tokens.issue(sub="u", sid="s", now=NOW)
    tokens.verify(token, now=NOW)
    with pytest.raises(TokenExpired):
        tokens.verify(token, now=claims.exp + tokens.leeway + 1)


def test_a_token_of_a_withdrawn_key_is_refused_even_when_cached() -> None:
    """Keys replaced (a compromised key withdrawn): what was verified with it is forgotten."""
    old, new = generate_key(), generate_key()
    tokens = make(KeySet([old]))
    token, _ = tokens.issue(sub="u", sid="s", now=NOW)
    assert tokens.verify(token, now=NOW).sid == "s"
    tokens.keys = KeySet([new])
    with pytest.raises(TokenInvalid):
        tokens.verify(token, now=NOW)
