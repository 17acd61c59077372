"""Failure is explicit: a back end that does not answer gives 503, never a 500 or access.

The shared fixture servers are never stopped here. Unreachable back ends are closed ports;
the outage-and-recovery story runs on a private ``redis-server`` (append-only, fsync on
every write) that this module starts, kills and restarts by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_support import GENEROUS_LIMITS, ORIGIN, PASSWORD, Accounts, MakeTw, isolated_client

from ports import free_port
from private_redis import PrivateRedis, private_redis
from tokenward.runtime import Tokenward
from tw_factory import TokenwardFactory
from waiting import await_until

BEARER = {"X-Auth-Transport": "bearer"}
#: Deadline for any one request against a dead back end (the contract's "bounded time").
BOUND = 10.0
#: Concurrent requests that each hold a pooled Redis connection at once.
POOLED = 6


async def _bounded(request: Awaitable[httpx.Response]) -> httpx.Response:
    return await asyncio.wait_for(request, BOUND)


def _assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, (r.request.url.path, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == "urn:tokenward:problem:unavailable"
    assert int(r.headers["retry-after"]) >= 1
    assert not r.headers.get_list("set-cookie"), "a failed request must not change cookies"


def _bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


# ----------------------------------------------------------------- Redis never reachable


@pytest.fixture
async def tw_without_redis(make_tw: MakeTw) -> Tokenward:
    """A service whose Redis URL points at a closed port (it must still start)."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    return await asyncio.wait_for(
        make_tw(**GENEROUS_LIMITS, redis_url=url, backend_timeout=0.5), BOUND
    )


async def test_login_without_redis_is_503(tw_without_redis: Tokenward) -> None:
    """Login cannot open a session: 503 unavailable with Retry-After, in bounded time."""
    async with isolated_client(tw_without_redis) as c:
        for headers in ({}, BEARER):
            r = await _bounded(
                c.post(
                    "/auth/login", json={"email": "a@b.test", "password": PASSWORD}, headers=headers
                )
            )
            _assert_unavailable(r)


async def test_refresh_without_redis_is_503(tw_without_redis: Tokenward) -> None:
    """Refresh (bearer and cookie) cannot rotate: 503, and nothing is issued."""
    token = "0" * 32 + "." + "A" * 22 + "." + "A" * 43
    async with isolated_client(tw_without_redis) as c:
        bearer = await _bounded(
            c.post("/auth/refresh", json={"refresh_token": token}, headers=BEARER)
        )
        _assert_unavailable(bearer)
        c.cookies.set("__Secure-refresh_token", token, domain="tokenward.test", path="/auth")
        c.cookies.set("__Host-csrf_token", "csrf", domain="tokenward.test")
        cookie = await _bounded(
            c.post("/auth/refresh", headers={"X-CSRF-Token": "csrf", "Origin": ORIGIN})
        )
        _assert_unavailable(cookie)


async def test_me_without_redis_is_503_not_200(tw_without_redis: Tokenward) -> None:
    """A genuine access token cannot be vouched for without the session store: 503."""
    tw = tw_without_redis
    token, _ = tw.tokens.issue(sub="u" * 32, sid="s" * 22, now=tw.clock.now())
    assert not tw.cache.healthy
    async with isolated_client(tw) as c:
        r = await _bounded(c.get("/auth/me", headers={"Authorization": f"Bearer {token}"}))
        _assert_unavailable(r)


async def test_logout_without_redis_is_503(tw_without_redis: Tokenward) -> None:
    """Logout cannot end the session: 503 (the client must retry, not assume it is out)."""
    tw = tw_without_redis
    token, _ = tw.tokens.issue(sub="u" * 32, sid="s" * 22, now=tw.clock.now())
    refresh = "0" * 32 + "." + "A" * 22 + "." + "A" * 43
    async with isolated_client(tw) as c:
        r1 = await _bounded(c.post("/auth/logout", headers={"Authorization": f"Bearer {token}"}))
        _assert_unavailable(r1)
        r2 = await _bounded(c.post("/auth/logout", json={"refresh_token": refresh}))
        _assert_unavailable(r2)


async def test_readyz_without_redis_is_503_and_healthz_200(tw_without_redis: Tokenward) -> None:
    """Readiness reports the outage; liveness does not."""
    async with isolated_client(tw_without_redis) as c:
        _assert_unavailable(await _bounded(c.get("/readyz")))
        assert (await c.get("/healthz")).status_code == 200


# ------------------------------------------------------------ database never reachable


@pytest.fixture
async def tw_without_db(redis_url: str, tmp_path: Path) -> AsyncIterator[Tokenward]:
    """A service whose PostgreSQL URL points at a closed port (migrations skipped)."""
    factory = TokenwardFactory(redis_url, tmp_path, issuer=ORIGIN)
    try:
        yield await asyncio.wait_for(
            factory.make_without_database(backend_timeout=0.5, **GENEROUS_LIMITS), BOUND
        )
    finally:
        await factory.stop_all()


async def test_register_and_login_without_database_are_503(tw_without_db: Tokenward) -> None:
    """With the user database down, register and login answer 503, never 500 or 401."""
    async with isolated_client(tw_without_db) as c:
        creds = {"email": "db-down@x.test", "password": PASSWORD}
        _assert_unavailable(await _bounded(c.post("/auth/register", json=creds)))
        _assert_unavailable(await _bounded(c.post("/auth/login", json=creds)))
        _assert_unavailable(await _bounded(c.post("/auth/login", json=creds, headers=BEARER)))
        # Sessions still work without the database: degraded, not out of rotation.
        ready = await _bounded(c.get("/readyz"))
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded"
        assert ready.json()["components"]["database"] == "unavailable"


# ------------------------------------------------- a private Redis that dies and comes back


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    workdir = tmp_path / "durable-redis"
    workdir.mkdir()
    with private_redis(workdir, durable=True) as server:
        yield server


async def test_redis_crash_gives_503_then_recovery_loses_nothing(
    durable_redis: PrivateRedis, make_tw: MakeTw
) -> None:
    """Logged-in users get 503 (not 200) while Redis is down; after restart all works again."""
    tw = await make_tw(**GENEROUS_LIMITS, redis_url=durable_redis.url)
    async with isolated_client(tw) as c:
        accounts = Accounts(c)
        email = await accounts.register()
        bearer = await accounts.login_bearer(email)
        await accounts.login_cookie(email)
        csrf = accounts.csrf_headers()
        assert (await c.get("/auth/me", headers=_bearer(bearer))).status_code == 200
        assert (await c.get("/auth/me")).status_code == 200  # both now in the session cache
        assert len(tw.cache) >= 1
        # Concurrent lookups leave several idle connections in the client's pool; each is
        # dead after the crash and must be noticed and replaced, not handed to a request.
        sessions = [c.get("/auth/sessions", headers=_bearer(bearer)) for _ in range(POOLED)]
        assert {r.status_code for r in await asyncio.gather(*sessions)} == {200}

        durable_redis.kill()

        async def cache_gave_up() -> bool:
            return not tw.cache.healthy

        await await_until(cache_gave_up, within=BOUND, what="the session cache stops vouching")
        outage = [
            c.get("/auth/me", headers=_bearer(bearer)),
            c.get("/auth/me"),
            c.post(
                "/auth/refresh", json={"refresh_token": bearer["refresh_token"]}, headers=BEARER
            ),
            c.post("/auth/refresh", headers=csrf),
            c.post("/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER),
            c.post("/auth/logout", headers=_bearer(bearer)),
            c.post("/auth/logout", headers=csrf),
            c.get("/readyz"),
        ]
        for request in outage:
            _assert_unavailable(await _bounded(request))

        durable_redis.start()

        async def ready() -> bool:
            return (await c.get("/readyz")).status_code == 200 and tw.cache.healthy

        await await_until(ready, within=BOUND, what="the service is ready again")
        sessions = [c.get("/auth/sessions", headers=_bearer(bearer)) for _ in range(POOLED)]
        after = await asyncio.gather(*sessions)
        assert [r.status_code for r in after] == [200] * POOLED, [r.text for r in after]
        assert (await c.get("/auth/me", headers=_bearer(bearer))).status_code == 200
        assert (await c.get("/auth/me")).status_code == 200
        rotated = await c.post(
            "/auth/refresh", json={"refresh_token": bearer["refresh_token"]}, headers=BEARER
        )
        assert rotated.status_code == 200, "the refused refresh during the outage changed nothing"
        cookie_rotated = await c.post("/auth/refresh", headers=csrf)
        assert cookie_rotated.status_code == 200, cookie_rotated.text
        assert (await c.post("/auth/logout", headers=_bearer(rotated.json()))).status_code == 204
        assert (await c.post("/auth/logout", headers=accounts.csrf_headers())).status_code == 204


async def test_ended_sessions_stay_ended_across_a_redis_crash(
    durable_redis: PrivateRedis, make_tw: MakeTw
) -> None:
    """A logout acknowledged before a crash is still in force after the restart."""
    tw = await make_tw(**GENEROUS_LIMITS, redis_url=durable_redis.url)
    async with isolated_client(tw) as c:
        accounts = Accounts(c)
        tokens = await accounts.login_bearer(await accounts.register())
        assert (await c.post("/auth/logout", headers=_bearer(tokens))).status_code == 204
        durable_redis.kill()
        durable_redis.start()

        async def ready() -> bool:
            with contextlib.suppress(Exception):
                return (await c.get("/readyz")).status_code == 200 and tw.cache.healthy
            return False

        await await_until(ready, within=BOUND, what="the service is ready again")
        assert (await c.get("/auth/me", headers=_bearer(tokens))).status_code == 401
        refresh = await c.post(
            "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, headers=BEARER
        )
        assert refresh.status_code == 401
