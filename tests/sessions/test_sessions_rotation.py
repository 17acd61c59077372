"""Refresh rotation: the grace window, theft detection, strict mode, nothing usable at rest."""

from __future__ import annotations

import asyncio
import base64

import httpx
import redis.asyncio as aioredis
from sessions_support import (
    Accounts,
    MakeTw,
    auth,
    client_for,
    refresh_bearer,
    session_key,
    user_keys,
)

from tokenward.clock import FrozenClock
from tokenward.refresh import RefreshToken
from tokenward.runtime import Tokenward

REUSED = "urn:tokenward:problem:refresh-reused"
UNAUTHENTICATED = "urn:tokenward:problem:unauthenticated"


def clock_of(tw: Tokenward) -> FrozenClock:
    assert isinstance(tw.clock, FrozenClock)
    return tw.clock


async def test_replay_inside_grace_gets_the_same_successor(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """The token just replaced, presented again within the grace, yields the same successor."""
    tokens = await accounts.new_bearer()
    first = await refresh_bearer(client, tokens["refresh_token"])
    clock_of(tw).advance(tw.settings.refresh_grace)
    replay = await refresh_bearer(client, tokens["refresh_token"])
    assert first.status_code == replay.status_code == 200
    assert replay.json()["refresh_token"] == first.json()["refresh_token"]
    assert replay.json()["access_token"] != first.json()["access_token"]
    for body in (first.json(), replay.json()):
        assert (await client.get("/auth/me", headers=auth(body["access_token"]))).status_code == 200


async def test_concurrent_refreshes_in_process_share_one_successor(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Twenty callers at once (one event loop, real Redis): one successor, all 200."""
    tokens = await accounts.new_bearer()
    replies = await asyncio.gather(
        *(refresh_bearer(client, tokens["refresh_token"]) for _ in range(20))
    )
    assert {r.status_code for r in replies} == {200}
    assert len({r.json()["refresh_token"] for r in replies}) == 1


async def test_thief_replaying_an_old_token_after_the_grace_ends_the_session(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward, redis: aioredis.Redis
) -> None:
    """Victim rotates; the thief replays the old token later: 401 refresh-reused, all ended."""
    email = await accounts.register()
    other = await accounts.login_bearer(email)  # the owner's second device, unaffected
    victim = await accounts.login_bearer(email)
    uid, sid = victim["user"]["id"], victim["session"]["id"]
    stolen = victim["refresh_token"]
    rotated = (await refresh_bearer(client, stolen)).json()
    clock_of(tw).advance(tw.settings.refresh_grace + 1)

    thief = await refresh_bearer(client, stolen)
    assert thief.status_code == 401
    assert thief.json()["type"] == REUSED
    assert await redis.exists(session_key(uid, sid)) == 0
    # The victim's newer tokens died with the session, and so did the thief's.
    victim_refresh = await refresh_bearer(client, rotated["refresh_token"])
    assert victim_refresh.status_code == 401
    assert victim_refresh.json()["type"] == UNAUTHENTICATED
    for access in (victim["access_token"], rotated["access_token"]):
        assert (await client.get("/auth/me", headers=auth(access))).status_code == 401
    assert (await refresh_bearer(client, stolen)).status_code == 401
    # The owner sees, from another device, that and why the session ended.
    ended = await client.get("/auth/sessions/ended", headers=auth(other["access_token"]))
    assert ended.status_code == 200
    assert [(e["id"], e["reason"]) for e in ended.json()] == [(sid, "refresh-reused")]
    assert (await client.get("/auth/me", headers=auth(other["access_token"]))).status_code == 200


async def test_thief_who_rotates_first_is_cut_off_when_the_victim_comes_back(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """Whoever presents the replaced token second (after the grace) ends the session."""
    victim = await accounts.new_bearer()
    thief = (await refresh_bearer(client, victim["refresh_token"])).json()
    clock_of(tw).advance(tw.settings.refresh_grace + 1)
    back = await refresh_bearer(client, victim["refresh_token"])
    assert back.json()["type"] == REUSED
    assert (await client.get("/auth/me", headers=auth(thief["access_token"]))).status_code == 401
    assert (await refresh_bearer(client, thief["refresh_token"])).status_code == 401


async def test_an_older_ancestor_is_also_detected(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """A token replaced several rotations ago (not just the last one) is theft too."""
    tokens = await accounts.new_bearer()
    chain = [tokens["refresh_token"]]
    for _ in range(5):
        clock_of(tw).advance(tw.settings.refresh_grace + 1)
        chain.append((await refresh_bearer(client, chain[-1])).json()["refresh_token"])
    r = await refresh_bearer(client, chain[1])
    assert r.json()["type"] == REUSED
    assert (await refresh_bearer(client, chain[-1])).status_code == 401


async def test_strict_mode_grace_zero_treats_any_replay_as_theft(make_tw: MakeTw) -> None:
    """TOKENWARD_REFRESH_GRACE=0: the replaced token is dead at once."""
    tw = await make_tw(refresh_grace=0)
    async with client_for(tw) as client:
        tokens = await Accounts(client).new_bearer()
        assert (await refresh_bearer(client, tokens["refresh_token"])).status_code == 200
        replay = await refresh_bearer(client, tokens["refresh_token"])
        assert replay.status_code == 401
        assert replay.json()["type"] == REUSED


async def test_redis_holds_no_usable_token(
    client: httpx.AsyncClient, accounts: Accounts, redis: aioredis.Redis
) -> None:
    """No refresh, access or CSRF token, nor a refresh secret, appears in any stored value."""
    email = await accounts.register()
    cookie_login = await accounts.login_cookie(email)
    csrf = accounts.csrf_headers()["X-CSRF-Token"]
    tokens = await accounts.login_bearer(email)
    rotated = (await refresh_bearer(client, tokens["refresh_token"])).json()
    replay = (await refresh_bearer(client, tokens["refresh_token"])).json()
    secrets = {csrf, *cookie_login.cookies.values()}
    for body in (tokens, rotated, replay):
        secrets |= {body["refresh_token"], body["access_token"]}
        secret = RefreshToken.parse(body["refresh_token"]).secret
        secrets |= {secret.hex(), base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}
    uid = tokens["user"]["id"]
    keys = [k async for k in redis.scan_iter(match=f"tw:{{u:{uid}}}:*", count=1000)]
    assert set(keys) >= {session_key(uid, tokens["session"]["id"]), user_keys(uid)[0]}
    stored: list[str] = []
    for key in keys:
        kind = await redis.type(key)
        if kind == "hash":
            stored += [f"{k}={v}" for k, v in (await redis.hgetall(key)).items()]
        elif kind == "zset":
            stored += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
        else:
            stored += await redis.lrange(key, 0, -1)
        assert await redis.ttl(key) > 0, f"{key} has no TTL"
    blob = "\n".join(stored)
    leaked = [s for s in secrets if s and s in blob]
    assert not leaked
