"""Devices: listing sessions, ending one, logging out everywhere, password change, the
per-user session limit and the record of ended sessions."""

from __future__ import annotations

from typing import Any

import httpx
import redis.asyncio as aioredis
from sessions_support import (
    PASSWORD,
    Accounts,
    MakeTw,
    auth,
    client_for,
    refresh_bearer,
    session_key,
    set_cookies,
)

from tokenward.clock import FrozenClock
from tokenward.http.routes import rfc3339
from tokenward.runtime import Tokenward

NEW_PASSWORD = "a different horse battery staple"


def clock_of(tw: Tokenward) -> FrozenClock:
    assert isinstance(tw.clock, FrozenClock)
    return tw.clock


async def alive(client: httpx.AsyncClient, tokens: dict[str, Any]) -> bool:
    return (await client.get("/auth/me", headers=auth(tokens["access_token"]))).status_code == 200


async def test_list_shows_each_device_with_its_details(make_tw: MakeTw) -> None:
    """Fields, times, IP from a trusted proxy's X-Forwarded-For, user agent, current flag."""
    tw = await make_tw(trusted_proxies="10.0.0.0/8")
    clock = clock_of(tw)
    async with client_for(tw, host="10.20.30.40") as client:  # a trusted proxy
        accounts = Accounts(client)
        email = await accounts.register()
        login_at = clock.now()
        phone = await accounts.login_bearer(
            email, headers={"User-Agent": "Phone/1.0", "X-Forwarded-For": "203.0.113.7"}
        )
        clock.advance(60)
        laptop = await accounts.login_bearer(email, headers={"User-Agent": "Laptop/2.0"})
        clock.advance(60)
        await refresh_bearer(client, phone["refresh_token"])  # the phone is now most recent
        r = await client.get("/auth/sessions", headers=auth(laptop["access_token"]))
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    rows = r.json()
    assert [row["id"] for row in rows] == [phone["session"]["id"], laptop["session"]["id"]]
    first, second = rows
    assert set(first) == {
        "id", "created_at", "last_used_at", "expires_at", "ip", "user_agent", "current",
        "amr", "auth_time", "second_factor",
    }  # fmt: skip
    assert first["created_at"] == rfc3339(login_at)
    # A password sign-in: amr pwd, at its login (docs/sessions.md).
    assert first["amr"] == ["pwd"]
    assert first["auth_time"] == first["created_at"]
    assert first["last_used_at"] == rfc3339(login_at + 120)
    assert first["expires_at"] == rfc3339(login_at + 120 + tw.settings.session_idle_ttl)
    assert (first["ip"], first["user_agent"], first["current"]) == (
        "203.0.113.7",
        "Phone/1.0",
        False,
    )
    assert (second["ip"], second["user_agent"], second["current"]) == (
        "10.20.30.40",
        "Laptop/2.0",
        True,
    )


async def test_forwarded_for_is_ignored_without_trusted_proxies(tw: Tokenward) -> None:
    """Nobody picks their own IP: with no trusted proxy the socket peer is recorded."""
    async with client_for(tw, host="10.9.8.7") as client:
        accounts = Accounts(client)
        tokens = await accounts.login_bearer(
            await accounts.register(), headers={"X-Forwarded-For": "203.0.113.7"}
        )
        rows = (await client.get("/auth/sessions", headers=auth(tokens["access_token"]))).json()
    assert rows[0]["ip"] == "10.9.8.7"


async def test_delete_ends_own_session_and_404s_anything_else(
    client: httpx.AsyncClient, accounts: Accounts, redis: aioredis.Redis
) -> None:
    """Own session: 204 and its tokens die; again, another user's or malformed: 404."""
    email = await accounts.register()
    me, other_device = await accounts.login_bearer(email), await accounts.login_bearer(email)
    stranger = await accounts.new_bearer()
    h = auth(me["access_token"])
    assert await alive(client, other_device)
    r = await client.delete(f"/auth/sessions/{other_device['session']['id']}", headers=h)
    assert r.status_code == 204
    assert not await alive(client, other_device)
    assert (await refresh_bearer(client, other_device["refresh_token"])).status_code == 401
    for sid in (
        other_device["session"]["id"],  # already ended
        stranger["session"]["id"],  # someone else's
        "not-a-session",
        "x" * 200,
        "ended",
    ):
        r = await client.delete(f"/auth/sessions/{sid}", headers=h)
        assert r.status_code == 404, sid
        assert r.json()["type"] == "urn:tokenward:problem:not-found"
    assert await alive(client, stranger)
    assert await redis.exists(session_key(stranger["user"]["id"], stranger["session"]["id"]))
    assert await alive(client, me)


async def test_delete_current_session_is_a_logout_with_cookies_cleared(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Deleting the session the request comes from logs it out and clears all three cookies."""
    await accounts.login_cookie(await accounts.register())
    sid = (await client.get("/auth/sessions")).json()[0]["id"]
    r = await client.delete(f"/auth/sessions/{sid}", headers=accounts.csrf_headers())
    assert r.status_code == 204
    cleared = set_cookies(r)
    assert set(cleared) == {"__Host-access_token", "__Secure-refresh_token", "__Host-csrf_token"}
    assert all(c["max-age"] == "0" and c["value"] == "" for c in cleared.values())
    assert (await client.get("/auth/me")).status_code == 401


async def test_delete_needs_csrf_in_cookie_mode(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """DELETE is unsafe: without the CSRF header a cookie request is refused (403)."""
    await accounts.login_cookie(await accounts.register())
    sid = (await client.get("/auth/sessions")).json()[0]["id"]
    assert (await client.delete(f"/auth/sessions/{sid}")).status_code == 403
    assert (await client.get("/auth/me")).status_code == 200


async def test_logout_all_without_body_keeps_nothing(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """POST /auth/logout-all with no body ends every session, the current one included."""
    email = await accounts.register()
    others = [await accounts.login_bearer(email) for _ in range(2)]
    await accounts.login_cookie(email)
    r = await client.post("/auth/logout-all", headers=accounts.csrf_headers())
    assert r.status_code == 204
    assert all(c["max-age"] == "0" for c in set_cookies(r).values())
    assert (await client.get("/auth/me")).status_code == 401
    for tokens in others:
        assert not await alive(client, tokens)


async def test_logout_all_keep_current(client: httpx.AsyncClient, accounts: Accounts) -> None:
    """keep_current: every other session ends, this one goes on (bearer)."""
    email = await accounts.register()
    me, other = await accounts.login_bearer(email), await accounts.login_bearer(email)
    r = await client.post(
        "/auth/logout-all", json={"keep_current": True}, headers=auth(me["access_token"])
    )
    # Bearer: 200 with the kept session's new tokens (it is re-keyed).
    assert r.status_code == 200, r.text
    assert r.json()["session"]["id"] == me["session"]["id"]
    me = r.json()
    assert await alive(client, me)
    assert not await alive(client, other)
    ended = (await client.get("/auth/sessions/ended", headers=auth(me["access_token"]))).json()
    assert [(e["id"], e["reason"]) for e in ended] == [(other["session"]["id"], "logout-all")]


async def test_password_change_checks_current_and_ends_the_others(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Wrong current password: 403, nothing ends. Right: 204, only this session survives."""
    email = await accounts.register()
    me, other = await accounts.login_bearer(email), await accounts.login_bearer(email)
    h = auth(me["access_token"])
    wrong = await client.post(
        "/auth/password",
        json={"current_password": "not my password at all", "new_password": NEW_PASSWORD},
        headers=h,
    )
    assert wrong.status_code == 403
    assert wrong.json()["type"] == "urn:tokenward:problem:invalid-credentials"
    assert await alive(client, other)
    ok = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=h,
    )
    assert ok.status_code == 200, ok.text  # bearer: the re-keyed session's new tokens
    assert ok.json()["session"]["id"] == me["session"]["id"]
    me = ok.json()
    assert await alive(client, me)
    assert not await alive(client, other)
    assert (await refresh_bearer(client, other["refresh_token"])).status_code == 401
    ended = (await client.get("/auth/sessions/ended", headers=h)).json()
    assert [e["reason"] for e in ended] == ["password-changed"]
    old = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert old.status_code == 401
    await accounts.login_bearer(email, NEW_PASSWORD)


async def test_login_past_the_limit_ends_the_least_recently_used(make_tw: MakeTw) -> None:
    """MAX_SESSIONS=3: a fourth login ends the session used least recently, not the oldest."""
    tw = await make_tw(max_sessions=3)
    clock = clock_of(tw)
    async with client_for(tw) as client:
        accounts = Accounts(client)
        email = await accounts.register()
        sessions = []
        for _ in range(3):
            sessions.append(await accounts.login_bearer(email))
            clock.advance(10)
        oldest, middle, newest = sessions
        # Using the oldest session (a refresh) makes it recent: the middle one is now LRU.
        oldest = {**oldest, **(await refresh_bearer(client, oldest["refresh_token"])).json()}
        clock.advance(10)
        fourth = await accounts.login_bearer(email)
        for tokens, expected in ((oldest, True), (middle, False), (newest, True), (fourth, True)):
            assert await alive(client, tokens) is expected, tokens["session"]["id"]
        listed = await client.get("/auth/sessions", headers=auth(fourth["access_token"]))
        assert len(listed.json()) == 3
        ended = await client.get("/auth/sessions/ended", headers=auth(fourth["access_token"]))
        assert [(e["id"], e["reason"]) for e in ended.json()] == [
            (middle["session"]["id"], "session-limit")
        ]
