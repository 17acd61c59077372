"""Corrupt session records (a key overwritten with garbage) end the session: 401, a warning
logged once, the key deleted; never a 503 (or 500) for as long as the key lives."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sessions_support import Accounts, auth, refresh_bearer, session_key, user_keys

from tokenward.runtime import Tokenward

#: Ways a session key can be overwritten: another type, or a hash that is not a session.
GARBAGE: dict[str, Callable[[aioredis.Redis, str], Awaitable[Any]]] = {
    "string": lambda r, k: r.set(k, "garbage"),
    "list": lambda r, k: r.rpush(k, "a", "b"),
    "set": lambda r, k: r.sadd(k, "a"),
    "junk-hash": lambda r, k: r.hset(k, mapping={"foo": "bar", "x": "1"}),
    "bad-number": lambda r, k: r.hset(k, "uca", "not a number"),
    "bad-expiry": lambda r, k: r.hset(k, "exp", "soon"),
    # records no longer hold the user id; one that names another user is not this session
    "other-user": lambda r, k: r.hset(k, "uid", "0" * 32),
}


async def _overwrite(redis: aioredis.Redis, key: str, kind: str) -> None:
    if kind in ("list", "set", "junk-hash"):
        await redis.delete(key)
    await GARBAGE[kind](redis, key)
    await redis.expire(key, 300)  # whatever happens, the test leaves no key without a TTL


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "corrupt session record" in r.getMessage()]


@pytest.mark.parametrize("kind", sorted(GARBAGE))
@pytest.mark.parametrize("path", ["me", "refresh", "logout", "sessions", "login"])
async def test_a_corrupt_record_answers_401_and_is_deleted(
    client: httpx.AsyncClient,
    accounts: Accounts,
    tw: Tokenward,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    path: str,
) -> None:
    """The session key overwritten (string, list, set, a hash of junk, a field that must be
    a number and is not): whichever request meets it first gets an answer about *that*
    session (401), the user's other sessions work, the key is gone and one warning logged."""
    email = await accounts.register()
    other = await accounts.login_bearer(email)
    victim = await accounts.login_bearer(email)
    uid, sid = victim["user"]["id"], victim["session"]["id"]
    key = session_key(uid, sid)
    await _overwrite(redis, key, kind)
    caplog.set_level(logging.WARNING, logger="tokenward.sessions")

    if path == "me":
        r = await client.get("/auth/me", headers=auth(victim["access_token"]))
        assert r.status_code == 401, r.text
    elif path == "refresh":
        r = await refresh_bearer(client, victim["refresh_token"])
        assert r.status_code == 401, r.text
    elif path == "logout":
        r = await client.post("/auth/logout", json={"refresh_token": victim["refresh_token"]})
        assert r.status_code == 401, r.text
    elif path == "sessions":
        r = await client.get("/auth/sessions", headers=auth(other["access_token"]))
        assert r.status_code == 200, r.text
        assert [s["id"] for s in r.json()] == [other["session"]["id"]]
    else:  # a new login sweeps the user's expired and corrupt sessions
        assert (await accounts.login_bearer(email))["user"]["id"] == uid

    assert await redis.exists(key) == 0, "the corrupt key was left in place"
    if path != "login":
        assert len(_warnings(caplog)) == 1, _warnings(caplog)
    # Once deleted it is simply an ended session: 401 everywhere, no second warning.
    assert (await client.get("/auth/me", headers=auth(victim["access_token"]))).status_code == 401
    assert (await refresh_bearer(client, victim["refresh_token"])).status_code == 401
    assert len(_warnings(caplog)) <= 1
    assert (await client.get("/auth/me", headers=auth(other["access_token"]))).status_code == 200


#: Ways the user's session index can be overwritten (it must be a sorted set).
INDEX_GARBAGE: dict[str, Callable[[aioredis.Redis, str], Awaitable[Any]]] = {
    "string": lambda r, k: r.set(k, "garbage"),
    "list": lambda r, k: r.rpush(k, "a", "b"),
    "hash": lambda r, k: r.hset(k, mapping={"foo": "bar"}),
    "set": lambda r, k: r.sadd(k, "a"),
}


def _index_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "corrupt session index" in r.getMessage()]


@pytest.mark.parametrize("kind", sorted(INDEX_GARBAGE))
@pytest.mark.parametrize("path", ["login", "sessions", "logout-all", "refresh", "logout"])
async def test_a_corrupt_session_index_is_rebuilt(
    client: httpx.AsyncClient,
    accounts: Accounts,
    tw: Tokenward,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    path: str,
) -> None:
    """The user's index (``tw:{u:<uid>}:idx``) overwritten with another type: login,
    listing, logout-all, refresh and logout answer as usual (they were 503 for as long as
    the key lived), the index is rebuilt from the user's sessions, so logout-all still ends
    every one of them, and one warning is logged."""
    email = await accounts.register()
    first, second = await accounts.login_bearer(email), await accounts.login_bearer(email)
    uid = first["user"]["id"]
    idx, _ = user_keys(uid)
    await redis.delete(idx)
    await INDEX_GARBAGE[kind](redis, idx)
    await redis.expire(idx, 300)  # whatever happens, the test leaves no key without a TTL
    caplog.set_level(logging.WARNING, logger="tokenward.sessions")
    live = {first["session"]["id"], second["session"]["id"]}

    if path == "login":
        live.add((await accounts.login_bearer(email))["session"]["id"])
    elif path == "sessions":
        r = await client.get("/auth/sessions", headers=auth(first["access_token"]))
        assert r.status_code == 200, r.text
        assert {s["id"] for s in r.json()} == live
    elif path == "logout-all":
        r = await client.post("/auth/logout-all", headers=auth(first["access_token"]))
        assert r.status_code == 204, r.text
        # Ended although the index had lost it: the rebuilt index named it.
        assert (await refresh_bearer(client, second["refresh_token"])).status_code == 401
        live = set()
    elif path == "refresh":
        r = await refresh_bearer(client, first["refresh_token"])
        assert r.status_code == 200, r.text
    else:  # a logout ends its session whatever the index holds
        r = await client.post("/auth/logout", headers=auth(first["access_token"]))
        assert r.status_code == 204, r.text
        live.discard(first["session"]["id"])

    # Whatever met it first, the next listing sees a sound index with every live session.
    if live:
        token = second["access_token"]
        r = await client.get("/auth/sessions", headers=auth(token))
        assert r.status_code == 200, r.text
        assert {s["id"] for s in r.json()} == live
    assert await redis.type(idx) in ("zset", "none")
    assert await redis.ttl(idx) > 0 or not live
    assert len(_index_warnings(caplog)) == 1, _index_warnings(caplog)
