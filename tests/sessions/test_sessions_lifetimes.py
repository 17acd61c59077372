"""Session lifetimes: an idle timeout sliding on refresh and an absolute limit from login,
both carried by Redis TTLs (no clean-up job), and cookies whose Max-Age follows them."""

from __future__ import annotations

import redis.asyncio as aioredis
from sessions_support import (
    Accounts,
    MakeTw,
    auth,
    client_for,
    refresh_bearer,
    session_key,
    set_cookies,
    user_keys,
)

from tokenward.clock import FrozenClock, SystemClock
from waiting import await_until

IDLE, MAX = 1000, 2500


async def test_ttls_follow_idle_timeout_and_absolute_limit(
    make_tw: MakeTw, redis: aioredis.Redis
) -> None:
    """TTL = min(idle, time left to the absolute limit), read from Redis at each step."""
    tw = await make_tw(session_idle_ttl=IDLE, session_max_ttl=MAX, access_ttl=5000)
    clock = tw.clock
    assert isinstance(clock, FrozenClock)
    async with client_for(tw) as client:
        tokens = await Accounts(client).new_bearer()
        uid, sid = tokens["user"]["id"], tokens["session"]["id"]
        key, (idx, _) = session_key(uid, sid), user_keys(uid)
        assert tokens["refresh_expires_in"] == IDLE
        assert IDLE - 2 <= await redis.ttl(key) <= IDLE
        assert MAX - 2 <= await redis.ttl(idx) <= MAX

        clock.advance(900)  # idle slides on refresh
        body = (await refresh_bearer(client, tokens["refresh_token"])).json()
        assert body["refresh_expires_in"] == IDLE
        assert IDLE - 2 <= await redis.ttl(key) <= IDLE
        assert int(await redis.hget(key, "exp")) == clock.now() + IDLE

        clock.advance(900)  # 1800 s after login: 700 s left of the absolute limit
        body = (await refresh_bearer(client, body["refresh_token"])).json()
        assert body["refresh_expires_in"] == MAX - 1800
        assert MAX - 1800 - 2 <= await redis.ttl(key) <= MAX - 1800
        assert (await client.get("/auth/me", headers=auth(body["access_token"]))).status_code == 200

        clock.advance(MAX - 1800)  # the absolute limit: over, whatever the activity
        assert (await refresh_bearer(client, body["refresh_token"])).status_code == 401
        me = await client.get("/auth/me", headers=auth(body["access_token"]))
        assert me.status_code == 401
        assert me.json()["type"] == "urn:tokenward:problem:unauthenticated"


async def test_idle_session_ends_without_refresh(make_tw: MakeTw) -> None:
    """No refresh for the idle timeout: the session is over, even with a live access token."""
    tw = await make_tw(session_idle_ttl=IDLE, session_max_ttl=MAX, access_ttl=5000)
    assert isinstance(tw.clock, FrozenClock)
    async with client_for(tw) as client:
        tokens = await Accounts(client).new_bearer()
        me = await client.get("/auth/me", headers=auth(tokens["access_token"]))
        assert me.status_code == 200  # the cache now vouches for the session...
        tw.clock.advance(IDLE - 1)
        assert (
            await client.get("/auth/me", headers=auth(tokens["access_token"]))
        ).status_code == 200
        tw.clock.advance(1)  # ...but never past the session's expiry
        assert (
            await client.get("/auth/me", headers=auth(tokens["access_token"]))
        ).status_code == 401
        assert (await refresh_bearer(client, tokens["refresh_token"])).status_code == 401


async def test_cookie_max_age_is_the_remaining_life(make_tw: MakeTw) -> None:
    """The refresh and CSRF cookies live as long as the session; the access cookie its TTL."""
    tw = await make_tw(session_idle_ttl=IDLE, session_max_ttl=MAX)
    assert isinstance(tw.clock, FrozenClock)
    async with client_for(tw) as client:
        accounts = Accounts(client)
        login = await accounts.login_cookie(await accounts.register())
        cookies = set_cookies(login)
        assert cookies["__Secure-refresh_token"]["max-age"] == str(IDLE)
        assert cookies["__Host-csrf_token"]["max-age"] == str(IDLE)
        assert cookies["__Host-access_token"]["max-age"] == str(tw.settings.access_ttl)
        for step in (900, 900):
            tw.clock.advance(step)
            r = await client.post("/auth/refresh", headers=accounts.csrf_headers())
            assert r.status_code == 200, r.text
        remaining = MAX - 1800
        assert set_cookies(r)["__Secure-refresh_token"]["max-age"] == str(remaining)
        assert r.json()["session"]["expires_at"] is not None


async def test_real_time_idle_expiry_removes_the_key(
    make_tw: MakeTw, redis: aioredis.Redis
) -> None:
    """Real clock, idle timeout 2 s: Redis drops the key by itself and the token is refused."""
    tw = await make_tw(clock=SystemClock(), session_idle_ttl=2, session_max_ttl=60)
    async with client_for(tw) as client:
        tokens = await Accounts(client).new_bearer()
        key = session_key(tokens["user"]["id"], tokens["session"]["id"])
        assert 0 < await redis.ttl(key) <= 2
        assert (
            await client.get("/auth/me", headers=auth(tokens["access_token"]))
        ).status_code == 200

        async def gone() -> bool:
            return await redis.exists(key) == 0

        await await_until(gone, within=10, step=0.05)
        assert (
            await client.get("/auth/me", headers=auth(tokens["access_token"]))
        ).status_code == 401
        assert (await refresh_bearer(client, tokens["refresh_token"])).status_code == 401
