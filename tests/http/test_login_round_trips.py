"""What a password login sends to Redis (issue 11): the login throttle's two checks in one
pipeline (the address and the account; an address this process saw crowded is judged alone
first, so that a refused address does not count against the account); then, in one write
of the shared connection, the session in one script that also renews the user's verified
marker and the throttle's success (the right password clears its record): two round trips
before the answer. Its security event and the device check are written after the answer:
one more (the event's two scripts and the device check in one write; a first login from a
device writes a second event). Three in all."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from private_redis import private_redis
from redis_sends import count_sends
from tokenward.http.app import create_app
from tw_accounts import BEARER, ORIGIN, PASSWORD, Accounts
from tw_factory import TokenwardFactory

#: Keys of what a login writes after its answer (security events, known devices).
BACKGROUND = ("tw:{ev:", "tw:{events:")


async def test_a_login_is_two_round_trips_before_its_answer_and_three_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Redis of its own (MONITOR sees only this login), a verified user's login sends
    the two throttle scripts together, then the session script (which renews the verified
    marker: no command of its own) with the throttle's success (DEL, ZREM, ZREM, the
    known-address script). Round trips are the client's sends (a pipeline or one write of
    the shared connection is one)."""
    with private_redis(tmp_path) as server:
        factory = TokenwardFactory(server.url, tmp_path, issuer=ORIGIN)
        try:
            tw = await factory.make()
            app = create_app(tw, manage_lifespan=False)
            transport = httpx.ASGITransport(app=app, client=("10.9.8.7", 4000))
            async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
                accounts = Accounts(client)
                email = await accounts.register()
                user = await tw.user_store.by_email(email)
                assert user is not None
                await tw.email_flows.mark_verified(user, now=tw.clock.now())
                await accounts.login_bearer(email)  # scripts loaded, connections open
                await tw.events.drain()
                sends = count_sends(tw.redis, monkeypatch)
                await server_marker(server.url)
                watcher = aioredis.Redis.from_url(server.url, decode_responses=True)
                sent: list[str] = []
                try:
                    async with watcher.monitor() as monitor:
                        r = await client.post(
                            "/auth/login",
                            json={"email": email, "password": PASSWORD},
                            headers=BEARER,
                        )
                        await tw.events.drain()
                        await server_marker(server.url)
                        async with asyncio.timeout(10):
                            async for cmd in monitor.listen():
                                text = cmd["command"]
                                if "login-round-trip-end" in text:
                                    break
                                if cmd.get("client_type") != "lua":
                                    sent.append(text)
                finally:
                    await watcher.aclose()
                assert r.status_code == 200, r.text
                on_path = [c for c in sent if not any(k in c for k in BACKGROUND)]
                on_path = [c for c in on_path if c.split()[0].upper() not in ("HELLO", "PING")]
                verbs = [c.split()[0].upper() for c in on_path]
                assert verbs == [
                    "EVALSHA",
                    "EVALSHA",
                    "EVALSHA",
                    "DEL",
                    "ZREM",
                    "ZREM",
                    "EVALSHA",
                ], on_path
                assert ":known " in on_path[6]
                trips = [t for t in sends if not any(k in t for k in BACKGROUND)]
                trips = [t for t in trips if "PING" not in t[:20] and "HELLO" not in t[:20]]
                assert len(trips) == 2, trips
                assert trips[0].count("EVALSHA") == 2, trips[0]
                assert trips[1].count("EVALSHA") == 2, trips[1]
                assert ":verified" in trips[1]
                assert ":known" in trips[1]
                after = [t for t in sends if any(k in t for k in BACKGROUND)]
                assert len(after) == 1, after
                assert after[0].count("EVALSHA") == 3, after[0]
                assert "tw:{events:" in after[0]
                assert f"tw:{{ev:{user.id}}}:h" in after[0]
                assert f"tw:{{ev:{user.id}}}:d" in after[0]
                create = on_path[2]
                assert f"tw:{{u:{user.id}}}:verified" in create, create
                ttl = await tw.redis.ttl(f"tw:{{u:{user.id}}}:verified")
                assert tw.settings.session_max_ttl - 60 < ttl <= tw.settings.session_max_ttl
        finally:
            await factory.stop_all()


async def server_marker(url: str) -> None:
    marker = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await marker.echo("login-round-trip-end")
    finally:
        await marker.aclose()


async def test_a_login_reads_the_user_database_twice(make_tw: Any) -> None:
    """A password login of a user without a second factor makes two queries: the user
    (which also says whether a second factor is confirmed, so the second step needs no
    lookup of its own) and, once the session exists, the user again (still enabled, same
    credentials). With a confirmed factor, the factors are read once more."""
    from sqlalchemy import event

    tw = await make_tw()
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    transport = httpx.ASGITransport(app=create_app(tw, manage_lifespan=False))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
        accounts = Accounts(client)
        email = await accounts.register()
        await accounts.login_bearer(email)
        # The first login's new-device notice (its own read of the user) is written and
        # sent after its answer: let it finish.
        await tw.events.drain()
        await tw.email_flows.drain()
        event.listen(tw.engine.sync_engine, "before_cursor_execute", seen)
        try:
            await accounts.login_bearer(email)
        finally:
            event.remove(tw.engine.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == 2, statements
    assert statements[0].startswith("SELECT tokenward_users."), statements
    assert statements[0].endswith("WHERE tokenward_users.email_key = ?"), statements
    assert statements[1].endswith("WHERE tokenward_users.id = ?"), statements
