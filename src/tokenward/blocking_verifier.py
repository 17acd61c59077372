"""The blocking verifier, for WSGI apps (Flask, Django), scripts and thread pools.

::

    verifier = Verifier("https://auth.example.com", redis_url="redis://cache:6379/0")
    claims = verifier.verify(token)     # AccessClaims, or raises a TokenwardError

Everything is :class:`~tokenward.verifier.AsyncVerifier`'s (keys, claim checks, ended
sessions; see :mod:`tokenward.verifier`); this module only runs it on a private event loop
thread and answers tokens whose key and session are already known in the caller's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from tokenward.clock import Clock
from tokenward.errors import Unavailable
from tokenward.jwks import DEFAULT_MAX_JWKS_BYTES
from tokenward.tokens import AccessClaims
from tokenward.verifier import (
    DEFAULT_MAX_LIFETIME,
    DEFAULT_MAX_STALE,
    AsyncVerifier,
    VerifierStats,
    bearer_token,
)

__all__ = ["Verifier"]

T = TypeVar("T")

#: Seconds a verifier whose start failed waits before trying again.
BOOT_RETRY_DELAY = 1.0


class Verifier:
    """Blocking front of :class:`AsyncVerifier`, for WSGI apps (Flask, Django) and scripts.

    Takes the arguments of :class:`AsyncVerifier`. The asyncio side (JWKS fetches, the
    Redis feed) runs on a private daemon thread started on first use in each process, so it
    survives servers that fork after import (gunicorn ``--preload``). A token whose key and
    session are already known is answered in the calling thread with no I/O. Thread-safe.
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
        self._make = functools.partial(
            AsyncVerifier,
            issuer,
            audience=audience,
            jwks_url=jwks_url,
            redis_url=redis_url,
            leeway=leeway,
            max_lifetime=max_lifetime,
            min_refetch_interval=min_refetch_interval,
            keys_max_age=keys_max_age,
            max_stale=max_stale,
            max_retry_interval=max_retry_interval,
            max_jwks_bytes=max_jwks_bytes,
            allow_insecure_http=allow_insecure_http,
            tls=tls,
            timeout=timeout,
            clock=clock,
            monotonic=monotonic,
        )
        self._make()  # check the arguments now (ConfigError), not on the first request
        #: Counters of every verifier this object ran (one per process; see AsyncVerifier).
        self.stats = VerifierStats()
        self._timeout = timeout
        self._lock = threading.Lock()
        self._failed_at = -float("inf")
        self._pid: int | None = None
        self._inner: AsyncVerifier | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def key_ids(self) -> frozenset[str]:
        """The ``kid`` of every key currently trusted (empty before the first use)."""
        return self._inner.key_ids if self._inner is not None else frozenset()

    @property
    def keys_age(self) -> float:
        """Seconds since the last successful JWKS fetch (``inf`` before the first)."""
        return self._inner.keys_age if self._inner is not None else float("inf")

    def start(self) -> None:
        """Start now rather than on the first :meth:`verify` (to fail early).

        Raises:
            Unavailable: the JWKS could not be fetched.
        """
        self._running()

    def close(self) -> None:
        """Stop the thread and close the connections."""
        with self._lock:
            inner, loop, thread = self._inner, self._loop, self._thread
            self._inner = self._loop = self._thread = None
            self._pid = None
        if inner is None or loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(inner.stop(), loop).result(self._timeout + 5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self._timeout + 5)
        loop.close()

    def __enter__(self) -> Verifier:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def verify(self, token: str) -> AccessClaims:
        """See :meth:`AsyncVerifier.verify`."""
        inner, loop = self._running()
        claims = inner.verify_cached(token)
        if claims is not None:
            return claims
        return self._call(loop, inner.verify(token))

    def verify_authorization(self, authorization: str | None) -> AccessClaims:
        """:meth:`verify` the token of an ``Authorization: Bearer <token>`` header value."""
        return self.verify(bearer_token(authorization))

    def _running(self) -> tuple[AsyncVerifier, asyncio.AbstractEventLoop]:
        inner, loop = self._inner, self._loop
        if inner is not None and loop is not None and self._pid == os.getpid():
            return inner, loop
        with self._lock:
            inner, loop = self._inner, self._loop
            if inner is None or loop is None or self._pid != os.getpid():
                inner, loop = self._boot()
            return inner, loop

    def _boot(self) -> tuple[AsyncVerifier, asyncio.AbstractEventLoop]:
        # While the issuer is down, requests must not each try a JWKS fetch.
        if time.monotonic() - self._failed_at < BOOT_RETRY_DELAY:
            raise Unavailable("the JWKS could not be fetched; retrying shortly")
        # After a fork the parent's thread does not exist here: start afresh.
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="tokenward-verifier", daemon=True)
        thread.start()
        inner = self._make()
        inner.stats = self.stats  # one set of counters across restarts and forks
        try:
            self._call(loop, inner.start())
        except BaseException:
            self._failed_at = time.monotonic()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self._timeout + 5)
            loop.close()
            raise
        self._inner, self._loop, self._thread, self._pid = inner, loop, thread, os.getpid()
        return inner, loop

    def _call(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            # Bounded: a fetch, a Redis lookup and the feed's start each take <= timeout.
            return future.result(3 * self._timeout + 1)
        except TimeoutError:
            future.cancel()
            raise Unavailable("the verifier did not answer in time") from None
