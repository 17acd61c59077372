"""Transparent refresh: a protected route given an expired (or dropped) access cookie and a
valid refresh cookie refreshes by itself, safely when parallel requests do it at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from sessions_support import ORIGIN, Accounts, MakeTw, Server, client_for, set_cookies

from tokenward.clock import FrozenClock
from tokenward.runtime import Tokenward

ACCESS, REFRESH, CSRF = "__Host-access_token", "__Secure-refresh_token", "__Host-csrf_token"


def cookie_header(**cookies: str) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


async def logged_in_cookies(tw: Tokenward) -> dict[str, str]:
    async with client_for(tw) as client:
        accounts = Accounts(client)
        login = await accounts.login_cookie(await accounts.register())
        assert set_cookies(login)[REFRESH]["path"] == "/"
        return dict(client.cookies.items())


async def test_parallel_requests_with_an_expired_access_cookie_all_refresh_alike(
    make_tw: MakeTw,
) -> None:
    """20 concurrent GET /auth/me, same expired access + refresh cookie: all 200, one value."""
    tw = await make_tw(transparent_refresh="true")
    assert isinstance(tw.clock, FrozenClock)
    jar = await logged_in_cookies(tw)
    tw.clock.advance(tw.settings.access_ttl + tw.settings.leeway + 1)
    async with client_for(tw) as bare:  # no jar: every request carries exactly these cookies
        expired = await bare.get("/auth/me", headers=cookie_header(**{ACCESS: jar[ACCESS]}))
        assert expired.json()["type"] == "urn:tokenward:problem:token-expired"
        replies = await asyncio.gather(
            *(bare.get("/auth/me", headers=cookie_header(**jar)) for _ in range(20))
        )
    assert [r.status_code for r in replies] == [200] * 20
    refreshed = [set_cookies(r) for r in replies]
    values = {c[REFRESH]["value"] for c in refreshed}
    assert len(values) == 1
    assert jar[REFRESH] not in values
    assert all(c[REFRESH]["path"] == "/" for c in refreshed)
    assert all(c[ACCESS]["value"] != jar[ACCESS] for c in refreshed)
    async with client_for(tw) as bare:
        again = await bare.get(
            "/auth/me", headers=cookie_header(**{ACCESS: refreshed[0][ACCESS]["value"]})
        )
        assert again.status_code == 200


async def test_dropped_access_cookie_is_refreshed_too(make_tw: MakeTw) -> None:
    """The browser already dropped the access cookie: the refresh cookie is enough."""
    tw = await make_tw(transparent_refresh="true")
    jar = await logged_in_cookies(tw)
    async with client_for(tw) as bare:
        r = await bare.get(
            "/auth/me", headers=cookie_header(**{REFRESH: jar[REFRESH], CSRF: jar[CSRF]})
        )
    assert r.status_code == 200, r.text
    assert ACCESS in set_cookies(r)


async def test_unsafe_request_needs_csrf_to_refresh_transparently(make_tw: MakeTw) -> None:
    """A POST carrying only cookies (a forged cross-site form) cannot trigger a refresh.

    It is refused as any cookie request without the CSRF token is: 403 ``csrf`` (the session
    is fine, the client should reload), not 401 (which would send the user to log in).
    """
    tw = await make_tw(transparent_refresh="true")
    jar = await logged_in_cookies(tw)
    cookies = cookie_header(**{REFRESH: jar[REFRESH], CSRF: jar[CSRF]})
    async with client_for(tw) as bare:
        wrong: list[dict[str, str | bytes]] = [
            {},
            {"X-CSRF-Token": jar[CSRF][:-1] + ("A" if jar[CSRF][-1] != "A" else "B")},
            {"X-CSRF-Token": b"\xe9"},  # not ASCII: still compared, as bytes
        ]
        for extra in wrong:
            headers = {**cookies, **extra, "Origin": ORIGIN}
            forged = await bare.post("/auth/logout-all", headers=headers)
            assert forged.status_code == 403, forged.text
            assert forged.json()["type"] == "urn:tokenward:problem:csrf"
            assert "set-cookie" not in forged.headers
        proper = await bare.post(
            "/auth/logout-all",
            headers={**cookies, "X-CSRF-Token": jar[CSRF], "Origin": ORIGIN},
        )
        assert proper.status_code == 204


async def _logged_in_then_expired(tw: Tokenward) -> tuple[dict[str, str], str]:
    """Log in, then let the access token expire: the cookies and the session id."""
    async with client_for(tw) as client:
        accounts = Accounts(client)
        login = await accounts.login_cookie(await accounts.register())
        jar = dict(client.cookies.items())
    assert isinstance(tw.clock, FrozenClock)
    tw.clock.advance(tw.settings.access_ttl + tw.settings.leeway + 1)
    sid: str = login.json()["session"]["id"]
    return jar, sid


def _only_cleared_cookies(response: httpx.Response) -> None:
    """Exactly one ``Set-Cookie`` per cookie, each emptied and expired."""
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 3, headers
    cleared = set_cookies(response)
    assert set(cleared) == {ACCESS, REFRESH, CSRF}
    assert all(c["value"] == "" and c["max-age"] == "0" for c in cleared.values()), cleared


@pytest.mark.parametrize("how", ["logout-all", "delete-current"])
async def test_ending_the_current_session_sends_no_refreshed_cookies(
    make_tw: MakeTw, how: str
) -> None:
    """The request refreshed transparently, then ended its own session: only the clearing
    cookies go out, not fresh ones for a session that is over."""
    tw = await make_tw(transparent_refresh="true")
    jar, sid = await _logged_in_then_expired(tw)
    headers = {**cookie_header(**jar), "X-CSRF-Token": jar[CSRF], "Origin": ORIGIN}
    async with client_for(tw) as bare:
        if how == "logout-all":
            r = await bare.post("/auth/logout-all", headers=headers)
        else:
            r = await bare.delete(f"/auth/sessions/{sid}", headers=headers)
        assert r.status_code == 204, r.text
        _only_cleared_cookies(r)
        after = await bare.get("/auth/me", headers=cookie_header(**jar))
        assert after.status_code == 401


async def test_keeping_the_current_session_still_sends_refreshed_cookies(
    make_tw: MakeTw,
) -> None:
    """``logout-all`` with ``keep_current``: the session lives on with the refreshed cookies."""
    tw = await make_tw(transparent_refresh="true")
    jar, _ = await _logged_in_then_expired(tw)
    headers = {**cookie_header(**jar), "X-CSRF-Token": jar[CSRF], "Origin": ORIGIN}
    async with client_for(tw) as bare:
        r = await bare.post("/auth/logout-all", json={"keep_current": True}, headers=headers)
    assert r.status_code == 204, r.text
    fresh = set_cookies(r)
    assert fresh[ACCESS]["value"] != jar[ACCESS]
    assert fresh[REFRESH]["value"] not in ("", jar[REFRESH])


async def test_without_transparent_refresh_an_expired_token_is_401(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """Off by default: the client is told token-expired and refreshes itself."""
    login = await accounts.login_cookie(await accounts.register())
    assert set_cookies(login)[REFRESH]["path"] == "/auth"
    assert isinstance(tw.clock, FrozenClock)
    tw.clock.advance(tw.settings.access_ttl + tw.settings.leeway + 1)
    r = await client.get("/auth/me")
    assert r.status_code == 401
    assert r.json()["type"] == "urn:tokenward:problem:token-expired"


async def test_real_server_parallel_transparent_refresh(server: Callable[..., Server]) -> None:
    """Two workers, 20 parallel requests with the access cookie gone: one refresh cookie."""
    srv = server(workers=2, transparent_refresh="true")
    async with srv.client() as c:
        accounts = Accounts(c, srv.base_url)
        await accounts.login_cookie(await accounts.register())
        refresh, csrf = c.cookies["refresh_token"], c.cookies["csrf_token"]
    headers = cookie_header(refresh_token=refresh, csrf_token=csrf)
    async with srv.client(limits=httpx.Limits(max_connections=20)) as bare:
        replies = await asyncio.gather(*(bare.get("/auth/me", headers=headers) for _ in range(20)))
    assert [r.status_code for r in replies] == [200] * 20, [r.text for r in replies]
    values = {set_cookies(r)["refresh_token"]["value"] for r in replies}
    assert len(values) == 1
    assert refresh not in values
