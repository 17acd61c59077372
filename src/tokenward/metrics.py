"""Prometheus metrics, served at ``/metrics`` in the text exposition format.

=============================================  =========  ===================================
metric                                         type       labels
=============================================  =========  ===================================
``tokenward_http_requests_total``              counter    ``method``, ``route``, ``status``
``tokenward_http_request_duration_seconds``    histogram  ``method``, ``route``
``tokenward_logins_total``                     counter    ``outcome``: ok, failed, throttled,
                                                          rejected, unavailable
``tokenward_refreshes_total``                  counter    ``outcome``: ok, reused, failed,
                                                          throttled, rejected, unavailable
``tokenward_security_events_total``            counter    ``kind``: the security event kinds
                                                          (``login.failed``, ``throttled``,
                                                          ``refresh.reused``, ...)
``tokenward_rate_limit_refusals_total``        counter    ``limit``: ``login-pair``,
                                                          ``login-account``, ``login-ip``,
                                                          ``register-ip``, ``refresh-ip``,
                                                          ``refresh-session``
``tokenward_sessions_active``                  gauge      (computed on scrape, see below)
``tokenward_sessions_active_exact``            gauge      1, or 0 when the count is a lower
                                                          bound
``tokenward_revocation_feed_up``               gauge      1 while the revocation feed holds
                                                          its lease (the cache may vouch)
``tokenward_revocation_feed_drops_total``      counter    times the feed went down after
                                                          being up
``tokenward_build_info``                       gauge      ``version``
=============================================  =========  ===================================

``route`` is the route *template* (``/auth/sessions/{sid}``), never the raw path, so label
cardinality stays bounded; requests that match no route count as ``<unmatched>``. A
``reused`` refresh is a theft detection: the session was ended. A ``throttled`` security
event is one lock beginning; ``tokenward_rate_limit_refusals_total`` counts every attempt a
limit refused (an attempt refused by two limits counts under both). Security events count
when they are written, just after the response that caused them.

**Active sessions** are counted when scraped, at most once every
:data:`SESSIONS_CACHE_SECONDS` per process, from Redis's own key counters, not a scan of the
keyspace: on each primary, ``DBSIZE`` (a counter Redis keeps) times the share of session
keys (``tw:{u:*}:s:*``) among :data:`SESSIONS_SAMPLE` random keys (``RANDOMKEY``). That
costs the same at 10 thousand keys and at 100 million, and is within about ±3 % of the
node's keys (95 % of the time, ``1.96 * sqrt(0.25 / 1000)``); it is reported with
``tokenward_sessions_active_exact 0``. A primary holding at most :data:`SESSIONS_EXACT_KEYS`
keys is counted exactly by a ``SCAN`` instead (a few milliseconds). A counter maintained on
login and logout would drift, because sessions also end silently when their Redis key
expires; Redis's key counter does not.

**Verifiers** in other services (:mod:`tokenward.verifier`) count in plain attributes, so
they need no Prometheus; a service that has it registers a :class:`VerifierCollector`:

=============================================  =========  ===================================
``tokenward_verifier_jwks_fetches_total``      counter    ``outcome``: ok, failed
``tokenward_verifier_stale_refusals_total``    counter    (tokens refused: keys too old)
``tokenward_verifier_jwks_age_seconds``        gauge      since the last successful fetch
=============================================  =========  ===================================

Alert on any increase of ``tokenward_verifier_stale_refusals_total``: that service refuses
every token until it reaches the issuer's JWKS again.

**Several worker processes** (``tokenward serve --workers N``) use prometheus_client's
multiprocess mode: ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory, every
worker writes its counters there and any worker's ``/metrics`` adds them up, so a scrape
sees the whole server whichever worker answers. (Process metrics such as CPU and memory are
only exported with one worker: the multiprocess mode cannot merge them.)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tokenward.blocking_verifier import Verifier
    from tokenward.events import SecurityEvent
    from tokenward.stores.redis_client import RedisClient
    from tokenward.verifier import AsyncVerifier

__all__ = [
    "CONTENT_TYPE",
    "SESSIONS_CACHE_SECONDS",
    "SESSIONS_EXACT_KEYS",
    "SESSIONS_SAMPLE",
    "SESSIONS_SCAN_BUDGET",
    "Metrics",
    "SessionCounter",
    "VerifierCollector",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: A scrape reuses a session count younger than this (scrapers usually poll every 15-60 s).
SESSIONS_CACHE_SECONDS = 15.0
#: Longest time one count may take; past it the count is a lower bound.
SESSIONS_SCAN_BUDGET = 2.0
#: A primary with at most this many keys is counted exactly (a SCAN); above, estimated.
SESSIONS_EXACT_KEYS = 100_000
#: Random keys sampled per primary for the estimate.
SESSIONS_SAMPLE = 1000
_SESSION_KEYS = "tw:{u:*}:s:*"
_SCAN_COUNT = 1000
#: Seconds. Tokenward's own routes answer in well under 10 ms unless they hash a password.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UNMATCHED = "<unmatched>"


def _is_session_key(key: str | None) -> bool:
    return key is not None and key.startswith("tw:{u:") and "}:s:" in key


class SessionCounter:
    """Counts live sessions in Redis on demand, cached: exactly on small nodes, from
    ``DBSIZE`` and a sample of keys on large ones (see the module's docs).

    Args:
        redis: returns the session store's client (standalone, Sentinel or Cluster); called
            on each count, since the client only exists once the service has started.
        cache_seconds: see :data:`SESSIONS_CACHE_SECONDS`.
        budget: see :data:`SESSIONS_SCAN_BUDGET`.
        exact_keys: see :data:`SESSIONS_EXACT_KEYS`.
        sample: see :data:`SESSIONS_SAMPLE`.
    """

    def __init__(
        self,
        redis: Callable[[], RedisClient],
        *,
        cache_seconds: float = SESSIONS_CACHE_SECONDS,
        budget: float = SESSIONS_SCAN_BUDGET,
        exact_keys: int = SESSIONS_EXACT_KEYS,
        sample: int = SESSIONS_SAMPLE,
    ) -> None:
        self.redis = redis
        self.cache_seconds = cache_seconds
        self.budget = budget
        self.exact_keys = exact_keys
        self.sample = sample
        self.value: int | None = None
        self.exact = False
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Recount unless the last count is recent; a Redis failure leaves no value."""
        async with self._lock:  # concurrent scrapes share one count
            if time.monotonic() - self._at < self.cache_seconds:
                return
            try:
                self.value, self.exact = await self._count(self.redis())
            except Exception:  # a scrape must answer even when Redis does not
                self.value, self.exact = None, False
            self._at = time.monotonic()

    async def _count(self, client: Any) -> tuple[int, bool]:
        deadline = time.monotonic() + self.budget
        nodes = client.get_primaries() if hasattr(client, "get_primaries") else [None]
        total, exact = 0, True
        for node in nodes:
            found, node_exact = await self._count_node(client, node, deadline)
            total, exact = total + found, exact and node_exact
        return total, exact

    async def _count_node(self, client: Any, node: Any, deadline: float) -> tuple[int, bool]:
        """One primary's sessions: ``(count, exact)``."""
        on = {} if node is None else {"target_nodes": node}
        keys = int(await client.execute_command("DBSIZE", **on))
        if keys <= self.exact_keys:
            found, cursor = 0, 0
            while True:
                cursor, batch = await client.execute_command(
                    "SCAN", cursor, "MATCH", _SESSION_KEYS, "COUNT", _SCAN_COUNT, **on
                )
                if isinstance(cursor, dict):  # a cluster client names the node it asked
                    (cursor,) = cursor.values()
                found += len(batch)
                if int(cursor) == 0:
                    return found, True
                if time.monotonic() > deadline:
                    return found, False
        hits = drawn = 0
        while drawn < self.sample and time.monotonic() <= deadline:
            if node is None:
                pipe = client.pipeline(transaction=False)
                for _ in range(min(100, self.sample - drawn)):
                    pipe.randomkey()
                batch = await pipe.execute()
            else:
                batch = [await client.execute_command("RANDOMKEY", **on)]
            drawn += len(batch)
            hits += sum(1 for key in batch if _is_session_key(key))
        return (round(keys * hits / drawn) if drawn else 0), False


class _SessionsCollector(Collector):
    """Exposes the last :class:`SessionCounter` result (collectors are synchronous)."""

    def __init__(self, counter: SessionCounter) -> None:
        self.counter = counter

    def collect(self) -> Iterator[Metric]:
        if self.counter.value is None:
            return
        yield GaugeMetricFamily(
            "tokenward_sessions_active",
            "Live sessions in the session store (counted on scrape).",
            value=self.counter.value,
        )
        yield GaugeMetricFamily(
            "tokenward_sessions_active_exact",
            "1 when tokenward_sessions_active is exact, 0 when estimated (large nodes, or "
            "out of time).",
            value=1 if self.counter.exact else 0,
        )


class VerifierCollector(Collector):
    """Exports a verifier's counters: ``registry.register(VerifierCollector(verifier))``.

    Args:
        verifier: an :class:`~tokenward.verifier.AsyncVerifier` or a blocking
            :class:`~tokenward.blocking_verifier.Verifier`.
    """

    def __init__(self, verifier: AsyncVerifier | Verifier) -> None:
        self.verifier = verifier

    def collect(self) -> Iterator[Metric]:
        stats = self.verifier.stats
        fetches = CounterMetricFamily(
            "tokenward_verifier_jwks_fetches",
            "JWKS fetches by outcome (a failed fetch keeps the previous keys).",
            labels=["outcome"],
        )
        fetches.add_metric(["ok"], stats.jwks_fetches_ok)
        fetches.add_metric(["failed"], stats.jwks_fetches_failed)
        yield fetches
        yield CounterMetricFamily(
            "tokenward_verifier_stale_refusals",
            "Tokens refused because no JWKS fetch succeeded within max_stale.",
            value=stats.stale_refusals,
        )
        age = self.verifier.keys_age
        if age != float("inf"):
            yield GaugeMetricFamily(
                "tokenward_verifier_jwks_age_seconds",
                "Seconds since the last successful JWKS fetch.",
                value=age,
            )


class _BuildInfo(Collector):
    def __init__(self, version: str) -> None:
        self.version = version

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "tokenward_build_info", "Tokenward version (always 1).", labels=["version"]
        )
        info.add_metric([self.version], 1)
        yield info


class Metrics:
    """The metrics of one HTTP app (one per process).

    Multiprocess mode is on when ``PROMETHEUS_MULTIPROC_DIR`` is set when this is created.

    Args:
        sessions: counts active sessions on scrape; none when omitted.
    """

    def __init__(self, *, sessions: SessionCounter | None = None) -> None:
        from tokenward import __version__

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.sessions = sessions
        self.registry = CollectorRegistry()
        # In multiprocess mode the values live in files, read back by MultiProcessCollector;
        # registering the metrics themselves as well would count them twice.
        own: CollectorRegistry | None
        if self.multiprocess:
            own = None
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            own = self.registry
            ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "tokenward_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "tokenward_http_request_duration_seconds",
            "Time from request to the end of the response, by method and route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=own,
        )
        self.logins = Counter(
            "tokenward_logins",
            "Login attempts by outcome: ok, failed (wrong email or password), throttled, "
            "rejected (malformed, CSRF).",
            ["outcome"],
            registry=own,
        )
        self.refreshes = Counter(
            "tokenward_refreshes",
            "Refresh attempts by outcome: ok, reused (theft detected, session ended), failed, "
            "throttled, rejected.",
            ["outcome"],
            registry=own,
        )
        self.security_events = Counter(
            "tokenward_security_events",
            "Security events recorded, by kind (see GET /auth/events).",
            ["kind"],
            registry=own,
        )
        self.rate_limit_refusals = Counter(
            "tokenward_rate_limit_refusals",
            "Attempts refused with 429, by the limit that refused them.",
            ["limit"],
            registry=own,
        )
        # livemin: with several workers a scrape shows 0 as soon as any live worker's feed
        # is down (each worker has its own feed and cache).
        self.feed_up = Gauge(
            "tokenward_revocation_feed_up",
            "1 while the revocation feed is subscribed and holds its lease; 0 while every "
            "request checks its session in Redis (slower, still safe).",
            multiprocess_mode="livemin",
            registry=own,
        )
        self.feed_drops = Counter(
            "tokenward_revocation_feed_drops",
            "Times the revocation feed went down after being up (connection lost, lease "
            "lapsed, subscription lost).",
            registry=own,
        )
        if sessions is not None:
            self.registry.register(_SessionsCollector(sessions))
        self.registry.register(_BuildInfo(__version__))
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency (label children are cached: the hot path)."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            if len(self._children) < 10_000:  # bounded even if methods are odd
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def login(self, outcome: str) -> None:
        """Count a login attempt."""
        self.logins.labels(outcome).inc()

    def refresh(self, outcome: str) -> None:
        """Count a refresh attempt."""
        self.refreshes.labels(outcome).inc()

    def security_event(self, event: SecurityEvent) -> None:
        """Count a security event (the :class:`~tokenward.events.SecurityEvents` observer)."""
        self.security_events.labels(event.kind.value).inc()

    def revocation_feed(self, up: bool) -> None:
        """The feed's hook (:class:`~tokenward.stores.redis_feed.RevocationFeed`
        ``on_change``): it came up, or it went down (a drop)."""
        self.feed_up.set(1 if up else 0)
        if not up:
            self.feed_drops.inc()

    def rate_limit_refused(self, limit: str) -> None:
        """Count an attempt a limit refused (the :class:`~tokenward.throttle.Throttle` hook)."""
        self.rate_limit_refusals.labels(limit).inc()

    async def render(self) -> bytes:
        """The exposition text (counts active sessions first if that is due)."""
        if self.sessions is not None:
            await self.sessions.refresh()
        return generate_latest(self.registry)
