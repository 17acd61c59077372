"""Verifying Tokenward access tokens in other services (asyncio; blocking code: ``Verifier``).

::

    async with AsyncVerifier("https://auth.example.com", redis_url="redis://cache:6379/0") as v:
        claims = await v.verify(token)  # AccessClaims, or raises a TokenwardError

Keys come from the issuer's JWKS (``<issuer>/.well-known/jwks.json``), fetched with httpx
at start and kept in memory. A token naming an unknown ``kid`` (the issuer rotated keys)
triggers a refetch, at most once per ``min_refetch_interval`` (30 s) however many such
tokens arrive, so forged ``kid`` values cannot turn the verifier into a JWKS flood; the
set is also refreshed in the background every ``keys_max_age`` (5 min), so retired keys
stop verifying. The claim checks are the issuer's own
(:class:`~tokenward.tokens.AccessTokenVerifier`): ``typ``, pinned ``alg``, ``iss``, ``aud``,
``exp``/``iat``/``nbf`` with leeway, and the verified-token cache. ``max_lifetime`` (1 hour
by default) bounds ``exp - iat``: a verifier does not know the issuer's
``TOKENWARD_ACCESS_TTL`` (10 minutes by default), so a correctly signed token that claims to
live longer than ``max_lifetime`` plus leeway was not minted by the issuer as configured (a
leaked signing key, say) and is refused, instead of being honoured for as long as its
signer chose. Set it to the issuer's access TTL to tighten it. ``audience`` is this
service's name: a token the issuer minted for another service (``POST /auth/token``) is
refused here, and a token for this one everywhere else.

**When the issuer cannot be reached**, the keys of the last successful fetch stay in use,
and refreshes are retried with exponential backoff and jitter (1 s doubling to
``max_retry_interval``, 60 s), so a fleet of verifiers does not hammer an issuer that is
coming back. But not forever: a key withdrawn at the issuer after a compromise would stay
trusted by every service cut off from it. Once the last successful fetch is older than
``max_stale`` (1 hour by default) every verification fails closed with
:class:`~tokenward.errors.KeysStale` (503, ``jwks-stale``), logged once and counted in
:attr:`AsyncVerifier.stats` (exported by :class:`~tokenward.metrics.VerifierCollector`),
until a fetch succeeds again. An hour costs little availability: while the issuer itself
is down it mints no tokens, and those it minted expire within ``TOKENWARD_ACCESS_TTL``
(10 minutes) anyway; it bounds how long a withdrawn key outlives its withdrawal.

**Fetches** go through :func:`~tokenward.jwks.fetch_jwks`: ``https://`` only (plain HTTP
to a loopback issuer, or with ``allow_insecure_http=True``), same-origin redirects only, the
body bounded by ``max_jwks_bytes`` (64 KiB) while it streams, ``timeout`` over the whole
fetch, and TLS always verified (a private CA is passed as ``tls=ssl.SSLContext``).

Ended sessions, when given the Redis URL Tokenward uses: the verifier subscribes to the
feed on which every ending of a session is published (``tw:ended``) and keeps the same
coherent cache of live sessions as the server (:class:`~tokenward.revocation.SessionCache`
driven by :class:`~tokenward.stores.redis_feed.RevocationFeed`). The feed only announces
*ended* sessions, so the first time a session is seen (and again once a minute) its record
is looked up in Redis; after that, requests cost no Redis round trip, and a logout is
refused within a second. While the feed is down every request looks its session up, and
when Redis is unreachable requests fail with ``Unavailable``: fail closed. Without Redis
only the token itself is checked, and a token stays valid until ``exp`` after logout
(``TOKENWARD_ACCESS_TTL``, 10 minutes by default).

:class:`AsyncVerifier` is the implementation; :class:`~tokenward.blocking_verifier.Verifier`
runs one on a private event loop thread for blocking code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import jwt

from tokenward.clock import Clock, SystemClock
from tokenward.errors import ConfigError, KeysStale, SessionEnded, TokenInvalid, Unavailable
from tokenward.jwks import (
    DEFAULT_MAX_JWKS_BYTES,
    JwksFetchError,
    PublicKeySet,
    check_jwks_url,
    fetch_jwks,
)
from tokenward.revocation import SessionCache
from tokenward.tokens import MAX_TOKEN_LENGTH, AccessClaims, AccessTokenVerifier

if TYPE_CHECKING:
    # Redis is optional for a verifier (only ``redis_url`` needs it): see _redis_support().
    from tokenward.sessions import SessionState
    from tokenward.stores.redis_client import RedisClient
    from tokenward.stores.redis_feed import RevocationFeed
    from tokenward.stores.redis_sessions import RedisSessionStore

__all__ = [
    "DEFAULT_MAX_LIFETIME",
    "DEFAULT_MAX_STALE",
    "AsyncVerifier",
    "VerifierStats",
    "bearer_token",
]

log = logging.getLogger("tokenward.verifier")

#: Seconds after the last successful JWKS fetch past which every token is refused.
DEFAULT_MAX_STALE = 3600.0
#: Longest token lifetime (``exp - iat``) accepted, leeway aside: six times the issuer's
#: default ``TOKENWARD_ACCESS_TTL``, room for a deployment that raised it, not for a token
#: minted to live for days.
DEFAULT_MAX_LIFETIME = 3600
#: First delay before retrying a failed JWKS fetch; it doubles up to ``max_retry_interval``.
_FIRST_RETRY = 1.0


@dataclass
class VerifierStats:
    """What a verifier has done, for monitoring (plain counters: no Prometheus needed).

    Attributes:
        jwks_fetches_ok: JWKS fetches that replaced the key set.
        jwks_fetches_failed: JWKS fetches that failed (the old keys stayed).
        stale_refusals: verifications refused because the keys were older than
            ``max_stale``; anything above 0 means this service is refusing every token.
    """

    jwks_fetches_ok: int = 0
    jwks_fetches_failed: int = 0
    stale_refusals: int = 0


def _redis_support() -> tuple[
    Callable[..., RedisClient], type[RevocationFeed], type[RedisSessionStore]
]:
    """The Redis client and stores, imported only when a verifier is given ``redis_url``."""
    try:
        from tokenward.stores.redis_client import connect_redis
        from tokenward.stores.redis_feed import RevocationFeed
        from tokenward.stores.redis_sessions import RedisSessionStore
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in {"redis", "hiredis"}:
            raise
        raise ImportError(
            "AsyncVerifier(redis_url=...) needs the redis package: pip install 'tokenward[redis]'",
            name=exc.name,
        ) from exc
    return connect_redis, RevocationFeed, RedisSessionStore


class _LockedSessionCache(SessionCache):
    """A :class:`SessionCache` safe to read from request threads while the feed writes."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()

    def set_healthy(self, healthy: bool) -> None:
        with self._lock:
            super().set_healthy(healthy)

    def ticket(self) -> int:
        with self._lock:
            return super().ticket()

    def get(self, sid: str, *, now: int) -> SessionState | None:
        with self._lock:
            return super().get(sid, now=now)

    def put(self, sid: str, state: SessionState, *, ticket: int, now: int) -> None:
        with self._lock:
            super().put(sid, state, ticket=ticket, now=now)

    def forget(self, sids: Any) -> None:
        with self._lock:
            super().forget(sids)

    def reset(self) -> None:
        with self._lock:
            super().reset()


def _unverified_kid(token: str) -> str | None:
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        return None
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value.

    Raises:
        TokenInvalid: no header, or not the Bearer scheme.
    """
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenInvalid("expected 'Authorization: Bearer <token>'")
    return token


class AsyncVerifier:
    """Verifies access tokens from the issuer's JWKS; asyncio API.

    Use as ``async with AsyncVerifier(...) as verifier:`` or call :meth:`start` and
    :meth:`stop`.

    Args:
        issuer: Tokenward's ``TOKENWARD_ISSUER``; the required ``iss`` claim.
        audience: the required ``aud`` claim (``TOKENWARD_AUDIENCE``).
        jwks_url: where the keys are; ``<issuer>/.well-known/jwks.json`` by default.
        redis_url: Tokenward's ``TOKENWARD_REDIS_URL``, to refuse ended sessions at once;
            without it a token is good until it expires.
        leeway: clock skew tolerated on ``exp``, ``iat``, ``nbf`` (``TOKENWARD_LEEWAY``).
        max_lifetime: a token with ``exp - iat`` above this plus ``leeway`` is refused
            (:class:`~tokenward.errors.TokenInvalid`) however well signed; at least the
            issuer's ``TOKENWARD_ACCESS_TTL`` (and its ``POST /auth/token`` lifetimes).
        min_refetch_interval: seconds between JWKS fetches caused by unknown ``kid`` values.
        keys_max_age: seconds after which the key set is refreshed in the background.
        max_stale: seconds after the last successful JWKS fetch past which every token is
            refused with :class:`~tokenward.errors.KeysStale` (at least ``keys_max_age``).
        max_retry_interval: longest backoff between retries of a failing JWKS fetch.
        max_jwks_bytes: a JWKS response larger than this fails the fetch.
        allow_insecure_http: allow a plain ``http://`` JWKS URL to a host that is not
            loopback (anyone on the path could then replace the keys).
        tls: an :class:`ssl.SSLContext` for a private CA
            (:func:`tokenward.jwks.tls_context`); certificates are always verified.
        timeout: seconds allowed for each network operation, and for a whole JWKS fetch.
        clock: the time source for token checks; the system clock by default.
        monotonic: the time source for key ages and retries (tests move it on).

    Raises:
        ConfigError: a JWKS URL that is not ``https://`` (see ``allow_insecure_http``),
            ``max_stale`` shorter than ``keys_max_age``, ``max_lifetime`` not positive,
            or ``tls`` not an SSL context.
    """

    def __init__(
        self,
        issuer: str,
        *,
        audience: str = "tokenward",
        jwks_url: str | None = None,
        redis_url: str | None = None,
        leeway: int = 30,
        max_lifetime: int = DEFAULT_MAX_LIFETIME,
        min_refetch_interval: float = 30.0,
        keys_max_age: float = 300.0,
        max_stale: float = DEFAULT_MAX_STALE,
        max_retry_interval: float = 60.0,
        max_jwks_bytes: int = DEFAULT_MAX_JWKS_BYTES,
        allow_insecure_http: bool = False,
        tls: ssl.SSLContext | None = None,
        timeout: float = 2.0,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        issuer = issuer.rstrip("/")
        if type(max_lifetime) is not int or max_lifetime <= 0:
            raise ConfigError("max_lifetime: a positive number of seconds")
        self.jwks_url = check_jwks_url(
            jwks_url or f"{issuer}/.well-known/jwks.json", allow_insecure_http=allow_insecure_http
        )
        if max_stale < keys_max_age:
            raise ConfigError("max_stale: must be at least keys_max_age")
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            # verify=False, a path or a string would each silently change what is trusted.
            raise ConfigError("tls: pass an ssl.SSLContext; certificates are always verified")
        if redis_url is not None:
            _redis_support()  # a missing redis package is a construction error, not a 500 later
        self.redis_url = redis_url
        self.audience = audience
        self.min_refetch_interval = min_refetch_interval
        self.keys_max_age = keys_max_age
        self.max_stale = max_stale
        self.max_retry_interval = max_retry_interval
        self.max_jwks_bytes = max_jwks_bytes
        self.timeout = timeout
        self.clock: Clock = clock or SystemClock()
        self.stats = VerifierStats()
        self._tls = tls
        self._monotonic = monotonic
        self._keys = PublicKeySet([])
        self.max_lifetime = max_lifetime
        self._tokens = AccessTokenVerifier(
            self._keys, issuer=issuer, audience=audience, leeway=leeway, max_lifetime=max_lifetime
        )
        self._cache = _LockedSessionCache()
        self._http: httpx.AsyncClient | None = None
        self._redis: RedisClient | None = None
        self._store: RedisSessionStore | None = None
        self._feed: RevocationFeed | None = None
        self._fetch_lock = asyncio.Lock()
        self._last_attempt = -float("inf")
        self._last_success = -float("inf")
        self._failures = 0
        self._retry_at = -float("inf")
        self._stale_logged = False
        self._background: asyncio.Task[None] | None = None

    @property
    def key_ids(self) -> frozenset[str]:
        """The ``kid`` of every key currently trusted."""
        return self._keys.kids

    @property
    def keys_age(self) -> float:
        """Seconds since the last successful JWKS fetch (``inf`` before the first)."""
        return self._monotonic() - self._last_success

    async def start(self) -> None:
        """Fetch the keys and, with Redis, subscribe to the ended-session feed.

        Raises:
            Unavailable: the JWKS could not be fetched.
        """
        self._http = httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, verify=self._tls or True
        )
        try:
            if self.redis_url is not None:
                connect_redis, redis_feed, redis_store = _redis_support()
                self._redis = connect_redis(self.redis_url, timeout=self.timeout)
                self._store = redis_store(self._redis)
                self._feed = redis_feed(self._redis, self._cache)
                await self._feed.start(wait=self.timeout)
            async with self._fetch_lock:
                if not await self._fetch():
                    raise Unavailable(f"cannot fetch the JWKS from {self.jwks_url}")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close the connections :meth:`start` opened."""
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = self._store = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncVerifier:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def verify(self, token: str) -> AccessClaims:
        """The claims of a genuine, current token whose session is live.

        Raises:
            TokenExpired: genuine but expired (401, the client should refresh).
            TokenInvalid: not a genuine token for this issuer and audience (401).
            SessionEnded: the session has ended (401); only with ``redis_url``.
            KeysStale: no JWKS fetch succeeded for ``max_stale`` seconds (503).
            Unavailable: Redis did not answer and the cache could not vouch (503).
        """
        now = self.clock.now()
        self._refresh_if_stale()
        self._check_fresh()
        claims = self._claims(token, now)
        if claims is None:
            await self._refetch(_unverified_kid(token) or "")
            claims = self._claims(token, now)
            if claims is None:
                raise TokenInvalid("unknown signing key")
        if self._store is not None:
            await self._check_session(claims, now)
        return claims

    async def verify_authorization(self, authorization: str | None) -> AccessClaims:
        """:meth:`verify` the token of an ``Authorization: Bearer <token>`` header value."""
        return await self.verify(bearer_token(authorization))

    def verify_cached(self, token: str) -> AccessClaims | None:
        """Verify without any I/O, or return ``None`` when I/O is needed.

        ``None`` means: the token names an unknown key, the session is not in the cache,
        or the keys are due for a refresh; :meth:`verify` then does the rest. Safe to
        call from any thread.

        Raises:
            The errors of :meth:`verify` that need no I/O to decide.
        """
        if self.keys_age > self.keys_max_age:
            return None
        now = self.clock.now()
        claims = self._claims(token, now)
        if claims is None or self._store is None:
            return claims
        state = self._cache.get(claims.sid, now=now)
        if state is None:
            return None
        if state.uid != claims.sub:
            raise SessionEnded("the session has ended")
        return claims

    def _check_fresh(self) -> None:
        """Fail closed once the keys are older than ``max_stale`` (see the module docstring)."""
        age = self.keys_age
        if age <= self.max_stale:
            self._stale_logged = False
            return
        self.stats.stale_refusals += 1
        if not self._stale_logged:
            self._stale_logged = True
            log.error(
                "JWKS from %s not fetched for %.0f s (max_stale %.0f s): refusing every token",
                self.jwks_url,
                age,
                self.max_stale,
            )
        raise KeysStale(f"no JWKS fetch succeeded for over {self.max_stale:.0f} s")

    def _claims(self, token: str, now: int) -> AccessClaims | None:
        """Verified claims; ``None`` when the token names a key we do not have."""
        try:
            return self._tokens.verify(token, now=now)
        except TokenInvalid:
            kid = _unverified_kid(token)
            if kid is not None and self._keys.get(kid) is None:
                return None
            raise

    async def _check_session(self, claims: AccessClaims, now: int) -> None:
        # The same steps as Sessions.state, over the verifier's own cache and feed.
        assert self._store is not None  # noqa: S101 - only called when Redis is configured
        state = self._cache.get(claims.sid, now=now)
        if state is None:
            ticket = self._cache.ticket()
            state = await self._store.get(claims.sub, claims.sid, now=now)
            if state is None:
                raise SessionEnded("the session has ended")
            self._cache.put(claims.sid, state, ticket=ticket, now=now)
        if state.uid != claims.sub:
            raise SessionEnded("the session has ended")

    async def _refetch(self, kid: str) -> None:
        """Fetch the keys again for ``kid``, unless a fetch was attempted too recently."""
        async with self._fetch_lock:
            # Many requests with the new kid arrive together: the first one fetches.
            if self._keys.get(kid) is not None:
                return
            if self._monotonic() - self._last_attempt >= self.min_refetch_interval:
                await self._fetch()

    def _refresh_if_stale(self) -> None:
        """Start a background refresh when the keys are due and no retry is pending."""
        now = self._monotonic()
        due = now - self._last_success > self.keys_max_age and now >= self._retry_at
        if due and self._http is not None and self._background is None:
            self._background = asyncio.create_task(self._background_refresh())

    async def _background_refresh(self) -> None:
        try:
            async with self._fetch_lock:
                # Another fetch (an unknown kid's) may have succeeded or failed meanwhile.
                now = self._monotonic()
                if now - self._last_success > self.keys_max_age and now >= self._retry_at:
                    await self._fetch()
        finally:
            self._background = None

    async def _fetch(self) -> bool:
        """One JWKS fetch (caller holds the lock); keeps the old keys on any failure."""
        self._last_attempt = self._monotonic()
        if self._http is None:
            return False
        try:
            keys = await fetch_jwks(
                self._http, self.jwks_url, max_bytes=self.max_jwks_bytes, seconds=self.timeout
            )
        except JwksFetchError as exc:
            self.stats.jwks_fetches_failed += 1
            self._failures += 1
            # Exponential backoff with jitter: verifiers that lost the issuer together do
            # not all come back to it in the same second.
            delay = min(self.max_retry_interval, _FIRST_RETRY * 2 ** (self._failures - 1))
            self._retry_at = self._monotonic() + delay * random.uniform(0.5, 1.0)  # noqa: S311
            log.warning("JWKS fetch from %s failed: %s", self.jwks_url, exc)
            return False
        self._keys = keys
        self._tokens.keys = keys
        self._last_success = self._monotonic()
        self._failures = 0
        self._retry_at = -float("inf")
        self.stats.jwks_fetches_ok += 1
        log.info("JWKS fetched from %s: %d keys", self.jwks_url, len(keys))
        return True
