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

**Per request**, counting costs a dictionary lookup and a few additions: the HTTP request
counter and latency histogram are plain numbers of the process (:class:`_RequestStats`),
rendered only on scrape, not prometheus_client objects, which take a lock per increment.

**Several worker processes** (``tokenward serve --workers N``) use prometheus_client's
multiprocess mode: ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory, every
worker writes its counters there and any worker's ``/metrics`` adds them up, so a scrape
sees the whole server whichever worker answers. (Process metrics such as CPU and memory are
only exported with one worker: the multiprocess mode cannot merge them.)
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


_REQUESTS = "tokenward_http_requests"
_REQUESTS_HELP = "HTTP requests by method, route template and status."
_LATENCY = "tokenward_http_request_duration_seconds"
_LATENCY_HELP = "Time from request to the end of the response, by method and route template."
_BOUNDS = (*_LATENCY_BUCKETS, math.inf)
_LE = tuple(floatToGoString(bound) for bound in _BOUNDS)  # type: ignore[no-untyped-call]


class _Latency:
    """One ``(method, route)`` histogram: a count per bucket (not cumulative) and a sum."""

    __slots__ = ("bucket_keys", "buckets", "sum", "sum_key")

    def __init__(self, method: str, route: str) -> None:
        self.buckets = [0.0] * len(_BOUNDS)
        self.sum = 0.0
        labels = ["method", "route", "le"]
        self.bucket_keys = [
            mmap_key(_LATENCY, _LATENCY + "_bucket", labels, [method, route, le], _LATENCY_HELP)
            for le in _LE
        ]
        self.sum_key = mmap_key(
            _LATENCY, _LATENCY + "_sum", ["method", "route"], [method, route], _LATENCY_HELP
        )


class _Count:
    """One ``(method, route, status)`` counter, and its route's histogram."""

    __slots__ = ("key", "latency", "value")

    def __init__(self, method: str, route: str, status: int, latency: _Latency) -> None:
        self.value = 0.0
        self.latency = latency
        self.key = mmap_key(
            _REQUESTS,
            _REQUESTS + "_total",
            ["method", "route", "status"],
            [method, route, str(status)],
            _REQUESTS_HELP,
        )


class _RequestStats:
    """Request counts and latency histograms of this process, as plain numbers.

    Counting a request is a dictionary lookup, a bucket search and three additions: no
    lock (requests are counted on the event loop's thread, and a scrape reads the numbers
    on that same thread) and no label formatting, where prometheus_client's counter and
    histogram take a lock per increment (three per request) and, in multiprocess mode,
    the process id too. The key (method, route template, status) is bounded: methods are
    mapped to 8 names, routes to the app's templates, statuses to 100-599.

    In multiprocess mode every addition is also written to this process's files in
    ``PROMETHEUS_MULTIPROC_DIR``, in prometheus_client's own format (``counter_...`` and
    ``histogram_...`` files of its :class:`MmapedDict`), so any process's scrape adds this
    one's numbers up at once. The files are opened at the first request: a process that
    forks must not have counted before it forks (servers fork or spawn workers before
    they serve).
    """

    def __init__(self, *, multiprocess: bool) -> None:
        self.multiprocess = multiprocess
        self.counts: dict[tuple[str, str, int], _Count] = {}
        self.latency: dict[tuple[str, str], _Latency] = {}
        self._files: tuple[MmapedDict, MmapedDict] | None = None

    def _open_files(self) -> tuple[MmapedDict, MmapedDict]:
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        pid = os.getpid()
        # "<type>_<name>.db": the collector reads the type from the part before "_".
        counter = MmapedDict(f"{directory}/counter_tokenward-http-{pid}.db")  # type: ignore[no-untyped-call]
        histogram = MmapedDict(f"{directory}/histogram_tokenward-http-{pid}.db")  # type: ignore[no-untyped-call]
        self._files = (counter, histogram)
        return self._files

    def _count(self, method: str, route: str, status: int) -> _Count:
        latency = self.latency.get((method, route))
        if latency is None:
            latency = self.latency[(method, route)] = _Latency(method, route)
        count = self.counts[(method, route, status)] = _Count(method, route, status, latency)
        if self.multiprocess:
            # A file left by an earlier process with this pid: go on from its numbers.
            counter, histogram = self._files or self._open_files()
            count.value = counter.read_value(count.key)[0]  # type: ignore[no-untyped-call]
            latency.sum = histogram.read_value(latency.sum_key)[0]  # type: ignore[no-untyped-call]
            latency.buckets = [
                histogram.read_value(key)[0]  # type: ignore[no-untyped-call]
                for key in latency.bucket_keys
            ]
        return count

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        count = self.counts.get((method, route, status))
        if count is None:
            count = self._count(method, route, status)
        count.value += 1
        latency = count.latency
        i = bisect_left(_BOUNDS, seconds)  # the first bucket whose bound is >= seconds
        latency.buckets[i] += 1
        latency.sum += seconds
        if self._files is not None:
            counter, histogram = self._files
            counter.write_value(count.key, count.value, 0.0)  # type: ignore[no-untyped-call]
            histogram.write_value(latency.bucket_keys[i], latency.buckets[i], 0.0)  # type: ignore[no-untyped-call]
            histogram.write_value(latency.sum_key, latency.sum, 0.0)  # type: ignore[no-untyped-call]


class _RequestsCollector(Collector):
    """Exports :class:`_RequestStats` (one process; multiprocess mode reads the files)."""

    def __init__(self, stats: _RequestStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            _REQUESTS, _REQUESTS_HELP, labels=["method", "route", "status"]
        )
        for (method, route, status), count in list(self.stats.counts.items()):
            requests.add_metric([method, route, str(status)], count.value)
        yield requests
        latency = HistogramMetricFamily(_LATENCY, _LATENCY_HELP, labels=["method", "route"])
        for (method, route), histogram in list(self.stats.latency.items()):
            cumulative = list(accumulate(histogram.buckets))
            latency.add_metric(
                [method, route], list(zip(_LE, cumulative, strict=True)), histogram.sum
            )
        yield latency


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
        # Requests and latency are counted by _RequestStats (plain numbers, no lock: the
        # hot path) and exported from there; see its docstring.
        self._stats = _RequestStats(multiprocess=self.multiprocess)
        if not self.multiprocess:
            self.registry.register(_RequestsCollector(self._stats))
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

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency (a few additions: the hot path)."""
        self._stats.observe(method, route, status, seconds)

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
