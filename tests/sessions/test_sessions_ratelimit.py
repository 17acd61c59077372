"""The per-session refresh rate limit: a burst gets 429 + Retry-After, while concurrent
replays of one token inside the grace window are never refused by it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from sessions_support import Accounts, MakeTw, Server, auth, client_for, refresh_bearer

from tokenward.clock import FrozenClock
from tokenward.runtime import Tokenward
from tokenward.throttle import address_digest

LIMITED = "urn:tokenward:problem:rate-limited"


async def test_a_burst_of_refreshes_gets_429_with_retry_after(make_tw: MakeTw) -> None:
    """Limit 3 per 60 s: the fourth rotation is refused; the session survives it."""
    tw = await make_tw(refresh_rate_limit=3, refresh_rate_window=60)
    assert isinstance(tw.clock, FrozenClock)
    async with client_for(tw) as client:
        tokens = await Accounts(client).new_bearer()
        current = tokens["refresh_token"]
        for _ in range(3):
            r = await refresh_bearer(client, current)
            assert r.status_code == 200
            current = r.json()["refresh_token"]
        tw.clock.advance(15)
        limited = await refresh_bearer(client, current)
        assert limited.status_code == 429
        assert limited.json()["type"] == LIMITED
        assert limited.headers["retry-after"] == "45"
        assert limited.json()["retry_after"] == 45
        assert (await refresh_bearer(client, current)).status_code == 429
        # Not a theft, not an ending: the same token works once the window has passed.
        access = r.json()["access_token"]
        assert (await client.get("/auth/me", headers=auth(access))).status_code == 200
        tw.clock.advance(45)
        assert (await refresh_bearer(client, current)).status_code == 200
        # One security event for the burst (not one per retry), and every refusal counted.
        await tw.events.drain()
        events = (await client.get("/auth/events", headers=auth(access))).json()
        throttled = [e for e in events if e["kind"] == "throttled"]
        assert len(throttled) == 1, events
        assert throttled[0]["detail"] == {"limit": "refresh-session", "retry_after": 45}
        assert throttled[0]["session_id"] == tokens["session"]["id"]
        metrics = (await tw.metrics.render()).decode()  # /metrics is not on the public app
        assert 'tokenward_rate_limit_refusals_total{limit="refresh-session"} 2.0' in metrics


async def test_grace_replays_are_never_rate_limited(make_tw: MakeTw) -> None:
    """Limit 1: twelve concurrent first refreshes all succeed with one successor, and twelve
    later replays of the replaced token too (23 replays, under the 32 a rotation allows:
    test_sessions_theft covers the cap); the current token meanwhile is limited."""
    tw = await make_tw(refresh_rate_limit=1, refresh_rate_window=60)
    async with client_for(tw) as client:
        tokens = await Accounts(client).new_bearer()
        first = await asyncio.gather(
            *(refresh_bearer(client, tokens["refresh_token"]) for _ in range(12))
        )
        assert [r.status_code for r in first] == [200] * 12
        successors = {r.json()["refresh_token"] for r in first}
        assert len(successors) == 1
        replays = await asyncio.gather(
            *(refresh_bearer(client, tokens["refresh_token"]) for _ in range(12))
        )
        assert [r.status_code for r in replays] == [200] * 12
        assert {r.json()["refresh_token"] for r in replays} == successors
        successor = successors.pop()
        limited = await asyncio.gather(*(refresh_bearer(client, successor) for _ in range(5)))
        assert {r.status_code for r in limited} == {429}
        assert all(int(r.headers["retry-after"]) >= 1 for r in limited)


async def test_rate_limit_on_a_real_server_with_two_workers(
    server: Callable[..., Server],
) -> None:
    """Same story over real processes: concurrent grace callers pass, the burst gets 429."""
    srv = server(workers=2, refresh_rate_limit=1)
    async with srv.client(limits=httpx.Limits(max_connections=20)) as c:
        tokens = await Accounts(c, srv.base_url).new_bearer()
        first = await asyncio.gather(
            *(refresh_bearer(c, tokens["refresh_token"]) for _ in range(20))
        )
        assert [r.status_code for r in first] == [200] * 20
        successors = {r.json()["refresh_token"] for r in first}
        assert len(successors) == 1
        successor = successors.pop()
        burst = await asyncio.gather(*(refresh_bearer(c, successor) for _ in range(20)))
        assert {r.status_code for r in burst} == {429}
        assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in burst)


async def test_correct_refreshes_store_nothing_against_the_address(make_tw: MakeTw) -> None:
    """The refused-refresh limit per address is counted after the fact: good rotations leave
    no window behind (no Redis round trip for it), refused ones are counted, and once the
    window is full every attempt from that address, even a good token, gets 429."""
    tw = await make_tw(refresh_ip_limit=3, refresh_rate_limit=1000)
    host = "198.51.100.23"
    window = f"tw:{{rl:ip:{address_digest(host)}}}:refresh:z"
    async with client_for(tw, host) as client:
        current = (await Accounts(client).new_bearer())["refresh_token"]
        refunds = await _calls(tw, "zrem")
        for _ in range(5):
            r = await refresh_bearer(client, current)
            assert r.status_code == 200, r.text
            current = r.json()["refresh_token"]
        assert await tw.redis.exists(window) == 0
        assert await _calls(tw, "zrem") == refunds  # nothing reserved, nothing refunded
        uid, sid, _ = current.split(".")
        forged = f"{uid}.{sid}.{'A' * 43}"  # well formed, the session's ids, not its secret
        for count in (1, 2, 3):
            assert (await refresh_bearer(client, forged)).status_code == 401
            assert await tw.redis.zcard(window) == count
        assert (await refresh_bearer(client, current)).status_code == 429
        assert (await refresh_bearer(client, forged)).status_code == 429
    async with client_for(tw, "198.51.100.99") as other:
        assert (await refresh_bearer(other, current)).status_code == 200


async def _calls(tw: Tokenward, command: str) -> int:
    stats = await tw.redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
