"""Security events: recorded per user and globally, readable by their owner, and logged
without secrets."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
import zlib
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from abuse_support import (
    BEARER,
    PASSWORD,
    Accounts,
    MakeTw,
    client_for,
    fresh_ip,
    login,
    new_email,
)

from tokenward.events import EventKind, SecurityEvent, SecurityEvents
from tokenward.logs import JsonFormatter
from tokenward.stores.redis_client import connect_redis
from tokenward.stores.redis_events import (
    GLOBAL_SHARDS,
    RedisEventLog,
    agent_key,
    agent_ref,
    global_key,
)
from tokenward.throttle import account_digest


async def events_of(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    r = await client.get("/auth/events", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    rows: list[dict[str, Any]] = r.json()
    return rows


def kinds(rows: list[dict[str, Any]]) -> list[str]:
    return [row["kind"] for row in rows]


async def test_a_users_story_is_in_their_events_newest_first(make_tw: MakeTw) -> None:
    """Register, a stranger's failed guess, a login from a new device, then from the same."""
    tw = await make_tw()
    home, stranger = fresh_ip(), fresh_ip()
    async with client_for(tw, home) as c, client_for(tw, stranger) as s:
        email = await Accounts(c).register()
        r = await login(s, email, "guess guess 123", **{"user-agent": "curl/8.0"})
        assert r.status_code == 401
        tw.clock.advance(5)  # type: ignore[attr-defined]
        tokens = await Accounts(c).login_bearer(email)
        await Accounts(c).login_bearer(email)  # same device: no second new-device event
        rows = await events_of(c, tokens["access_token"])
    assert sorted(kinds(rows)) == sorted(
        ["account.registered", "login.failed", "login.succeeded", "login.new-device",
         "login.succeeded"]
    )  # fmt: skip
    failed = next(row for row in rows if row["kind"] == "login.failed")
    assert failed["ip"] == stranger
    assert failed["user_agent"] == "curl/8.0"
    assert failed["at"].endswith("Z")
    new_device = next(row for row in rows if row["kind"] == "login.new-device")
    assert new_device["ip"] == home
    assert new_device["session_id"] == tokens["session"]["id"]
    assert rows == sorted(rows, key=lambda row: row["id"], reverse=True)


async def test_a_new_user_agent_is_a_new_device(make_tw: MakeTw) -> None:
    """Same address, another browser: a new-device event; the known one again: none."""
    tw = await make_tw()
    async with client_for(tw, fresh_ip()) as c:
        email = await Accounts(c).register()
        first = await login(c, email, PASSWORD, **{"user-agent": "Firefox/140"})
        await login(c, email, PASSWORD, **{"user-agent": "Firefox/140"})
        await login(c, email, PASSWORD, **{"user-agent": "Safari/19"})
        rows = await events_of(c, first.json()["access_token"])
    devices = [row["user_agent"] for row in rows if row["kind"] == "login.new-device"]
    assert sorted(devices) == ["Firefox/140", "Safari/19"]


async def test_theft_password_change_and_ended_sessions_are_recorded(make_tw: MakeTw) -> None:
    """A replayed refresh token, a password change, a logout-all and a revocation."""
    tw = await make_tw()
    async with client_for(tw, fresh_ip()) as c:
        email = await Accounts(c).register()
        victim = await Accounts(c).login_bearer(email)
        old = victim["refresh_token"]
        r = await c.post("/auth/refresh", json={"refresh_token": old}, headers=BEARER)
        assert r.status_code == 200
        tw.clock.advance(60)  # type: ignore[attr-defined]  # past the grace window
        r = await c.post("/auth/refresh", json={"refresh_token": old}, headers=BEARER)
        assert r.json()["type"] == "urn:tokenward:problem:refresh-reused"
        main = await Accounts(c).login_bearer(email)
        others = [await Accounts(c).login_bearer(email) for _ in range(3)]
        auth = {"Authorization": f"Bearer {main['access_token']}"}
        body = {"current_password": PASSWORD, "new_password": "brand new passphrase 9"}
        # Bearer: 200 with the kept session's new tokens (a password change re-keys it).
        assert (await c.post("/auth/password", json=body, headers=auth)).status_code == 200
        more = await Accounts(c).login_bearer(email, "brand new passphrase 9")
        sid = more["session"]["id"]
        assert (await c.delete(f"/auth/sessions/{sid}", headers=auth)).status_code == 204
        await Accounts(c).login_bearer(email, "brand new passphrase 9")
        r = await c.post("/auth/logout-all", json={"keep_current": True}, headers=auth)
        assert r.status_code == 200  # bearer: the re-keyed session's new tokens
        rows = await events_of(c, main["access_token"])
    reused = next(row for row in rows if row["kind"] == "refresh.reused")
    assert reused["session_id"] == victim["session"]["id"]
    changed = next(row for row in rows if row["kind"] == "password.changed")
    assert changed["session_id"] == main["session"]["id"]
    assert changed["detail"] == {"sessions_ended": len(others)}
    ended = [row["detail"] for row in rows if row["kind"] == "sessions.ended"]
    assert {"reason": "revoked", "count": 1} in ended
    assert {"reason": "logout-all", "count": 1} in ended


async def test_logout_is_recorded_in_both_transports(make_tw: MakeTw) -> None:
    """Bearer and cookie logouts both leave a sessions.ended event."""
    tw = await make_tw()
    async with client_for(tw, fresh_ip()) as c:
        accounts = Accounts(c)
        email = await accounts.register()
        reader = await accounts.login_bearer(email)
        bearer = await accounts.login_bearer(email)
        r = await c.post(
            "/auth/logout", headers={"Authorization": f"Bearer {bearer['access_token']}"}
        )
        assert r.status_code == 204
        await accounts.login_cookie(email)
        assert (await c.post("/auth/logout", headers=accounts.csrf_headers())).status_code == 204
        rows = await events_of(c, reader["access_token"])
    logouts = [row for row in rows if row["kind"] == "sessions.ended"]
    assert [row["detail"]["reason"] for row in logouts] == ["logout", "logout"]


async def test_throttling_is_one_event_per_lock_for_the_owner(make_tw: MakeTw) -> None:
    """Fifty refused guesses make one ``throttled`` event, not fifty."""
    tw = await make_tw()
    attacker = fresh_ip()
    async with client_for(tw, fresh_ip()) as c, client_for(tw, attacker) as a:
        email = await Accounts(c).register()
        for _ in range(60):
            await login(a, email, "guess guess 123")
        tokens = await Accounts(c).login_bearer(email)
        rows = await events_of(c, tokens["access_token"])
    throttled = [row for row in rows if row["kind"] == "throttled"]
    assert len(throttled) == 1
    assert throttled[0]["ip"] == attacker
    assert throttled[0]["detail"]["limit"] == "login-pair"
    assert throttled[0]["detail"]["retry_after"] == 900
    assert kinds(rows).count("login.failed") == 10


async def test_users_read_only_their_own_events(make_tw: MakeTw) -> None:
    """Another user's events never show; without a token the route is 401."""
    tw = await make_tw()
    async with client_for(tw, fresh_ip()) as c:
        alice, bob = await Accounts(c).register(), await Accounts(c).register()
        await login(c, alice, "wrong wrong 123")
        a = await Accounts(c).login_bearer(alice)
        b = await Accounts(c).login_bearer(bob)
        bob_rows = await events_of(c, b["access_token"])
        alice_rows = await events_of(c, a["access_token"])
        assert (await c.get("/auth/events")).status_code == 401
    assert "login.failed" not in kinds(bob_rows)
    assert not {row["id"] for row in alice_rows} & {row["id"] for row in bob_rows}


async def test_operators_read_the_global_stream(make_tw: MakeTw) -> None:
    """Every event lands in the global stream, failures against unknown accounts included,
    filterable by kind and paged by id."""
    tw = await make_tw()
    nobody = new_email()
    async with client_for(tw, fresh_ip()) as c:
        email = await Accounts(c).register()
        await login(c, nobody, "guess guess 123")
        # Written in the background after an account lookup: wait, so that the two land in
        # the order the test reads them back (concurrent lookups may finish either way).
        await tw.events.drain()
        await login(c, email, "guess guess 123")
        await tw.events.drain()
    failed = await tw.event_log.recent(limit=50, kinds=["login.failed"])
    mine = [
        e
        for e in failed
        if e.detail.get("account") in {account_digest(nobody), account_digest(email)}
    ]
    assert len(mine) == 2
    assert mine[0].uid is not None  # newest: the existing account
    assert mine[1].uid is None  # the unknown address names no user
    older = await tw.event_log.recent(limit=5, before=mine[0].id)
    assert all(e.id < mine[0].id for e in older)
    assert all(e.kind is EventKind.LOGIN_FAILED for e in failed)


async def test_histories_are_capped_and_expire(make_tw: MakeTw, redis: aioredis.Redis) -> None:
    """A user's history keeps TOKENWARD_EVENTS_PER_USER routine entries, and as many
    critical ones (here: the first login's new device, which the cap never pushes out);
    every key has a TTL."""
    tw = await make_tw(events_per_user=5, events_ttl=3600)
    async with client_for(tw, fresh_ip()) as c:
        email = await Accounts(c).register()
        for _ in range(8):
            tokens = await Accounts(c).login_bearer(email)
        rows = await events_of(c, tokens["access_token"])
    uid = tokens["user"]["id"]
    assert kinds(rows) == ["login.succeeded"] * 5 + ["login.new-device"]
    assert await redis.llen(f"tw:{{ev:{uid}}}:h") == 6  # five routine, one critical
    assert all(row["user_agent"] for row in rows)  # from the agent table
    assert not await redis.exists(f"tw:{{ev:{uid}}}:a")  # no clash: no agent of its own
    user_keys = [f"tw:{{ev:{uid}}}:{name}" for name in ("h", "d")]
    shards = [global_key(n) for n in range(GLOBAL_SHARDS)]
    agent = agent_key(zlib.crc32(uid.encode()) % GLOBAL_SHARDS, agent_ref(rows[0]["user_agent"]))
    assert await redis.get(agent) == rows[0]["user_agent"]
    for key in (*user_keys, *[k for k in shards if await redis.exists(k)]):
        assert 0 < await redis.ttl(key) <= 90 * 86_400, key
    for key in (user_keys[0], agent):
        assert 0 < await redis.ttl(key) <= 3600, key


async def test_events_older_than_the_ttl_are_not_shown(make_tw: MakeTw) -> None:
    """An active user's stream never expires whole; reads drop entries past the TTL."""
    tw = await make_tw(events_ttl=3600)
    async with client_for(tw, fresh_ip()) as c:
        email = await Accounts(c).register()
        tw.clock.advance(3601)  # type: ignore[attr-defined]
        tokens = await Accounts(c).login_bearer(email)
        rows = await events_of(c, tokens["access_token"])
    assert "account.registered" not in kinds(rows)


async def test_reading_events_returns_under_steady_event_traffic(make_tw: MakeTw) -> None:
    """GET /auth/events waits for the writes pending when it began, not for a queue that
    never empties: here every write records the next event, so one is always pending."""
    tw = await make_tw()
    uid, now = f"u-{uuid.uuid4().hex}", tw.clock.now()
    traffic = True
    events: SecurityEvents

    def record_next(event: SecurityEvent) -> None:
        if traffic:
            events.record(SecurityEvent(EventKind.LOGIN_FAILED, now, uid))

    events = SecurityEvents(tw.event_log, tw.user_store, observer=record_next)
    events.record(SecurityEvent(EventKind.REGISTERED, now, uid))
    try:
        rows = await asyncio.wait_for(events.for_user(uid, now=now), timeout=10)
    finally:
        traffic = False
        await events.drain()  # the writes still pending record nothing more
    assert EventKind.REGISTERED in {event.kind for event in rows}
    assert all(event.uid == uid for event in rows)


async def test_a_broken_event_store_never_fails_a_request(
    make_tw: MakeTw, caplog: pytest.LogCaptureFixture
) -> None:
    """Events are best effort: the login still works and the loss is logged (type only)."""
    tw = await make_tw()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = connect_redis(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    tw.events.sink = RedisEventLog(dead)
    caplog.set_level(logging.ERROR, logger="tokenward.events")
    try:
        async with client_for(tw, fresh_ip()) as c:
            email = await Accounts(c).register()
            await Accounts(c).login_bearer(email)
        await tw.events.drain()
    finally:
        await dead.aclose()
    assert any("security event not stored (Unavailable)" in r.getMessage() for r in caplog.records)


async def test_log_lines_carry_the_events_and_no_secret(
    make_tw: MakeTw, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole flow, logged at debug: no password, token, CSRF token or refresh secret in any
    line (formatted as JSON or not), and every event kind is there."""
    tw = await make_tw()
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [PASSWORD, "brand new passphrase 9", "guess guess 123"]
    async with client_for(tw, fresh_ip()) as c, client_for(tw, fresh_ip()) as thief:
        accounts = Accounts(c)
        email = await accounts.register()
        await login(thief, email, "guess guess 123")
        bearer = await accounts.login_bearer(email)
        secrets += [bearer["access_token"], bearer["refresh_token"]]
        refreshed = await c.post(
            "/auth/refresh", json={"refresh_token": bearer["refresh_token"]}, headers=BEARER
        )
        secrets += [refreshed.json()["access_token"], refreshed.json()["refresh_token"]]
        tw.clock.advance(60)  # type: ignore[attr-defined]
        await c.post(
            "/auth/refresh", json={"refresh_token": bearer["refresh_token"]}, headers=BEARER
        )
        cookie = await accounts.login_cookie(email)
        assert cookie.status_code == 200
        secrets += [v for k, v in c.cookies.items()]
        csrf = accounts.csrf_headers()
        r = await c.post("/auth/refresh", headers=csrf)
        assert r.status_code == 200
        secrets += [v for k, v in c.cookies.items()]
        body = {"current_password": PASSWORD, "new_password": "brand new passphrase 9"}
        assert (await c.post("/auth/password", json=body, headers=csrf)).status_code == 204
        secrets += [v for k, v in c.cookies.items()]  # the re-keyed session's new cookies
        csrf = accounts.csrf_headers()
        assert (await c.post("/auth/logout", headers=csrf)).status_code == 204
        for _ in range(12):
            await login(thief, email, "guess guess 123")
    await tw.events.drain()
    secrets += [token.rsplit(".", 1)[-1] for token in secrets if token.count(".") == 2]
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    lines += [record.getMessage() for record in caplog.records]
    lines += [str(getattr(record, "event", "")) for record in caplog.records]
    assert len(secrets) > 10
    for secret in secrets:
        assert len(secret) >= 10
        leaked = [line for line in lines if secret in line]
        assert not leaked, (secret[:6], leaked[:1])
    logged = {getattr(record, "event", {}).get("kind") for record in caplog.records}
    assert {
        "account.registered", "login.failed", "login.succeeded", "login.new-device",
        "refresh.reused", "password.changed", "sessions.ended", "throttled",
    } <= logged  # fmt: skip
