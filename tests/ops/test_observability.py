"""/metrics, request ids and the JSON access log."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ops_support import (
    OPS_METRICS_TOKEN,
    OPS_PASSWORD,
    MakeOpsTw,
    ops_client,
    register_and_login,
)
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenward.http.observability import ObservabilityMiddleware
from tokenward.logs import JsonFormatter
from tokenward.metrics import SessionCounter
from tokenward.runtime import Tokenward
from tokenward.web.headers import security_headers


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def _scrape(client: httpx.AsyncClient) -> dict[Any, float]:
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {OPS_METRICS_TOKEN}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return _samples(r.text)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Capture the ``tokenward`` loggers as JSON lines (as ``tokenward serve`` writes them)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tokenward")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_requests_are_counted_by_route_template_and_status(make_ops_tw: MakeOpsTw) -> None:
    """Requests count under their route template, never the raw path (bounded labels)."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        login = await register_and_login(client, "metrics@example.com")
        auth = {"Authorization": f"Bearer {login['access_token']}"}
        for _ in range(3):
            assert (await client.get("/auth/me", headers=auth)).status_code == 200
        sid = login["session"]["id"]
        assert (await client.delete(f"/auth/sessions/{sid}", headers=auth)).status_code == 204
        assert (await client.get("/no/such/page")).status_code == 404
        samples = await _scrape(client)
    me = {"method": "GET", "route": "/auth/me"}
    assert _value(samples, "tokenward_http_requests_total", **me, status="200") == 3
    assert _value(samples, "tokenward_http_request_duration_seconds_count", **me) == 3
    deleted = {"method": "DELETE", "route": "/auth/sessions/{sid}", "status": "204"}
    assert _value(samples, "tokenward_http_requests_total", **deleted) == 1
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert _value(samples, "tokenward_http_requests_total", **unmatched) == 1
    assert not any(sid in str(labels) for _, labels in samples)
    assert _value(samples, "tokenward_build_info", version="0.1.0") == 1


async def test_logins_refreshes_and_reuse_detections_are_counted(make_ops_tw: MakeOpsTw) -> None:
    """Logins ok and failed, refreshes ok, and a replayed refresh token (theft) each count."""
    tw = await make_ops_tw(refresh_grace=0)
    async with ops_client(tw) as client:
        login = await register_and_login(client, "outcomes@example.com")
        wrong = await client.post(
            "/auth/login", json={"email": "outcomes@example.com", "password": OPS_PASSWORD + "!"}
        )
        assert wrong.status_code == 401
        bearer = {"X-Auth-Transport": "bearer"}
        body = {"refresh_token": login["refresh_token"]}
        assert (await client.post("/auth/refresh", json=body, headers=bearer)).status_code == 200
        replay = await client.post("/auth/refresh", json=body, headers=bearer)
        assert replay.json()["type"].endswith("refresh-reused")
        garbage = await client.post("/auth/refresh", json={"refresh_token": "nope"}, headers=bearer)
        assert garbage.status_code == 401
        samples = await _scrape(client)
    assert _value(samples, "tokenward_logins_total", outcome="ok") == 1
    assert _value(samples, "tokenward_logins_total", outcome="failed") == 1
    assert _value(samples, "tokenward_refreshes_total", outcome="ok") == 1
    assert _value(samples, "tokenward_refreshes_total", outcome="reused") == 1
    assert _value(samples, "tokenward_refreshes_total", outcome="failed") == 1


async def test_security_events_and_rate_limit_refusals_are_counted(
    make_ops_tw: MakeOpsTw,
) -> None:
    """Each security event counts by kind; each 429 counts under the limit that refused it."""
    tw = await make_ops_tw(login_pair_limit=2)
    email = f"throttled-{uuid.uuid4().hex[:8]}@example.com"
    async with ops_client(tw) as client:
        await register_and_login(client, email)
        statuses = []
        for _ in range(4):
            r = await client.post("/auth/login", json={"email": email, "password": "wrong " * 3})
            statuses.append(r.status_code)
        await tw.events.drain()
        samples = await _scrape(client)
    assert statuses == [401, 401, 429, 429]
    assert _value(samples, "tokenward_rate_limit_refusals_total", limit="login-pair") == 2
    assert _value(samples, "tokenward_security_events_total", kind="throttled") == 1
    assert _value(samples, "tokenward_security_events_total", kind="login.failed") == 2
    assert _value(samples, "tokenward_security_events_total", kind="login.succeeded") == 1
    assert _value(samples, "tokenward_security_events_total", kind="account.registered") == 1


async def test_form_login_outcomes_are_read_from_the_redirect(make_ops_tw: MakeOpsTw) -> None:
    """An HTML form login answers 303 either way; the metric still tells ok from failed."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        await register_and_login(client, "form@example.com")
        for password in (OPS_PASSWORD, "wrong password here"):
            r = await client.post(
                "/auth/login",
                data={"email": "form@example.com", "password": password},
                headers={"Origin": "https://ops.test"},
            )
            assert r.status_code == 303
        samples = await _scrape(client)
    assert _value(samples, "tokenward_logins_total", outcome="ok") == 2  # bearer + form
    assert _value(samples, "tokenward_logins_total", outcome="failed") == 1


async def test_active_sessions_gauge_follows_logins_and_logouts(make_ops_tw: MakeOpsTw) -> None:
    """The gauge counts live sessions in Redis: +2 after two logins, -1 after a logout."""
    tw = await make_ops_tw()
    counter = SessionCounter(lambda: tw.redis, cache_seconds=0)
    await counter.refresh()
    before = counter.value
    assert before is not None
    assert counter.exact
    async with ops_client(tw) as client:
        first = await register_and_login(client, "gauge@example.com")
        await client.post(
            "/auth/login",
            json={"email": "gauge@example.com", "password": OPS_PASSWORD},
            headers={"X-Auth-Transport": "bearer"},
        )
        await counter.refresh()
        assert counter.value == before + 2
        auth = {"Authorization": f"Bearer {first['access_token']}"}
        assert (await client.post("/auth/logout", headers=auth)).status_code == 204
        await counter.refresh()
        assert counter.value == before + 1
        samples = await _scrape(client)
    assert _value(samples, "tokenward_sessions_active") >= before + 1
    assert _value(samples, "tokenward_sessions_active_exact") == 1


async def test_active_sessions_are_estimated_on_a_large_node(make_ops_tw: MakeOpsTw) -> None:
    """Past its exact limit a node is counted from DBSIZE and 1,000 random keys: the gauge
    is marked inexact, and is within 4.5 standard deviations of a binomial share
    (0.5 / sqrt(1000)) of the keys from the exact count of the same keys."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        for n in range(3):
            await register_and_login(client, f"estimate{n}@example.com")
    exact = SessionCounter(lambda: tw.redis, cache_seconds=0)
    estimate = SessionCounter(lambda: tw.redis, cache_seconds=0, exact_keys=0)
    await exact.refresh()
    await estimate.refresh()
    keys = await tw.redis.dbsize()
    assert exact.exact
    assert not estimate.exact
    assert exact.value is not None
    assert estimate.value is not None
    assert abs(estimate.value - exact.value) <= 4.5 * 0.5 / 1000**0.5 * keys + 1


async def test_active_sessions_gauge_is_cached(make_ops_tw: MakeOpsTw) -> None:
    """Scrapes within the cache period reuse the count instead of scanning Redis again."""
    tw = await make_ops_tw()
    counter = SessionCounter(lambda: tw.redis, cache_seconds=3600)
    await counter.refresh()
    before = counter.value
    async with ops_client(tw) as client:
        await register_and_login(client, "cached@example.com")
    await counter.refresh()
    assert counter.value == before


async def test_scrape_answers_when_redis_is_down(make_ops_tw: MakeOpsTw) -> None:
    """A Redis failure drops the gauge from the scrape; the scrape itself still answers."""
    tw = await make_ops_tw(redis_url="redis://127.0.0.1:9/0", backend_timeout=0.5)
    async with ops_client(tw) as client:
        samples = await _scrape(client)
    assert ("tokenward_sessions_active", ()) not in samples
    assert _value(samples, "tokenward_build_info", version="0.1.0") == 1


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_XYZ.7:9", True),
        ("f" * 128, True),
        ("f" * 129, False),
        ("has space", False),
        ("new\nline", False),
        ("", False),
    ],
)
async def test_request_id_is_echoed_when_sane_else_generated(
    make_ops_tw: MakeOpsTw, sent: str, kept: bool
) -> None:
    """A sane X-Request-ID comes back as is; anything else is replaced by a fresh one."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        r = await client.get("/healthz", headers={"X-Request-ID": sent} if sent else {})
    got = r.headers["x-request-id"]
    if kept:
        assert got == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{16}", got)


async def test_request_id_is_on_error_responses_and_differs_per_request(
    make_ops_tw: MakeOpsTw,
) -> None:
    """Problem responses carry the id too; two requests get two ids."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        a = await client.get("/auth/me")
        b = await client.get("/auth/me")
    assert a.status_code == b.status_code == 401
    assert a.headers["x-request-id"] != b.headers["x-request-id"]


async def test_access_log_is_json_with_request_id_and_no_secrets(
    make_ops_tw: MakeOpsTw, log_lines: io.StringIO
) -> None:
    """TOKENWARD_ACCESS_LOG=true: one JSON line per request (route, status, duration,
    request id), never the query string, a header, a token or a password. Security events
    logged for the request carry the same request id."""
    tw = await make_ops_tw(access_log="true")
    async with ops_client(tw) as client:
        login = await register_and_login(client, "logged@example.com")
        token = login["access_token"]
        r = await client.get(
            "/auth/me?access_token=" + token,
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "trace-42"},
        )
        assert r.status_code == 200
        failed = await client.post(
            "/auth/login",
            json={"email": "logged@example.com", "password": "not the password at all"},
            headers={"X-Request-ID": "trace-43"},
        )
        assert failed.status_code == 401
        await tw.events.drain()
    text = log_lines.getvalue()
    for secret in (token, login["refresh_token"], OPS_PASSWORD, "not the password at all"):
        assert secret not in text
    lines = _lines(log_lines)
    access = [x for x in lines if x["logger"] == "tokenward.access"]
    me = next(x for x in access if x["event"]["route"] == "/auth/me")
    assert me["request_id"] == "trace-42"
    assert me["event"]["path"] == "/auth/me"
    assert me["event"]["status"] == 200
    assert me["event"]["method"] == "GET"
    assert me["event"]["duration_ms"] >= 0
    assert me["event"]["ip"] == "127.0.0.1"
    event = next(x for x in lines if x["message"] == "login.failed")
    assert event["request_id"] == "trace-43"


async def test_access_log_is_off_by_default(make_ops_tw: MakeOpsTw, log_lines: io.StringIO) -> None:
    """By default no access line is written (metrics still count)."""
    tw: Tokenward = await make_ops_tw()
    async with ops_client(tw) as client:
        await client.get("/healthz")
        samples = await _scrape(client)
    assert not [x for x in _lines(log_lines) if x["logger"] == "tokenward.access"]
    healthz = {"method": "GET", "route": "/healthz", "status": "200"}
    assert _value(samples, "tokenward_http_requests_total", **healthz) == 1


async def test_client_address_in_access_log_honours_trusted_proxies(
    make_ops_tw: MakeOpsTw, log_lines: io.StringIO
) -> None:
    """X-Forwarded-For names the client only when the peer is a trusted proxy."""
    trusting = await make_ops_tw(trusted_proxies="127.0.0.1", access_log="true")
    plain = await make_ops_tw(access_log="true")
    for tw in (trusting, plain):
        async with ops_client(tw) as client:
            await client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"})
    ips = [x["event"]["ip"] for x in _lines(log_lines) if x["logger"] == "tokenward.access"]
    assert ips == ["203.0.113.7", "127.0.0.1"]


# ----------------------------------------------------------- the hot path's own counting

_BUCKETS_SCRIPT = """
import asyncio
from tokenward.metrics import Metrics
m = Metrics()
for seconds in (0.0005, 0.0005001, 0.001, 0.3, 7.0):
    m.observe_request("GET", "/auth/me", 200, seconds)
m.observe_request("GET", "/auth/me", 401, 0.002)
print(asyncio.run(m.render()).decode())
"""


@pytest.mark.parametrize("multiprocess", [False, True], ids=["one-process", "multiprocess"])
def test_latency_histogram_buckets_count_and_sum(tmp_path: Path, multiprocess: bool) -> None:
    """Requests counted without prometheus_client's per-increment lock come out as its
    histogram would: ``le`` inclusive, cumulative buckets, ``+Inf`` = count, the sum; in
    one process and in multiprocess mode (written to the directory, read back from it)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", _BUCKETS_SCRIPT],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    ).stdout.decode()
    samples = _samples(out)
    me = {"method": "GET", "route": "/auth/me"}
    bucket = "tokenward_http_request_duration_seconds_bucket"
    expected = {"0.0005": 1, "0.001": 3, "0.0025": 4, "0.25": 4, "0.5": 5, "2.5": 5, "+Inf": 6}
    for le, count in expected.items():
        assert _value(samples, bucket, **me, le=le) == count, le
    assert _value(samples, "tokenward_http_request_duration_seconds_count", **me) == 6
    total = _value(samples, "tokenward_http_request_duration_seconds_sum", **me)
    assert total == pytest.approx(0.0005 + 0.0005001 + 0.001 + 0.3 + 7.0 + 0.002)
    assert _value(samples, "tokenward_http_requests_total", **me, status="200") == 5
    assert _value(samples, "tokenward_http_requests_total", **me, status="401") == 1
    if multiprocess:
        assert list(tmp_path.glob("histogram_*.db")), "written to the directory"


def _app_with_own_header() -> Starlette:
    async def own(request: Request) -> Response:
        return Response(b"x", headers={"X-Frame-Options": "SAMEORIGIN"})

    return Starlette(
        routes=[Route("/own", own)],
        middleware=[
            Middleware(ObservabilityMiddleware, metrics=None, headers=security_headers(hsts=True))
        ],
    )


async def test_observability_adds_security_headers_but_keeps_the_apps_own() -> None:
    """The one middleware create_app uses adds every security header the app did not set,
    keeps the one it did (whatever its case), once, and adds the request id."""
    transport = httpx.ASGITransport(app=_app_with_own_header())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/own")
    assert r.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    for name, value in security_headers(hsts=True):
        if name != b"x-frame-options":
            assert r.headers.get_list(name.decode()) == [value.decode()]
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])


async def test_generated_request_ids_do_not_repeat_across_batches() -> None:
    """Ids are cut from batches of random bytes: more requests than a batch holds still
    get distinct, well-formed ids."""
    transport = httpx.ASGITransport(app=_app_with_own_header())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ids = [(await client.get("/own")).headers["x-request-id"] for _ in range(600)]
    assert len(set(ids)) == 600
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
