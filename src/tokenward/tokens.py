"""Access tokens: RFC 9068 JWTs, issued and verified with pinned algorithms.

Header ``{alg, kid, typ: "at+jwt"}``; claims ``iss aud sub sid iat exp jti``, and
``amr`` and ``auth_time`` (RFC 8176, OIDC; :mod:`tokenward.authn`). Verification
refuses, before any signature work: a ``typ`` other than ``at+jwt``, embedded key material
(``jwk``, ``jku``, ``x5u``, ``x5c``), ``crit``, an unknown ``kid``, and an ``alg`` other than
the one pinned to that key (so ``none`` and HMAC-with-a-public-key never reach a verifier).
An unknown ``kid`` on a token whose unverified payload names our issuer and audience and is
past ``exp`` is refused as *expired*, not invalid: after a key rotation that is a client
holding an old token, and it should refresh rather than log in.
Claims are then checked against ``now`` passed in by the caller, with the configured leeway,
and a token whose lifetime (``exp - iat``) is longer than the access TTL plus the leeway is
refused even when its signature is good: the issuer never makes one, so it was minted by
something else holding a key, or under a longer TTL the operator has since withdrawn.

Before any parsing, each of the three segments must be unpadded base64url
(:func:`check_compact_form`). PyJWT tolerates ``=`` padding, so without this one token
would have several accepted spellings, each verified and cached on its own.

A token is presented many times during its short life and a signature check costs about ten
framework requests, so successful verifications are remembered in a
bounded in-process map keyed by the exact token string. The expiry is still checked against
``now`` on every hit; whether the *session* is still alive is the session cache's business.

:class:`AccessTokenVerifier` holds every check and needs public keys only, so services that
verify tokens from the JWKS (:mod:`tokenward.verifier`) run exactly the checks the issuer
runs; :class:`AccessTokens` adds issuing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import jwt
import orjson
from jwt.algorithms import get_default_algorithms
from jwt.api_jws import PyJWS
from jwt.utils import base64url_decode, base64url_encode

from tokenward.errors import TokenExpired, TokenInvalid
from tokenward.keys import KeySet, PublicKey, SigningAlg, SigningKey

__all__ = [
    "ACCESS_TOKEN_TYP",
    "AccessClaims",
    "AccessTokenVerifier",
    "AccessTokens",
    "VerificationKey",
    "VerificationKeys",
    "check_compact_form",
    "check_lifetime",
]

ACCESS_TOKEN_TYP = "at+jwt"
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64"})
_REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "iat", "exp", "jti")
#: A JWT larger than this is not one of ours; refusing early bounds the parsing work.
MAX_TOKEN_LENGTH = 4096
#: Every Tokenward ``kid`` is the key's RFC 7638 thumbprint: SHA-256, unpadded base64url.
_THUMBPRINT_KID = re.compile(r"[A-Za-z0-9_-]{43}")
#: A compact JWS as we issue it: three non-empty segments of unpadded base64url.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _b64(data: bytes) -> bytes:
    return base64url_encode(data)


def check_compact_form(token: str) -> None:
    """Refuse anything but three dot-separated segments of unpadded base64url.

    Runs before any parsing, here and in :mod:`tokenward.verifier`: ``=`` padding (which
    PyJWT accepts) and any character outside the base64url alphabet would give one token
    several spellings, each a separate entry of the verified-token cache.

    Raises:
        TokenInvalid: empty, too long, or not in that form.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH or not _COMPACT_JWS.fullmatch(token):
        raise TokenInvalid("malformed token")


def check_lifetime(iat: int, exp: int, *, max_lifetime: int, leeway: int) -> None:
    """Refuse a token that lives longer than ``max_lifetime`` (the access TTL) plus leeway.

    Tokenward issues every access token with ``exp = iat + TOKENWARD_ACCESS_TTL``; one that
    claims more was not issued under the current configuration, so it is refused rather
    than honoured for however long its signer chose.

    Raises:
        TokenInvalid: ``exp`` not after ``iat``, or ``exp - iat`` above the limit.
    """
    if exp <= iat:
        raise TokenInvalid("malformed claims")
    if exp - iat > max_lifetime + leeway:
        raise TokenInvalid("token lifetime longer than the access TTL")


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The verified claims of an access token."""

    sub: str
    sid: str
    iat: int
    exp: int
    jti: str
    iss: str
    aud: str
    #: RFC 8176 authentication methods (``pwd``, ``otp``, ``mfa``); ``()`` when absent
    amr: tuple[str, ...] = ()
    #: when the user last authenticated (login or re-authentication); ``None`` when absent
    auth_time: int | None = None


class VerificationKey(Protocol):
    """A public key with its pinned algorithm (a :class:`~tokenward.keys.SigningKey` is one)."""

    @property
    def kid(self) -> str:
        """The key id tokens name in their header."""
        ...

    @property
    def alg(self) -> SigningAlg:
        """The one algorithm this key verifies."""
        ...

    @property
    def public_key(self) -> PublicKey:
        """The key that checks signatures."""
        ...


class VerificationKeys(Protocol):
    """Keys by ``kid`` (a :class:`~tokenward.keys.KeySet` is one)."""

    def get(self, kid: str) -> VerificationKey | None:
        """The key with this ``kid``, or ``None`` when it is not known."""
        ...


#: Verified tokens each process remembers (about 550 bytes each: 9 MB). A hit saves the
#: signature check (about 60 µs for Ed25519); a worker serving more distinct live tokens
#: than this checks the others' signatures again, which costs CPU but never correctness.
ACCESS_CACHE_SIZE = 16_384


class AccessTokenVerifier:
    """Verifies access tokens for one issuer and audience with public keys only.

    Args:
        keys: the keys that verify; replace :attr:`keys` to rotate.
        issuer: the required ``iss`` claim.
        audience: the required ``aud`` claim.
        leeway: clock skew tolerated on ``exp``, ``iat``, ``nbf``.
        cache_size: how many verified tokens to remember; 0 disables the cache.
        max_lifetime: the issuer's access TTL; a token with ``exp - iat`` above it plus
            ``leeway`` is refused. ``None`` (a verifier that does not know the TTL) skips
            only that check.
    """

    def __init__(
        self,
        keys: VerificationKeys,
        *,
        issuer: str,
        audience: str,
        leeway: int = 30,
        cache_size: int = ACCESS_CACHE_SIZE,
        max_lifetime: int | None = None,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self._jws = PyJWS()
        self._cache: OrderedDict[bytes, AccessClaims] = OrderedDict()
        self._cache_size = cache_size
        self._cache_keys: VerificationKeys = keys
        #: one tuple object per distinct ``amr`` (a handful), shared by every cached claim
        self._amrs: dict[tuple[str, ...], tuple[str, ...]] = {}

    def verify(self, token: str, *, now: int) -> AccessClaims:
        """Return the claims of a genuine, current token for this issuer and audience.

        Raises:
            TokenExpired: genuine but past ``exp`` (plus leeway).
            TokenInvalid: anything else wrong: format, header, key, signature, claims.
        """
        if self.keys is not self._cache_keys:
            # The keys were replaced (rotation, a key withdrawn): forget what the old set
            # verified, or a token of a withdrawn key would live on in the cache.
            self._cache.clear()
            self._cache_keys = self.keys
        # Keyed by a 128-bit digest, not the token: an entry is about 550 bytes instead of
        # 1.2 KB (the token string itself was most of it; see ACCESS_CACHE_SIZE).
        digest = hashlib.blake2b(token.encode(), digest_size=16).digest()
        claims = self._cache.get(digest)
        if claims is None:
            claims = self._verify_signed(token, now)
            if self._cache_size:
                self._remember(digest, claims, now)
        else:
            self._cache.move_to_end(digest)  # least recently used leaves first
        if now > claims.exp + self.leeway:
            raise TokenExpired("access token expired")
        return claims

    def _remember(self, digest: bytes, claims: AccessClaims, now: int) -> None:
        """Cache ``claims``; the least recently used entry leaves first, and expired ones
        as soon as they are the least recently used (a few per insertion): the cache holds
        tokens still in use, and a worker's memory does not grow with tokens nobody uses.
        """
        cache = self._cache
        cache[digest] = claims
        for _ in range(4):
            if not cache:
                break
            oldest = next(iter(cache.values()))
            if len(cache) > self._cache_size or now > oldest.exp + self.leeway:
                cache.popitem(last=False)
            else:
                break

    def _verify_signed(self, token: str, now: int) -> AccessClaims:
        check_compact_form(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("malformed token") from None
        if header.get("typ") != ACCESS_TOKEN_TYP:
            raise TokenInvalid("wrong token type")
        if _FORBIDDEN_HEADERS & header.keys():
            raise TokenInvalid("forbidden header parameter")
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            self._refuse_unknown_key(token, kid, now)
        if header.get("alg") != key.alg:
            raise TokenInvalid("algorithm not allowed for this key")
        try:
            decoded = self._jws.decode_complete(token, key=key.public_key, algorithms=[key.alg])
            payload = orjson.loads(decoded["payload"])
        except (jwt.PyJWTError, orjson.JSONDecodeError):
            raise TokenInvalid("bad signature or payload") from None
        return self._check_claims(payload, now)

    def _refuse_unknown_key(self, token: str, kid: object, now: int) -> NoReturn:
        """Refuse a token whose ``kid`` is not (or no longer) published.

        After a rotation the old key leaves the JWKS once every token it signed has
        expired, so a client still holding one gets here. "Log in" would be the wrong
        advice while its session can refresh: when the ``kid`` has the shape of ours (an
        RFC 7638 thumbprint) and the unverified payload names our issuer and audience and
        is past ``exp``, the answer is :class:`TokenExpired`. The unverified claims choose
        between two refusals and nothing else: no claim is returned, cached or acted on,
        and a forgery answered "expired" gains nothing, since a refresh needs the refresh
        token itself.
        """
        if not isinstance(kid, str) or not _THUMBPRINT_KID.fullmatch(kid):
            raise TokenInvalid("unknown signing key")
        try:
            payload = orjson.loads(base64url_decode(token.split(".")[1]))
        except (ValueError, orjson.JSONDecodeError):
            payload = None
        if (
            isinstance(payload, dict)
            and payload.get("iss") == self.issuer
            and payload.get("aud") == self.audience
            and type(payload.get("exp")) is int
            and now > payload["exp"] + self.leeway
        ):
            raise TokenExpired("access token expired (its signing key has been retired)")
        raise TokenInvalid("unknown signing key")

    def _check_claims(self, payload: Any, now: int) -> AccessClaims:
        if not isinstance(payload, dict) or any(c not in payload for c in _REQUIRED_CLAIMS):
            raise TokenInvalid("missing claims")
        strings = ("iss", "aud", "sub", "sid", "jti")
        if any(not isinstance(payload[c], str) for c in strings):
            raise TokenInvalid("malformed claims")
        if any(type(payload[c]) is not int for c in ("iat", "exp")):
            raise TokenInvalid("malformed claims")
        if payload["iss"] != self.issuer or payload["aud"] != self.audience:
            raise TokenInvalid("wrong issuer or audience")
        if payload["iat"] > now + self.leeway:
            raise TokenInvalid("issued in the future")
        nbf = payload.get("nbf")
        if nbf is not None and (type(nbf) is not int or nbf > now + self.leeway):
            raise TokenInvalid("not yet valid")
        if payload["exp"] <= payload["iat"]:
            raise TokenInvalid("malformed claims")
        if self.max_lifetime is not None:
            check_lifetime(
                payload["iat"], payload["exp"], max_lifetime=self.max_lifetime, leeway=self.leeway
            )
        amr = payload.get("amr", [])
        auth_time = payload.get("auth_time")
        if not isinstance(amr, list) or any(not isinstance(m, str) for m in amr):
            raise TokenInvalid("malformed claims")
        if auth_time is not None and type(auth_time) is not int:
            raise TokenInvalid("malformed claims")
        methods = tuple(amr)
        if len(self._amrs) < 256:  # a handful in practice; bounded whatever tokens say
            methods = self._amrs.setdefault(methods, methods)
        return AccessClaims(
            sub=payload["sub"],
            sid=payload["sid"],
            iat=payload["iat"],
            exp=payload["exp"],
            jti=payload["jti"],
            # Equal to ours (checked above): our objects, not one copy per cached token.
            iss=self.issuer,
            aud=self.audience,
            amr=methods,
            auth_time=auth_time,
        )


class AccessTokens(AccessTokenVerifier):
    """Issues and verifies access tokens for one issuer and audience.

    Args:
        keys: the key set; the newest key signs.
        issuer: the ``iss`` claim, also required on verification.
        audience: the ``aud`` claim, also required on verification.
        ttl: lifetime in seconds.
        leeway: clock skew tolerated on ``exp``, ``iat``, ``nbf``.
        cache_size: how many verified tokens to remember; 0 disables the cache.
    """

    keys: KeySet

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        leeway: int = 30,
        cache_size: int = ACCESS_CACHE_SIZE,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        super().__init__(
            keys,
            issuer=issuer,
            audience=audience,
            leeway=leeway,
            cache_size=cache_size,
            max_lifetime=ttl,
        )
        self.ttl = ttl
        self._signer: tuple[SigningKey, bytes, Callable[[bytes], bytes]] | None = None

    def _signer_for(self, key: SigningKey) -> tuple[bytes, Callable[[bytes], bytes]]:
        """The encoded header and the signing function of ``key`` (kept for the last key)."""
        cached = self._signer
        if cached is not None and cached[0] is key:
            return cached[1], cached[2]
        header = orjson.dumps(
            {"alg": key.alg, "kid": key.kid, "typ": ACCESS_TOKEN_TYP}, option=orjson.OPT_SORT_KEYS
        )
        algorithm = get_default_algorithms()[key.alg]
        private = key.private_key

        def sign(message: bytes) -> bytes:
            return algorithm.sign(message, private)

        self._signer = (key, _b64(header), sign)
        return self._signer[1], sign

    def issue(
        self,
        *,
        sub: str,
        sid: str,
        now: int,
        email_verified: bool | None = None,
        amr: tuple[str, ...] = (),
        auth_time: int | None = None,
    ) -> tuple[str, AccessClaims]:
        """Sign a new access token for session ``sid`` of user ``sub``, with the
        ``email_verified`` claim and the session's ``amr`` and ``auth_time``
        (:mod:`tokenward.authn`) when given."""
        key = self.keys.signing_key
        claims = AccessClaims(
            sub=sub,
            sid=sid,
            iat=now,
            exp=now + self.ttl,
            jti=secrets.token_urlsafe(16),
            iss=self.issuer,
            aud=self.audience,
            amr=amr,
            auth_time=auth_time,
        )
        header, sign = self._signer_for(key)
        # The payload in PyJWT's form (compact JSON, this key order) without its generic
        # encoder: one orjson call, the header pre-encoded once per key.
        body: dict[str, Any] = {
            "iss": claims.iss,
            "aud": claims.aud,
            "sub": claims.sub,
            "sid": claims.sid,
            "iat": claims.iat,
            "exp": claims.exp,
            "jti": claims.jti,
        }
        if email_verified is not None:
            body["email_verified"] = email_verified
        if amr:
            body["amr"] = list(amr)
        if auth_time is not None:
            body["auth_time"] = auth_time
        payload = _b64(orjson.dumps(body))
        signing_input = header + b"." + payload
        token = (signing_input + b"." + _b64(sign(signing_input))).decode()
        return token, claims
