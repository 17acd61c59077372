"""Access tokens for the deployment's other services: one audience (``aud``) per service.

Every access token names the one service that may accept it. Tokenward's own API is
``TOKENWARD_AUDIENCE`` (``tokenward``); the other services of a deployment are named in
``TOKENWARD_AUDIENCES`` (``notes,billing``). A signed-in client asks for a token for one of
them (``POST /auth/token {"audience": "notes"}``), and each service verifies with its own
name (``AsyncVerifier(..., audience="notes")``, ``TokenwardMiddleware(..., audience=...)``),
so a token leaked by, or replayed from, one service is refused by every other one, and
by Tokenward's own API.

A service token is an ordinary access token of the same session (same ``sub`` and ``sid``):
ending the session ends it everywhere revocation is followed. It never outlives the token it
was exchanged for, so exchanging cannot extend a (possibly stolen) access token's life, and
it cannot itself be exchanged: only a token for Tokenward's own audience can.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenward.errors import BadRequest, TokenExpired
from tokenward.tokens import AccessClaims, AccessTokens, AccessTokenVerifier

__all__ = ["ServiceTokens"]


class ServiceTokens:
    """Issues and verifies tokens for the configured service audiences.

    Args:
        tokens: the first-party issuer; its keys (swapped on rotation), issuer, lifetime and
            leeway are used for every audience.
        audiences: the service names (``TOKENWARD_AUDIENCES``).
    """

    def __init__(self, tokens: AccessTokens, audiences: Iterable[str]) -> None:
        self.tokens = tokens
        self.audiences = frozenset(audiences) - {tokens.audience}
        self._verifiers: dict[str, AccessTokenVerifier] = {}

    def allows(self, audience: str) -> bool:
        """Whether ``audience`` is Tokenward's own or one of the configured services."""
        return audience == self.tokens.audience or audience in self.audiences

    def issue(
        self, audience: str, presented: AccessClaims, *, now: int
    ) -> tuple[str, AccessClaims]:
        """A token for ``audience`` of the session of ``presented`` (a first-party token).

        Its lifetime is the usual one, cut to what is left of ``presented``.

        Raises:
            BadRequest: ``audience`` is not a configured service.
            TokenExpired: ``presented`` is past ``exp`` (within the leeway).
        """
        if audience not in self.audiences:
            raise BadRequest("unknown audience: not one of TOKENWARD_AUDIENCES")
        ttl = min(self.tokens.ttl, presented.exp - now)
        if ttl <= 0:
            raise TokenExpired("access token expired")
        issuer = AccessTokens(
            self.tokens.keys,
            issuer=self.tokens.issuer,
            audience=audience,
            ttl=ttl,
            leeway=self.tokens.leeway,
            cache_size=0,
        )
        return issuer.issue(
            sub=presented.sub,
            sid=presented.sid,
            now=now,
            amr=presented.amr,
            auth_time=presented.auth_time,
        )

    def verifier(self, audience: str) -> AccessTokenVerifier:
        """The verifier of tokens for ``audience``, on the keys in force now.

        Raises:
            BadRequest: ``audience`` is neither Tokenward's own nor a configured service.
        """
        if audience == self.tokens.audience:
            return self.tokens
        if audience not in self.audiences:
            raise BadRequest("unknown audience: not one of TOKENWARD_AUDIENCES")
        verifier = self._verifiers.get(audience)
        if verifier is None:
            verifier = AccessTokenVerifier(
                self.tokens.keys,
                issuer=self.tokens.issuer,
                audience=audience,
                leeway=self.tokens.leeway,
            )
            self._verifiers[audience] = verifier
        verifier.keys = self.tokens.keys  # follow a rotation; its cache is then dropped
        return verifier
