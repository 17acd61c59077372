"""Session records hold no e-mail address (issue 9 item 19): a dump of Redis must not list
the users'. ``GET /auth/me`` reads the address from the user store, by id; with the user
database down it answers 503 and the sessions themselves keep working."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sessions_support import (
    BEARER,
    ORIGIN,
    PASSWORD,
    Accounts,
    auth,
    client_for,
    refresh_bearer,
    session_key,
)

from private_redis import PrivateRedis, private_redis
from tokenward.runtime import Tokenward
from tokenward.sessions import UserRef
from tw_accounts import GENEROUS_LIMITS
from tw_factory import TokenwardFactory

NEW_PASSWORD = "amber kettle 17 lighthouse"
#: Keys scanned per SCAN call; the private Redis holds one test's keys only.
SCAN_COUNT = 500


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    with private_redis(workdir) as server:
        yield server


@pytest.fixture
async def own_tw(own_redis: PrivateRedis, tmp_path: Path) -> AsyncIterator[Tokenward]:
    factory = TokenwardFactory(own_redis.url, tmp_path, issuer=ORIGIN)
    yield await factory.make(**GENEROUS_LIMITS)
    await factory.stop_all()


async def _dump(redis: aioredis.Redis) -> dict[str, str]:
    """Every key of the server with everything it holds, as text (key name included)."""
    out: dict[str, str] = {}
    async for key in redis.scan_iter(match="*", count=SCAN_COUNT):
        kind = await redis.type(key)
        value: Any
        if kind == "string":
            value = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = await redis.smembers(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = await redis.xrange(key)
        else:
            value = kind
        out[key] = f"{key} {kind} {value!r}"
    return out


async def test_no_redis_key_or_value_holds_the_email(
    own_tw: Tokenward, own_redis: PrivateRedis
) -> None:
    """Register, log in (cookie and bearer, and once with a wrong password), refresh both,
    change the password (bearer: the kept session is re-keyed), log out the others keeping
    the current one (cookie: re-keyed), log in again and log out: no key of the server, and
    nothing stored under one (hashes, lists, sorted sets, streams dumped whole), contains
    the address or its local part, in any case. 0.1 stored it in every session hash."""
    tw = own_tw
    email = f"Private.Person-{time.time_ns()}@Example.COM"
    async with client_for(tw) as web, client_for(tw) as api:
        browser, app = Accounts(web), Accounts(api)
        await browser.register(email)
        wrong = await api.post(
            "/auth/login", json={"email": email, "password": "wrong " + PASSWORD}, headers=BEARER
        )
        assert wrong.status_code == 401, wrong.text
        await browser.login_cookie(email)
        tokens = await app.login_bearer(email)
        assert tokens["user"]["email"] == email.lower()  # a login still shows it

        r = await web.post("/auth/refresh", headers=browser.csrf_headers())
        assert r.status_code == 200, r.text
        r = await refresh_bearer(api, tokens["refresh_token"])
        assert r.status_code == 200, r.text
        tokens = r.json()
        refreshed_user = tokens["user"]

        r = await api.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=auth(tokens["access_token"]),
        )
        assert r.status_code == 200, r.text
        tokens = r.json()
        await browser.login_cookie(email, NEW_PASSWORD)
        r = await web.post(
            "/auth/logout-all", json={"keep_current": True}, headers=browser.csrf_headers()
        )
        assert r.status_code == 204, r.text
        r = await web.get("/auth/me")
        assert r.status_code == 200, r.text
        assert r.json()["email"] == email.lower()
        again = await app.login_bearer(email, NEW_PASSWORD)
        r = await api.post("/auth/logout", headers=auth(again["access_token"]))
        assert r.status_code == 204, r.text

    redis = aioredis.from_url(own_redis.url, decode_responses=True)
    try:
        dump = await _dump(redis)
    finally:
        await redis.aclose()
    uid = tokens["user"]["id"]
    mine = [k for k in dump if uid in k]
    # Not a vacuous scan: the sessions, their index, the ended list and events are there.
    assert any(":s:" in k for k in mine), sorted(dump)
    assert any(k.endswith(":idx") for k in mine), sorted(dump)
    assert any(k.endswith(":ended") for k in mine), sorted(dump)
    assert len(dump) > len(mine), sorted(dump)
    needles = (email.lower(), email.split("@")[0].lower())
    leaks = {k: v for k, v in dump.items() if any(n in v.lower() for n in needles)}
    assert not leaks, f"{len(leaks)} of {len(dump)} keys hold the address: {leaks}"
    assert refreshed_user == {"id": uid}  # a refresh reads no user: it has no address


async def test_a_record_written_by_0_1_with_an_email_field_still_works(
    client: httpx.AsyncClient, accounts: Accounts, redis: aioredis.Redis
) -> None:
    """A session hash of the previous version carries ``email``: it is ignored (the access
    token, ``/auth/me`` from the user store, refresh all work) and the first rotation
    deletes it; a re-key deletes it too."""
    email = await accounts.register()
    first, second = await accounts.login_bearer(email), await accounts.login_bearer(email)
    uid = first["user"]["id"]
    keys = [session_key(uid, s["session"]["id"]) for s in (first, second)]
    for key in keys:
        await redis.hset(key, "email", "stale-0.1@example.com")

    me = await client.get("/auth/me", headers=auth(first["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["email"] == email  # the store's, not the record's
    assert await redis.hexists(keys[0], "email")  # reading changes nothing

    r = await refresh_bearer(client, first["refresh_token"])
    assert r.status_code == 200, r.text
    assert not await redis.hexists(keys[0], "email")
    r = await client.post(
        "/auth/logout-all", json={"keep_current": True}, headers=auth(second["access_token"])
    )
    assert r.status_code == 200, r.text
    assert not await redis.hexists(keys[1], "email")
    assert (await client.get("/auth/me", headers=auth(r.json()["access_token"]))).status_code == 200


@pytest.fixture
async def tw_db_down(redis_url: str, tmp_path: Path) -> AsyncIterator[Tokenward]:
    """A started service whose user database (PostgreSQL) is a closed port."""
    factory = TokenwardFactory(redis_url, tmp_path, issuer=ORIGIN)
    try:
        yield await asyncio.wait_for(
            factory.make_without_database(backend_timeout=5, **GENEROUS_LIMITS), 10
        )
    finally:
        await factory.stop_all()


async def test_me_is_503_while_the_user_database_is_down(tw_db_down: Tokenward) -> None:
    """The session is live (opened before the outage), the database does not answer:
    ``GET /auth/me`` is 503 ``unavailable`` in bounded time, never 500 and never a 401 that
    would log the user out; what needs no address (sessions, refresh) keeps working."""
    tw = tw_db_down
    uid = uuid.uuid4().hex  # the run shares one Redis: a user of this test alone
    issued = await tw.sessions.open(
        UserRef(uid, "down@example.com", tw.clock.now()),
        ip="10.0.0.1",
        user_agent="t",
        now=tw.clock.now(),
    )
    async with client_for(tw) as c:
        me = await asyncio.wait_for(c.get("/auth/me", headers=auth(issued.access_token)), 10)
        assert me.status_code == 503, me.text
        assert me.json()["type"] == "urn:tokenward:problem:unavailable"
        assert int(me.headers["retry-after"]) >= 1
        listed = await c.get("/auth/sessions", headers=auth(issued.access_token))
        assert listed.status_code == 200, listed.text
        assert [s["id"] for s in listed.json()] == [issued.sid]
        r = await refresh_bearer(c, issued.refresh_token)
        assert r.status_code == 200, r.text
        assert r.json()["user"] == {"id": uid}
