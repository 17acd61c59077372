"""A 503 means nothing changed, or its retry completes the change (issue 10 item 9).

Redis (a private ``redis-server``) is frozen with SIGSTOP at many points while refreshes
and logouts are in flight, for longer than ``TOKENWARD_BACKEND_TIMEOUT``: the requests
answer 503, and the commands already sent run when Redis is thawed, so some of those 503s
had in fact rotated a token or ended a session. For every 503 the test looks at Redis
(did it change?) and retries the same request: a refresh must get 200 (and the chain go
on from the token it returns), a logout 204 (and the session stay ended), whatever the
first attempt did. Before, such a retry of a committed logout was a 401 and a committed
rotation could end the session as refresh-reused.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from private_redis import PrivateRedis, private_redis
from tokenward.refresh import RefreshToken
from tokenward.runtime import Tokenward
from tw_accounts import BEARER, GENEROUS_LIMITS, ORIGIN, Accounts
from tw_factory import TokenwardFactory
from waiting import await_until

ROUNDS = 10
CHAINS = 12
LOGOUTS_PER_ROUND = 8
TIMEOUT = 0.25


@dataclass
class Seen:
    """What the clients saw, per kind of request."""

    first: collections.Counter[int] = field(default_factory=collections.Counter)
    unavailable: int = 0
    committed: int = 0  # 503s whose change Redis had in fact made
    retried: collections.Counter[int] = field(default_factory=collections.Counter)


@pytest.fixture
async def frozen(tmp_path: Path) -> AsyncIterator[tuple[PrivateRedis, Tokenward]]:
    with private_redis(tmp_path) as server:
        factory = TokenwardFactory(server.url, tmp_path, issuer=ORIGIN)
        try:
            tw = await factory.make(
                **GENEROUS_LIMITS,
                refresh_rate_limit=1_000_000,
                max_sessions=1000,
                backend_timeout=TIMEOUT,
            )
            yield server, tw
        finally:
            await factory.stop_all()


def _client(tw: Tokenward) -> httpx.AsyncClient:
    from tokenward.http.app import create_app

    transport = httpx.ASGITransport(app=create_app(tw, manage_lifespan=False))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN, timeout=30)


async def _settled(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Retry while 503, as a client would (bounded)."""
    for _ in range(40):
        r = await send()
        if r.status_code != 503:
            return r
    return r


async def test_every_503_changed_nothing_or_its_retry_completes_it(
    frozen: tuple[PrivateRedis, Tokenward],
) -> None:
    server, tw = frozen
    assert server.proc is not None
    pid = server.proc.pid
    look = redis.Redis(port=server.port, decode_responses=True)
    rng = random.Random(10)  # noqa: S311 -- where to freeze, not a secret
    refreshes, logouts = Seen(), Seen()
    try:
        async with _client(tw) as c:
            accounts = Accounts(c)
            email = await accounts.register()
            tokens = [(await accounts.login_bearer(email))["refresh_token"] for _ in range(CHAINS)]

            def current(token: str) -> bool:
                parsed = RefreshToken.parse(token)
                key = f"tw:{{u:{parsed.uid}}}:s:{parsed.sid}"
                return look.hget(key, "cur") == parsed.digest

            def live(session: dict[str, object]) -> bool:
                user, sess = session["user"], session["session"]
                assert isinstance(user, dict)
                assert isinstance(sess, dict)
                return bool(look.exists(f"tw:{{u:{user['id']}}}:s:{sess['id']}"))

            async def refresh(token: str) -> httpx.Response:
                return await c.post("/auth/refresh", json={"refresh_token": token}, headers=BEARER)

            answered = [0]  # requests of the current round that have been answered

            async def counted(call: Awaitable[httpx.Response]) -> httpx.Response:
                try:
                    return await call
                finally:
                    answered[0] += 1

            for _ in range(ROUNDS):
                leaving = [await accounts.login_bearer(email) for _ in range(LOGOUTS_PER_ROUND)]
                heads = [{"Authorization": f"Bearer {s['access_token']}"} for s in leaving]
                for head in heads:  # in use: the cache vouches, a logout goes straight to Redis
                    assert (await c.get("/auth/me", headers=head)).status_code == 200
                calls = [refresh(t) for t in tokens]
                calls += [c.post("/auth/logout", headers=h) for h in heads]
                answered[0], total = 0, len(calls)
                batch = asyncio.gather(*(counted(call) for call in calls))
                # A different point in flight each round: freeze once a random number of
                # the requests (none, up to most) have been answered.
                freeze_after = rng.randrange(0, len(calls) - 2)
                await await_until(lambda n=freeze_after: answered[0] >= n, within=30)
                os.kill(pid, signal.SIGSTOP)
                try:
                    # Frozen until every request still in flight has answered (its command
                    # timed out: 503), so each 503 is given before Redis could run it.
                    await await_until(lambda n=total: answered[0] == n, within=30)
                finally:
                    os.kill(pid, signal.SIGCONT)
                answers = await batch
                assert look.ping()  # thawed: the commands sent before the freeze have run
                for n, r in enumerate(answers[:CHAINS]):
                    refreshes.first[r.status_code] += 1
                    if r.status_code == 200:
                        tokens[n] = r.json()["refresh_token"]
                        continue
                    assert r.status_code == 503, r.text
                    refreshes.unavailable += 1
                    refreshes.committed += not current(tokens[n])
                    retry = await _settled(lambda t=tokens[n]: refresh(t))
                    refreshes.retried[retry.status_code] += 1
                    assert retry.status_code == 200, retry.text
                    tokens[n] = retry.json()["refresh_token"]
                for session, head, r in zip(leaving, heads, answers[CHAINS:], strict=True):
                    logouts.first[r.status_code] += 1
                    if r.status_code != 204:
                        assert r.status_code == 503, r.text
                        logouts.unavailable += 1
                        logouts.committed += not live(session)
                        retry = await _settled(lambda h=head: c.post("/auth/logout", headers=h))
                        logouts.retried[retry.status_code] += 1
                        assert retry.status_code == 204, retry.text
                    assert not live(session), "an acknowledged logout was not made"
            # Every chain goes on from the token it was last given.
            for token in tokens:
                r = await _settled(lambda t=token: refresh(t))
                assert r.status_code == 200, r.text
    finally:
        look.close()
    line = (
        f"{ROUNDS} freezes (timeout {TIMEOUT} s): refreshes {dict(refreshes.first)}"
        f", {refreshes.committed} of {refreshes.unavailable} 503s had rotated, retries "
        f"{dict(refreshes.retried)}; logouts {dict(logouts.first)}, {logouts.committed} of "
        f"{logouts.unavailable} 503s had ended the session, retries {dict(logouts.retried)}"
    )
    print(line)
    assert refreshes.unavailable > 0, line  # the freezes did catch requests in flight
    assert logouts.unavailable > 0, line
