"""Attempts answered 503 do not count against the login (and registration) limits.

A login that reaches the throttle and then finds the database down judged no password: the
reservation is refunded, so an outage never leaves owners locked out once it is over. Run
against a real PostgreSQL server that the test stops and starts, and real Redis.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis
from abuse_support import PASSWORD, Accounts, MakeTw, client_for, fresh_ip, login
from outage_postgres import OutagePostgres, outage_postgres

from private_redis import private_redis
from tokenward.errors import InvalidCredentials, Unavailable
from tokenward.stores.redis_client import connect_redis
from tokenward.stores.redis_ratelimit import RedisRateLimiter
from tokenward.throttle import Limits, Throttle, account_digest, address_digest

#: Attempts made during the outage: more than the (account, address) limit of 10, so that
#: counting them would lock the pair (as it did: the 11th answer was 429, for 15 minutes).
OUTAGE_LOGINS = 15
OUTAGE_PASSWORD_CHANGES = 5
OUTAGE_REGISTRATIONS = 3


@pytest.fixture(scope="module")
def pg() -> Iterator[OutagePostgres]:
    with outage_postgres() as server:
        yield server


@pytest.fixture
def pg_up(pg: OutagePostgres) -> OutagePostgres:
    if not pg.running:  # a failed test may have left it stopped
        pg.start()
    return pg


def login_keys(email: str, ip: str) -> dict[str, str]:
    """The windows (zsets) a login from ``ip`` naming ``email`` is counted in."""
    scope, address = f"tw:{{rl:a:{account_digest(email)}}}", address_digest(ip)
    return {
        "pair": f"{scope}:ip:{address}:z",
        "account": f"{scope}:all:z",
        "address": f"tw:{{rl:ip:{address}}}:login:z",
        "register": f"tw:{{rl:ip:{address}}}:register:z",
    }


async def counters(redis: aioredis.Redis, keys: dict[str, str]) -> dict[str, int]:
    """Events in each window, and whether any lock exists."""
    counts = {name: int(await redis.zcard(key)) for name, key in keys.items()}
    locks = [key[: -len(":z")] + ":l" for key in keys.values()]
    counts["locks"] = int(await redis.exists(*locks))
    return counts


def unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["type"] == "urn:tokenward:problem:unavailable"


async def test_logins_during_a_database_outage_do_not_count(
    make_tw: MakeTw, pg_up: OutagePostgres, redis: aioredis.Redis
) -> None:
    """Two wrong guesses, then the database stops: 15 logins, 5 password changes and 3
    registrations all get 503 (never 429), every window holds exactly what it held before,
    and once the database is back the right password logs in at the first try."""
    tw = await make_tw(database_url=pg_up.url)
    ip = fresh_ip()
    async with client_for(tw, ip) as c:
        accounts = Accounts(c)
        email = await accounts.register()
        session = await accounts.login_bearer(email)
        auth = {"Authorization": f"Bearer {session['access_token']}"}
        for _ in range(2):
            assert (await login(c, email, "wrong wrong wrong 1")).status_code == 401
        keys = login_keys(email, ip)
        before = await counters(redis, keys)
        assert before["pair"] == 2, before
        assert before["register"] == 1, before

        pg_up.stop()
        statuses = []
        for _ in range(OUTAGE_LOGINS):
            r = await login(c, email, PASSWORD)
            statuses.append(r.status_code)
        for _ in range(OUTAGE_PASSWORD_CHANGES):
            r = await c.post(
                "/auth/password",
                json={"current_password": PASSWORD, "new_password": "another fine passphrase"},
                headers=auth,
            )
            statuses.append(r.status_code)
        for _ in range(OUTAGE_REGISTRATIONS):
            r = await c.post(
                "/auth/register", json={"email": Accounts.new_email(), "password": PASSWORD}
            )
            statuses.append(r.status_code)
        during = await counters(redis, keys)
        pg_up.start()

        assert statuses == [503] * len(statuses), statuses
        assert during == before
        assert await counters(redis, keys) == before
        r = await login(c, email, PASSWORD)
        assert r.status_code == 200, r.text
    after = await counters(redis, keys)
    assert after["pair"] == 0  # the good login cleared the pair, as always
    assert after["account"] == after["address"] == 2  # the two wrong guesses still count


async def test_a_refund_that_fails_too_still_answers_503(
    make_tw: MakeTw,
    pg_up: OutagePostgres,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database is down, and Redis dies after the attempt was reserved: the refund
    cannot be stored. The client still gets the database's 503 (not a 500, not the
    refund's error) and the lost refund is logged."""
    with private_redis(tmp_path_factory.mktemp("refund-redis")) as dying:
        tw = await make_tw(redis_url=dying.url, database_url=pg_up.url)
        try:
            async with client_for(tw, fresh_ip()) as c:
                email = await Accounts(c).register()
                store = tw.user_store
                by_email = store.by_email

                async def redis_dies_then_lookup(address: str) -> object:
                    dying.kill()  # a real crash, by pid, between reservation and refund
                    return await by_email(address)

                store.by_email = redis_dies_then_lookup  # type: ignore[method-assign,assignment]
                pg_up.stop()
                caplog.set_level(logging.WARNING, logger="tokenward.throttle")
                unavailable(await login(c, email, PASSWORD))
        finally:
            await tw.stop()
    assert any("refund after an outage failed" in r.getMessage() for r in caplog.records)


@pytest.fixture
async def throttle(redis_url: str) -> AsyncIterator[Throttle]:
    client = connect_redis(redis_url, timeout=2.0)
    yield Throttle(RedisRateLimiter(client), Limits())
    await client.aclose()


async def test_the_login_ticket_refunds_only_an_outage(
    throttle: Throttle, redis: aioredis.Redis
) -> None:
    """At the throttle itself: a block ending in ``Unavailable`` is refunded and the very
    same exception goes on; a wrong password (any other error) stays counted."""
    email, ip = Accounts.new_email(), fresh_ip()
    keys = login_keys(email, ip)
    del keys["register"]
    inside: list[dict[str, int]] = []

    async def attempt(now: int, failure: Exception) -> None:
        async with throttle.login(email, ip, now=now):
            inside.append(await counters(redis, keys))
            raise failure

    outage = Unavailable("user database unreachable")
    with pytest.raises(Unavailable) as raised:
        await attempt(1_000, outage)
    assert raised.value is outage
    assert await counters(redis, keys) == dict.fromkeys(keys, 0) | {"locks": 0}
    with pytest.raises(InvalidCredentials):
        await attempt(1_001, InvalidCredentials("invalid email or password"))
    assert await counters(redis, keys) == dict.fromkeys(keys, 1) | {"locks": 0}
    assert inside == [dict.fromkeys(keys, 1) | {"locks": 0}] * 2


async def test_a_registration_ticket_refunds_an_outage(
    throttle: Throttle, redis: aioredis.Redis
) -> None:
    """The same for registrations (the database refused the insert)."""
    ip = fresh_ip()
    key = login_keys(Accounts.new_email(), ip)["register"]
    inside: list[int] = []

    async def attempt() -> None:
        async with throttle.register(ip, now=1_000):
            inside.append(await redis.zcard(key))
            raise Unavailable("user database unreachable")

    with pytest.raises(Unavailable):
        await attempt()
    assert inside == [1]
    assert await redis.zcard(key) == 0


async def test_reads_survive_a_database_restart(pg_up: OutagePostgres) -> None:
    """Pooled connections are not pinged before each use. After a restart of the server
    they are all dead: the first read finds so, runs once more on a new connection and
    answers (no 503), and so does every read and write after it."""
    from tokenward.stores.sql_users import SqlUserStore, create_engine, upgrade
    from tokenward.users import User

    engine = create_engine(pg_up.url)
    try:
        await upgrade(engine)
        store = SqlUserStore(engine)
        email = Accounts.new_email()
        user = User(id=uuid.uuid4().hex, email=email, password_hash="x", created_at=1)
        await store.add(user)
        found = await asyncio.gather(*(store.by_id(user.id) for _ in range(4)))  # 4 pooled
        assert [u.email for u in found if u is not None] == [email] * 4
        pg_up.stop()
        pg_up.start()
        again = await store.by_email(email)
        assert again is not None
        assert again.id == user.id
        assert [(await store.by_id(user.id)) == user for _ in range(4)] == [True] * 4
        assert await store.set_disabled(user.id, True, now=2)
    finally:
        await engine.dispose()
