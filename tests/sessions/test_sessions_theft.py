"""A second holder of a session's tokens is cut off: grace replays are bounded and bound to
the client that rotated, a password change or logout-all re-keys the kept session, a logout
with a rotated-out token is theft, and a re-login ends the session it replaces."""

from __future__ import annotations

from typing import Any

import httpx
import redis.asyncio as aioredis
from sessions_support import (
    BEARER,
    PASSWORD,
    Accounts,
    auth,
    client_for,
    refresh_bearer,
    session_key,
    set_cookies,
)

from tokenward.clock import FrozenClock
from tokenward.runtime import Tokenward

REUSED = "urn:tokenward:problem:refresh-reused"
#: Owner rotations the thief is given to ride the session before the test gives up.
ROUNDS = 10
OWNER_UA = {"User-Agent": "OwnerBrowser/1.0"}
THIEF_UA = {"User-Agent": "ThiefTool/2.0"}


def clock_of(tw: Tokenward) -> FrozenClock:
    assert isinstance(tw.clock, FrozenClock)
    return tw.clock


async def events_of(client: httpx.AsyncClient, access: str) -> list[dict[str, Any]]:
    r = await client.get("/auth/events", headers=auth(access))
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


async def ended_of(client: httpx.AsyncClient, access: str) -> list[tuple[str, str]]:
    r = await client.get("/auth/sessions/ended", headers=auth(access))
    assert r.status_code == 200, r.text
    return [(e["id"], e["reason"]) for e in r.json()]


async def test_a_thief_riding_the_grace_window_is_cut_off_within_a_few_rotations(
    tw: Tokenward, redis: aioredis.Redis
) -> None:
    """The thief holds one old refresh token and replays it 5 s after each owner rotation
    (inside the 10 s grace), from another client: the session ends at the first replay,
    as refresh-reused, and the theft is recorded. (It used to get the owner's current
    token every time, for as long as it liked, with no event.)"""
    async with (
        client_for(tw, "10.1.1.5") as owner,
        client_for(tw, "10.77.3.9") as thief,
        client_for(tw, "10.1.1.6") as laptop,
    ):
        owner.headers.update(OWNER_UA)
        thief.headers.update(THIEF_UA)
        email = await Accounts(owner).register()
        other = await Accounts(laptop).login_bearer(email)  # the owner's other device
        tokens = await Accounts(owner).login_bearer(email)
        uid, sid = tokens["user"]["id"], tokens["session"]["id"]
        stolen, current = tokens["refresh_token"], tokens["refresh_token"]
        ridden = 0
        for _ in range(ROUNDS):
            clock_of(tw).advance(60)  # the owner's access token is due again
            mine = await refresh_bearer(owner, current)
            if mine.status_code != 200:
                break
            current = mine.json()["refresh_token"]
            clock_of(tw).advance(5)  # the thief saw last_used_at move
            theirs = await refresh_bearer(thief, stolen)
            if theirs.status_code != 200:
                assert theirs.json()["type"] == REUSED, theirs.text
                break
            ridden += 1
            stolen = theirs.json()["refresh_token"]
        print(f"thief rode {ridden} of {ROUNDS} owner rotations")
        assert ridden == 0, f"the thief rode {ridden} rotations"
        assert await redis.exists(session_key(uid, sid)) == 0
        assert (await refresh_bearer(owner, current)).status_code == 401
        assert (sid, "refresh-reused") in await ended_of(laptop, other["access_token"])
        rows = await events_of(laptop, other["access_token"])
        reused = [r for r in rows if r["kind"] == "refresh.reused"]
        assert [r["session_id"] for r in reused] == [sid]
        assert reused[0]["user_agent"] == THIEF_UA["User-Agent"]


async def test_tabs_of_one_client_replaying_in_the_grace_never_end_the_session(
    tw: Tokenward,
) -> None:
    """Control: the same client (two tabs) presenting the token just replaced, 5 s after
    each rotation, for 20 rotations: every replay gets the current token, nothing ends."""
    async with client_for(tw, "10.3.3.3") as c:
        c.headers.update(OWNER_UA)
        tokens = await Accounts(c).new_bearer()
        current, access = tokens["refresh_token"], tokens["access_token"]
        for _ in range(20):
            clock_of(tw).advance(60)
            first = await refresh_bearer(c, current)
            assert first.status_code == 200, first.text
            clock_of(tw).advance(5)
            second = await refresh_bearer(c, current)
            assert second.status_code == 200, second.text
            assert second.json()["refresh_token"] == first.json()["refresh_token"]
            current, access = first.json()["refresh_token"], second.json()["access_token"]
        assert await ended_of(c, access) == []
        replays = [r for r in await events_of(c, access) if r["kind"] == "refresh.grace-replay"]
        assert len(replays) == 1, "grace replays are reported at most once an hour"


async def test_grace_replays_past_the_bound_end_the_session(tw: Tokenward) -> None:
    """One rotation, then 32 grace replays of the replaced token from the same client: all
    served; the 33rd is theft (the session ends as refresh-reused)."""
    bound = 32  # SessionPolicy.grace_replays
    async with client_for(tw, "10.4.4.4") as c:
        email = await Accounts(c).register()
        other = await Accounts(c).login_bearer(email)
        tokens = await Accounts(c).login_bearer(email)
        first = await refresh_bearer(c, tokens["refresh_token"])
        assert first.status_code == 200
        for n in range(bound):
            r = await refresh_bearer(c, tokens["refresh_token"])
            assert r.status_code == 200, (n, r.text)
        over = await refresh_bearer(c, tokens["refresh_token"])
        assert over.status_code == 401
        assert over.json()["type"] == REUSED
        ended = await ended_of(c, other["access_token"])
        assert ended == [(tokens["session"]["id"], "refresh-reused")]


async def test_grace_replays_are_recorded_at_most_once_an_hour(tw: Tokenward) -> None:
    """A grace replay is a security event (refresh.grace-replay), reported once per session
    per hour however many tabs replay."""
    async with client_for(tw, "10.5.5.5") as c:
        tokens = await Accounts(c).new_bearer()
        current = tokens["refresh_token"]
        for _ in range(3):
            clock_of(tw).advance(60)
            r = await refresh_bearer(c, current)
            assert (await refresh_bearer(c, current)).status_code == 200
            current, access = r.json()["refresh_token"], r.json()["access_token"]
        clock_of(tw).advance(3600)
        r = await refresh_bearer(c, current)
        assert (await refresh_bearer(c, current)).status_code == 200
        access = r.json()["access_token"]
        rows = [e for e in await events_of(c, access) if e["kind"] == "refresh.grace-replay"]
        assert len(rows) == 2
        assert {e["session_id"] for e in rows} == {tokens["session"]["id"]}


async def test_password_change_rekeys_the_kept_session(tw: Tokenward) -> None:
    """Bearer: the answer carries new tokens (200, the login body); a refresh token taken
    before the change, presented afterwards, is theft: refresh-reused, the session ends."""
    async with client_for(tw, "10.6.6.6") as c:
        email = await Accounts(c).register()
        tokens = await Accounts(c).login_bearer(email)
        stolen = tokens["refresh_token"]
        body = {"current_password": PASSWORD, "new_password": "a brand new passphrase 7"}
        r = await c.post("/auth/password", json=body, headers=auth(tokens["access_token"]))
        assert r.status_code == 200, r.text
        fresh = r.json()
        assert fresh["session"]["id"] == tokens["session"]["id"]
        assert fresh["user"] == {"id": tokens["user"]["id"]}  # no address: GET /auth/me has it
        assert fresh["refresh_token"] not in (stolen, "")
        me = await c.get("/auth/me", headers=auth(fresh["access_token"]))
        assert me.status_code == 200
        renewed = await refresh_bearer(c, fresh["refresh_token"])
        assert renewed.status_code == 200, renewed.text
        theirs = await refresh_bearer(c, stolen)
        assert theirs.status_code == 401
        assert theirs.json()["type"] == REUSED
        assert (await refresh_bearer(c, renewed.json()["refresh_token"])).status_code == 401


async def test_logout_all_keeping_the_current_session_rekeys_it(tw: Tokenward) -> None:
    """Cookie mode: new refresh and CSRF cookies; the old refresh cookie is dead (theft), the
    old CSRF token no longer belongs to the session. Bearer: new tokens in a 200 body."""
    async with client_for(tw, "10.7.7.7") as c:
        accounts = Accounts(c)
        email = await accounts.register()
        await accounts.login_cookie(email)
        old_refresh = c.cookies["__Secure-refresh_token"]
        old_csrf = accounts.csrf_headers()
        r = await c.post("/auth/logout-all", json={"keep_current": True}, headers=old_csrf)
        assert r.status_code == 204, r.text
        fresh = set_cookies(r)
        assert fresh["__Secure-refresh_token"]["value"] not in ("", old_refresh)
        assert fresh["__Host-csrf_token"]["value"] not in ("", old_csrf["X-CSRF-Token"])
        assert (await c.get("/auth/me")).status_code == 200
        assert (await c.post("/auth/refresh", headers=accounts.csrf_headers())).status_code == 200
        stale = await c.post("/auth/logout-all", json={"keep_current": True}, headers=old_csrf)
        assert stale.status_code == 403

        tokens = await accounts.login_bearer(email)
        r = await c.post(
            "/auth/logout-all", json={"keep_current": True}, headers=auth(tokens["access_token"])
        )
        assert r.status_code == 200, r.text
        assert r.json()["refresh_token"] != tokens["refresh_token"]
        assert (await refresh_bearer(c, r.json()["refresh_token"])).status_code == 200
        theirs = await refresh_bearer(c, tokens["refresh_token"])
        assert theirs.json()["type"] == REUSED


async def test_logout_with_a_rotated_out_token_is_theft(tw: Tokenward) -> None:
    """A logout presenting a refresh token replaced longer than the grace ago: 401
    refresh-reused, the session ended as refresh-reused and the theft recorded (it used to
    be a plain logout). Inside the grace it is still a plain logout."""
    async with client_for(tw, "10.8.8.8") as c:
        email = await Accounts(c).register()
        other = await Accounts(c).login_bearer(email)
        tokens = await Accounts(c).login_bearer(email)
        rotated = (await refresh_bearer(c, tokens["refresh_token"])).json()
        clock_of(tw).advance(tw.settings.refresh_grace + 1)
        r = await c.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 401, r.text
        assert r.json()["type"] == REUSED
        assert (await refresh_bearer(c, rotated["refresh_token"])).status_code == 401
        sid = tokens["session"]["id"]
        assert await ended_of(c, other["access_token"]) == [(sid, "refresh-reused")]
        rows = await events_of(c, other["access_token"])
        assert [e["session_id"] for e in rows if e["kind"] == "refresh.reused"] == [sid]

        # Control: the token just replaced, inside its grace, logs out plainly.
        tokens = await Accounts(c).login_bearer(email)
        await refresh_bearer(c, tokens["refresh_token"])
        r = await c.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 204
        assert (tokens["session"]["id"], "logout") in await ended_of(c, other["access_token"])


async def test_cookie_logout_with_a_rotated_out_refresh_cookie_is_theft(tw: Tokenward) -> None:
    """The same through the cookies (no access cookie left): 401 refresh-reused, cookies
    cleared, the session ended as refresh-reused."""
    async with client_for(tw, "10.9.9.9") as c:
        accounts = Accounts(c)
        email = await accounts.register()
        other = await accounts.login_bearer(email)
        await accounts.login_cookie(email)
        old = c.cookies["__Secure-refresh_token"]
        assert (await c.post("/auth/refresh", headers=accounts.csrf_headers())).status_code == 200
        clock_of(tw).advance(tw.settings.refresh_grace + 1)
        csrf = accounts.csrf_headers()
        jar = f"__Secure-refresh_token={old}; __Host-csrf_token={csrf['X-CSRF-Token']}"
        async with client_for(tw, "10.9.9.9") as bare:  # no access cookie, the old refresh one
            r = await bare.post("/auth/logout", headers={**csrf, "Cookie": jar})
        assert r.status_code == 401, r.text
        assert r.json()["type"] == REUSED
        cookies = set_cookies(r)
        alarm = cookies.pop("__Host-tw_alarm")  # for the sign-in page's theft alarm
        assert alarm["max-age"] == "600"
        assert all(v["max-age"] == "0" for v in cookies.values())
        reasons = [reason for _, reason in await ended_of(c, other["access_token"])]
        assert reasons == ["refresh-reused"]


async def test_a_cookie_login_ends_the_session_it_replaces(
    tw: Tokenward, redis: aioredis.Redis
) -> None:
    """A browser that logs in again while holding a valid refresh cookie: the older session
    ends (``replaced``), the new one lives; the same when the browser switches accounts.
    A bearer login leaves the cookie's session alone."""
    async with client_for(tw, "10.10.10.10") as c:
        accounts = Accounts(c)
        email, other_email = await accounts.register(), await accounts.register()
        watcher = await accounts.login_bearer(email)
        first = (await accounts.login_cookie(email)).json()["session"]["id"]
        second = (await accounts.login_cookie(email)).json()["session"]["id"]
        uid = watcher["user"]["id"]
        assert await redis.exists(session_key(uid, first)) == 0
        assert await redis.exists(session_key(uid, second)) == 1
        assert (await c.get("/auth/me")).status_code == 200
        assert (first, "replaced") in await ended_of(c, watcher["access_token"])

        r = await c.post("/auth/login", json={"email": other_email, "password": PASSWORD},
                         headers=BEARER)  # fmt: skip
        assert r.status_code == 200
        assert await redis.exists(session_key(uid, second)) == 1, "a bearer login ended it"

        switched = await accounts.login_cookie(other_email)
        assert switched.json()["user"]["email"] == other_email
        assert await redis.exists(session_key(uid, second)) == 0
        assert (second, "replaced") in await ended_of(c, watcher["access_token"])
