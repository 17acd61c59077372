"""Immediate revocation from a per-process cache kept coherent by Redis pub/sub, failing
closed whenever the invalidation feed is down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from sessions_support import (
    Accounts,
    MakeTw,
    auth,
    client_for,
    session_key,
)

from private_redis import private_redis
from tokenward.revocation import SessionCache
from tokenward.runtime import Tokenward
from waiting import await_until

#: The contract across instances: an ended session is refused within a second.
INSTANCE_DEADLINE = 1.0


async def me_status(client: httpx.AsyncClient, tokens: dict[str, Any]) -> int:
    return (await client.get("/auth/me", headers=auth(tokens["access_token"]))).status_code


def cached(tw: Tokenward, tokens: dict[str, Any]) -> bool:
    return tw.cache.get(tokens["session"]["id"], now=tw.clock.now()) is not None


async def test_same_process_refuses_on_the_very_next_request(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """Logout, then the next request with the (still unexpired) access token: 401."""
    tokens = await accounts.new_bearer()
    assert await me_status(client, tokens) == 200
    assert cached(tw, tokens), "the cache should vouch for a session it just saw"
    assert (
        await client.post("/auth/logout", headers=auth(tokens["access_token"]))
    ).status_code == 204
    assert await me_status(client, tokens) == 401


async def test_another_instance_refuses_within_a_second(make_tw: MakeTw, tmp_path: Path) -> None:
    """Two instances on one Redis: log in via A, warm B, log out via A, B refuses (≤ 1 s)."""
    shared = tmp_path / "shared"  # same signing keys and user database
    a, b = await make_tw(data_dir=shared), await make_tw(data_dir=shared)
    async with client_for(a) as ca, client_for(b) as cb:
        tokens = await Accounts(ca).new_bearer()
        assert await me_status(cb, tokens) == 200
        assert cached(b, tokens)
        assert (
            await ca.post("/auth/logout", headers=auth(tokens["access_token"]))
        ).status_code == 204

        async def refused() -> bool:
            return await me_status(cb, tokens) == 401

        took = await await_until(refused, within=INSTANCE_DEADLINE, step=0.005)
        assert not cached(b, tokens)
    print(f"instance B refused {took * 1000:.1f} ms after A's logout")


async def test_cache_vouches_while_the_feed_is_up(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward, redis: aioredis.Redis
) -> None:
    """Control: a key deleted behind Tokenward's back (no message) goes unseen while cached.

    This is why every ending goes through a script that publishes, and what the fail-closed
    tests below must overturn when the feed is down.
    """
    tokens = await accounts.new_bearer()
    assert await me_status(client, tokens) == 200
    await redis.delete(session_key(tokens["user"]["id"], tokens["session"]["id"]))
    assert await me_status(client, tokens) == 200


async def test_feed_stopped_means_every_request_checks_redis(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward, redis: aioredis.Redis
) -> None:
    """Feed down: the cache is empty and stays so; a silently deleted session is refused."""
    tokens = await accounts.new_bearer()
    assert await me_status(client, tokens) == 200
    await tw.feed.stop()
    assert not tw.cache.healthy
    assert len(tw.cache) == 0
    assert await me_status(client, tokens) == 200  # looked up in Redis, not stored
    assert len(tw.cache) == 0
    await redis.delete(session_key(tokens["user"]["id"], tokens["session"]["id"]))
    assert await me_status(client, tokens) == 401


async def test_killed_feed_connection_empties_the_cache(make_tw: MakeTw, tmp_path: Path) -> None:
    """CLIENT KILL TYPE pubsub: the feed resubscribes and starts from an empty cache."""
    with private_redis(tmp_path) as server:
        tw = await make_tw(redis_url=server.url)
        admin = aioredis.from_url(server.url, decode_responses=True)
        try:
            async with client_for(tw) as client:
                tokens = await Accounts(client).new_bearer()
                assert await me_status(client, tokens) == 200
                await admin.delete(session_key(tokens["user"]["id"], tokens["session"]["id"]))
                assert await me_status(client, tokens) == 200  # cached, no message came
                before = tw.feed.subscriptions
                assert await admin.client_kill_filter(_type="pubsub") >= 1

                async def resubscribed() -> bool:
                    return tw.feed.subscriptions > before and tw.feed.subscribed

                await await_until(resubscribed, within=5)
                assert await me_status(client, tokens) == 401
        finally:
            await admin.aclose()


async def test_feed_kept_down_fails_closed_until_it_is_back(
    make_tw: MakeTw, tmp_path: Path
) -> None:
    """The feed cannot resubscribe (ACL): requests keep working from Redis, ended sessions are
    refused at once though no message arrives; once it is back the cache vouches again."""
    with private_redis(tmp_path) as server:
        tw = await make_tw(redis_url=server.url)
        admin = aioredis.from_url(server.url, decode_responses=True)
        try:
            async with client_for(tw) as client:
                accounts = Accounts(client)
                email = await accounts.register()
                tokens = await accounts.login_bearer(email)
                assert await me_status(client, tokens) == 200
                assert cached(tw, tokens)

                await admin.execute_command("ACL", "SETUSER", "default", "-subscribe")
                await admin.client_kill_filter(_type="pubsub")

                async def down() -> bool:
                    return not tw.cache.healthy

                await await_until(down, within=5)
                assert len(tw.cache) == 0
                # Still serving, from Redis: a live session works, nothing gets cached.
                other = await accounts.login_bearer(email)
                assert await me_status(client, other) == 200
                assert await me_status(client, tokens) == 200
                assert len(tw.cache) == 0
                # Ended behind our back (no message could arrive anyway): refused.
                await admin.delete(session_key(tokens["user"]["id"], tokens["session"]["id"]))
                assert await me_status(client, tokens) == 401
                assert not tw.cache.healthy  # stayed down the whole time

                await admin.execute_command("ACL", "SETUSER", "default", "+subscribe")

                async def back() -> bool:
                    return tw.feed.subscribed

                await await_until(back, within=5)
                assert await me_status(client, other) == 200
                assert cached(tw, other)
        finally:
            await admin.aclose()


async def test_silent_redis_lapses_the_lease_within_a_second(
    make_tw: MakeTw, tmp_path: Path
) -> None:
    """Redis stops answering (CLIENT PAUSE: a partition, as the feed sees it): the cache stops
    vouching within the lease (0.8 s) although no connection broke."""
    with private_redis(tmp_path) as server:
        tw = await make_tw(redis_url=server.url)
        admin = aioredis.from_url(server.url, decode_responses=True)
        try:
            async with client_for(tw) as client:
                tokens = await Accounts(client).new_bearer()
                assert await me_status(client, tokens) == 200
                assert cached(tw, tokens)
                await admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")

                async def lapsed() -> bool:
                    return not tw.cache.healthy

                took = await await_until(lapsed, within=INSTANCE_DEADLINE + 0.5)
                assert not cached(tw, tokens)
                print(f"lease lapsed {took * 1000:.0f} ms after Redis went silent")
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
            await admin.aclose()


async def test_redis_gone_means_503_not_a_stale_yes(make_tw: MakeTw, tmp_path: Path) -> None:
    """Redis stops: a session the cache had vouched for is answered 503, never 200."""
    with private_redis(tmp_path) as server:
        tw = await make_tw(redis_url=server.url, backend_timeout=0.5)
        async with client_for(tw) as client:
            tokens = await Accounts(client).new_bearer()
            assert await me_status(client, tokens) == 200
            assert cached(tw, tokens)
            server.stop()

            async def unavailable() -> bool:
                r = await client.get("/auth/me", headers=auth(tokens["access_token"]))
                assert r.status_code in (200, 503)
                return r.status_code == 503

            took = await await_until(unavailable, within=3, step=0.02)
            assert took < 1.0
            r = await client.get("/auth/me", headers=auth(tokens["access_token"]))
            assert r.status_code == 503
            assert r.json()["type"] == "urn:tokenward:problem:unavailable"


async def test_cache_disabled_asks_redis_every_time(make_tw: MakeTw, redis: aioredis.Redis) -> None:
    """SessionCache(max_entries=0) (the benchmark's per-request lookup mode) caches nothing."""
    tw = await make_tw()
    tw.cache = tw.sessions.cache = tw.feed.cache = SessionCache(max_entries=0)
    tw.cache.set_healthy(True)
    async with client_for(tw) as client:
        tokens = await Accounts(client).new_bearer()
        assert await me_status(client, tokens) == 200
        assert len(tw.cache) == 0
        await redis.delete(session_key(tokens["user"]["id"], tokens["session"]["id"]))
        assert await me_status(client, tokens) == 401
