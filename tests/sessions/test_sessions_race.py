"""Concurrent refreshes against a real server with two worker processes racing on one Redis.

Every caller presenting the same refresh token within the grace window gets the same
successor; a refresh racing a logout never brings the session back.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import httpx
import redis.asyncio as aioredis
from sessions_support import Accounts, Server, auth, refresh_bearer, session_key

from waiting import await_until

ROUNDS = 50
CALLERS = 20


async def test_concurrent_refreshes_get_one_successor_per_round(
    server: Callable[..., Server], redis: aioredis.Redis
) -> None:
    """20 concurrent refreshes of one token, 50 rounds, 2 workers: one successor, no 5xx."""
    # 50 rotations of one session in a few seconds: lift the per-session limit for this test.
    srv = server(workers=2, refresh_rate_limit=10_000)
    statuses: collections.Counter[int] = collections.Counter()
    async with srv.client() as c:
        tokens = await Accounts(c, srv.base_url).new_bearer()
    uid, sid = tokens["user"]["id"], tokens["session"]["id"]
    current, access = tokens["refresh_token"], tokens["access_token"]
    for round_no in range(ROUNDS):
        # A fresh client per round: 20 new connections, spread by the kernel over both workers.
        async with srv.client(limits=httpx.Limits(max_connections=CALLERS)) as c:
            replies = await asyncio.gather(*(refresh_bearer(c, current) for _ in range(CALLERS)))
        statuses.update(r.status_code for r in replies)
        assert all(r.status_code == 200 for r in replies), (
            round_no,
            [(r.status_code, r.text) for r in replies if r.status_code != 200],
        )
        successors = {r.json()["refresh_token"] for r in replies}
        assert len(successors) == 1, f"round {round_no}: {len(successors)} distinct successors"
        assert current not in successors
        current = successors.pop()
        access = replies[-1].json()["access_token"]
    assert statuses == {200: ROUNDS * CALLERS}
    print(f"{ROUNDS} rounds x {CALLERS} concurrent refreshes, 2 workers: {dict(statuses)}")
    async with srv.client() as c:
        me = await c.get("/auth/me", headers=auth(access))
        assert me.status_code == 200, me.text
        again = await refresh_bearer(c, current)
        assert again.status_code == 200, again.text
        access = again.json()["access_token"]
        ended = await c.get("/auth/sessions/ended", headers=auth(access))
        assert ended.json() == [], "a false theft alarm ended a session"
        listed = await c.get("/auth/sessions", headers=auth(access))
        assert [s["id"] for s in listed.json()] == [sid]
    assert await redis.exists(session_key(uid, sid)) == 1


async def test_refresh_racing_logout_never_resurrects_the_session(
    server: Callable[..., Server], redis: aioredis.Redis
) -> None:
    """A refresh and a logout of one session at the same moment: the session stays ended."""
    srv = server(workers=2)
    outcomes: collections.Counter[str] = collections.Counter()
    async with srv.client() as c:
        email = await Accounts(c, srv.base_url).register()
    for round_no in range(30):
        # A client (and address) per round: the refused refreshes of one round must not add
        # up to the per-address throttle of refused refreshes.
        async with srv.client(limits=httpx.Limits(max_connections=16)) as c:
            tokens = await Accounts(c, srv.base_url).login_bearer(email)
            uid, sid = tokens["user"]["id"], tokens["session"]["id"]
            refresh, access = tokens["refresh_token"], tokens["access_token"]
            # Alternate the two logout forms: by access token, and by refresh token.
            logout = (
                c.post("/auth/logout", headers=auth(access))
                if round_no % 2
                else c.post("/auth/logout", json={"refresh_token": refresh})
            )
            refreshes = [refresh_bearer(c, refresh) for _ in range(3)]
            # Open the connections first, and alternate who is sent first, so that both
            # orders really happen (the outcome counts are printed).
            await asyncio.gather(*(c.get("/healthz") for _ in range(4)))
            if round_no % 3:
                out, *refreshed = await asyncio.gather(logout, *refreshes)
            else:
                *refreshed, out = await asyncio.gather(*refreshes, logout)
            assert out.status_code in (204, 401), out.text
            assert all(r.status_code in (200, 401) for r in refreshed), [r.text for r in refreshed]
            won = [r for r in refreshed if r.status_code == 200]
            outcomes["refresh first" if won else "logout first"] += 1
            assert await redis.exists(session_key(uid, sid)) == 0, "session resurrected"
            assert (await c.get("/auth/me", headers=auth(access))).status_code == 401
            for r in won:
                body = r.json()
                me = await c.get("/auth/me", headers=auth(body["access_token"]))
                assert me.status_code == 401, "a token minted by the racing refresh still works"
                again = await refresh_bearer(c, body["refresh_token"])
                assert again.status_code == 401
            assert (await refresh_bearer(c, refresh)).status_code == 401
    print(f"refresh vs logout, 30 rounds: {dict(outcomes)}")


async def test_logout_reaches_every_worker(server: Callable[..., Server]) -> None:
    """Two workers with warm caches: after a logout both refuse the access token (≤ 1 s)."""
    srv = server(workers=2)
    first_try: collections.Counter[int] = collections.Counter()
    for _ in range(10):
        async with srv.client() as c:
            tokens = await Accounts(c, srv.base_url).new_bearer()
        access = auth(tokens["access_token"])
        # Warm both workers' caches: fresh connections land on either process.
        async with srv.client(limits=httpx.Limits(max_connections=20)) as c:
            warm = await asyncio.gather(*(c.get("/auth/me", headers=access) for _ in range(20)))
            assert {r.status_code for r in warm} == {200}
            assert (await c.post("/auth/logout", headers=access)).status_code == 204
        async with srv.client(limits=httpx.Limits(max_connections=20)) as c:
            after = await asyncio.gather(*(c.get("/auth/me", headers=access) for _ in range(20)))
        first_try.update(r.status_code for r in after)

        async def all_refused(access: dict[str, str] = access) -> bool:
            async with srv.client(limits=httpx.Limits(max_connections=20)) as c:
                replies = await asyncio.gather(
                    *(c.get("/auth/me", headers=access) for _ in range(20))
                )
            return {r.status_code for r in replies} == {401}

        await await_until(all_refused, within=1.0)
    print(f"first requests after logout, 10 rounds x 20 on fresh connections: {dict(first_try)}")
