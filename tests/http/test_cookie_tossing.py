"""Cookie tossing: a second cookie of the same name must not replace or end the real session.

A sibling sub-domain (``evil.example.com`` beside ``auth.example.com``) may set
``__Secure-refresh_token`` with ``Domain=example.com``: the ``__Secure-`` prefix allows that,
``__Host-`` would not. The browser then sends both, the one with the longer ``Path`` first
and, among equal paths, the older first, so the tossed one may come before or after ours.
Frameworks keep one value per name (Starlette: the last one sent); before the fix, when the
tossed value came last it was the one used, the refresh failed and the response cleared
the user's cookies: a logout by a neighbour.

Every request here carries a hand-written ``Cookie`` header through a fresh client, so no
cookie jar reorders or drops what is sent.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from http_support import GENEROUS_LIMITS, ORIGIN, PASSWORD, Accounts, MakeTw, isolated_client

from tokenward.clock import FrozenClock
from tokenward.runtime import Tokenward

SECURE = ("__Host-access_token", "__Secure-refresh_token", "__Host-csrf_token")
PLAIN = ("access_token", "refresh_token", "csrf_token")


def well_formed_stranger() -> str:
    """A refresh token of the right shape that belongs to no session (costs a Redis look-up)."""
    return f"{secrets.token_hex(16)}.{secrets.token_urlsafe(16)}.{secrets.token_urlsafe(32)}"


def set_cookies(r: httpx.Response) -> dict[str, str]:
    """``{name: the whole Set-Cookie value}``."""
    return {h.partition("=")[0]: h for h in r.headers.get_list("set-cookie")}


async def send(tw: Tokenward, method: str, path: str, headers: list[tuple[str, str]]) -> Any:
    """One request with exactly these headers, from a client with an empty jar."""
    async with isolated_client(tw) as c:
        return await c.request(method, path, headers=headers)


class Browser:
    """A user logged in with cookies, whose cookies the test writes out by hand."""

    def __init__(self, tw: Tokenward, names: tuple[str, str, str]) -> None:
        self.tw = tw
        self.access_name, self.refresh_name, self.csrf_name = names
        self.access = self.refresh = self.csrf = self.uid = ""

    async def login(self) -> Browser:
        async with isolated_client(self.tw) as c:
            accounts = Accounts(c)
            r = await accounts.login_cookie(await accounts.register())
            jar = {cookie.name: cookie.value for cookie in c.cookies.jar}
        self.uid = r.json()["user"]["id"]
        self.access = jar[self.access_name]
        self.refresh = jar[self.refresh_name]
        self.csrf = jar[self.csrf_name]
        return self

    def unsafe(self, *cookie_lines: str) -> list[tuple[str, str]]:
        headers = [("cookie", line) for line in cookie_lines]
        return [*headers, ("x-csrf-token", self.csrf), ("origin", ORIGIN)]


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    return await make_tw(**GENEROUS_LIMITS)


@pytest.fixture
async def victim(tw: Tokenward) -> Browser:
    return await Browser(tw, SECURE).login()


async def tossed_value(kind: str, tw: Tokenward) -> str:
    if kind == "junk":
        return "x"
    if kind == "stranger":
        return well_formed_stranger()
    # The neighbour's own live refresh token: it rotates nothing with the victim's CSRF token.
    return (await Browser(tw, SECURE).login()).refresh


@pytest.mark.parametrize("kind", ["junk", "stranger", "neighbours-own"])
@pytest.mark.parametrize("position", ["tossed-last", "tossed-first"])
async def test_tossed_refresh_cookie_neither_wins_nor_logs_out(
    tw: Tokenward, victim: Browser, kind: str, position: str
) -> None:
    """The real refresh cookie rotates, whichever comes first; nothing is cleared.

    Before the fix "tossed-last" was refused 401 with the three cookies cleared.
    """
    tossed = await tossed_value(kind, tw)
    pairs = [f"__Secure-refresh_token={victim.refresh}", f"__Secure-refresh_token={tossed}"]
    if position == "tossed-first":
        pairs.reverse()
    line = "; ".join([*pairs, f"__Host-csrf_token={victim.csrf}"])
    r = await send(tw, "POST", "/auth/refresh", victim.unsafe(line))
    assert r.status_code == 200, r.text
    assert r.json()["user"]["id"] == victim.uid
    issued = set_cookies(r)
    assert "Max-Age=0" not in "".join(issued.values())
    fresh = issued["__Secure-refresh_token"].split(";")[0].partition("=")[2]
    assert fresh not in (victim.refresh, tossed)
    # The new refresh token is the victim's: it rotates again, alone.
    again = await send(
        tw,
        "POST",
        "/auth/refresh",
        victim.unsafe(f"__Secure-refresh_token={fresh}; __Host-csrf_token={victim.csrf}"),
    )
    assert again.status_code == 200, again.text


async def test_tossed_cookie_on_a_later_cookie_line_does_not_win(
    tw: Tokenward, victim: Browser
) -> None:
    """HTTP/2 clients may split ``Cookie`` into several lines; every value of every line is
    a candidate. Before the fix the last value seen (here: the junk of the second line)
    replaced the real one: 401 and the cookies cleared.
    """
    first = f"__Secure-refresh_token={victim.refresh}; __Host-csrf_token={victim.csrf}"
    second = "__Secure-refresh_token=junk"
    r = await send(tw, "POST", "/auth/refresh", victim.unsafe(first, second))
    assert r.status_code == 200, r.text
    assert r.json()["user"]["id"] == victim.uid


async def test_a_lone_bad_refresh_cookie_still_clears_the_cookies(
    tw: Tokenward, victim: Browser
) -> None:
    """One cookie, and it fails: refused and cleared as before (nothing was tossed)."""
    line = f"__Secure-refresh_token={well_formed_stranger()}; __Host-csrf_token={victim.csrf}"
    r = await send(tw, "POST", "/auth/refresh", victim.unsafe(line))
    assert r.status_code == 401
    assert all("Max-Age=0" in v for v in set_cookies(r).values())
    assert set(set_cookies(r)) == set(SECURE)


async def test_when_every_candidate_fails_nothing_is_cleared(
    tw: Tokenward, victim: Browser
) -> None:
    """Several cookies, all failing: 401, but no clearing that a neighbour could provoke."""
    pairs = [f"__Secure-refresh_token={well_formed_stranger()}" for _ in range(3)]
    line = "; ".join([*pairs, f"__Host-csrf_token={victim.csrf}"])
    r = await send(tw, "POST", "/auth/refresh", victim.unsafe(line))
    assert r.status_code == 401
    assert r.headers.get_list("set-cookie") == []
    # ... and the victim's real cookie was never touched.
    line = f"__Secure-refresh_token={victim.refresh}; __Host-csrf_token={victim.csrf}"
    assert (await send(tw, "POST", "/auth/refresh", victim.unsafe(line))).status_code == 200


async def test_logout_by_refresh_cookie_with_a_tossed_one_beside_it(
    tw: Tokenward, victim: Browser
) -> None:
    """Logout without an access cookie finds the session by its refresh cookie: the real
    one, not the tossed one sent after it (before the fix: 401, the session stayed)."""
    line = (
        f"__Secure-refresh_token={victim.refresh}; __Secure-refresh_token=junk; "
        f"__Host-csrf_token={victim.csrf}"
    )
    r = await send(tw, "POST", "/auth/logout", victim.unsafe(line))
    assert r.status_code == 204, r.text
    line = f"__Secure-refresh_token={victim.refresh}; __Host-csrf_token={victim.csrf}"
    refused = await send(tw, "POST", "/auth/refresh", victim.unsafe(line))
    assert refused.status_code == 401


@pytest.fixture
async def transparent(make_tw: MakeTw) -> Tokenward:
    return await make_tw(**GENEROUS_LIMITS, transparent_refresh="true")


async def test_transparent_refresh_uses_the_real_cookie(transparent: Tokenward) -> None:
    """A protected route refreshing an expired access cookie by itself tries every refresh
    cookie too (before the fix: the tossed one, 401)."""
    victim = await Browser(transparent, SECURE).login()
    clock = transparent.clock
    assert isinstance(clock, FrozenClock)
    clock.advance(transparent.settings.access_ttl + transparent.settings.leeway + 1)
    line = (
        f"__Host-access_token={victim.access}; __Secure-refresh_token={victim.refresh}; "
        f"__Secure-refresh_token={well_formed_stranger()}; __Host-csrf_token={victim.csrf}"
    )
    r = await send(transparent, "GET", "/auth/me", [("cookie", line)])
    assert r.status_code == 200, r.text
    assert r.json()["id"] == victim.uid
    assert "__Host-access_token" in set_cookies(r)


@pytest.fixture
async def plain(make_tw: MakeTw) -> Tokenward:
    """``TOKENWARD_COOKIE_SECURE=false``: no prefixes, so every cookie can be tossed."""
    return await make_tw(**GENEROUS_LIMITS, cookie_secure="false")


async def test_tossed_csrf_and_access_cookies_without_prefixes(plain: Tokenward) -> None:
    """Without ``__Host-`` the CSRF and access cookies can be tossed too: the header may
    echo any CSRF cookie sent (it must still be the session's), and the access cookie
    that verifies wins."""
    victim = await Browser(plain, PLAIN).login()
    line = (
        f"access_token={victim.access}; access_token=junk; "
        f"csrf_token={victim.csrf}; csrf_token={secrets.token_urlsafe(32)}"
    )
    me = await send(plain, "GET", "/auth/me", [("cookie", line)])
    assert me.status_code == 200, me.text
    r = await send(plain, "POST", "/auth/logout-all", victim.unsafe(line))
    assert r.status_code == 204, r.text


async def test_no_more_than_a_few_candidates_are_tried(tw: Tokenward, victim: Browser) -> None:
    """Each well-formed candidate may cost a Redis round trip: past the first eight the
    rest are ignored (a neighbour who can toss that many can also overflow the header)."""
    pairs = [f"__Secure-refresh_token={well_formed_stranger()}" for _ in range(8)]
    line = "; ".join([*pairs, f"__Secure-refresh_token={victim.refresh}"])
    line += f"; __Host-csrf_token={victim.csrf}"
    r = await send(tw, "POST", "/auth/refresh", victim.unsafe(line))
    assert r.status_code == 401


@pytest.mark.parametrize("kind", ["junk", "stranger", "neighbours-own"])
@pytest.mark.parametrize("position", ["tossed-last", "tossed-first"])
async def test_login_ends_the_real_cookies_session_whatever_was_tossed(
    tw: Tokenward, victim: Browser, kind: str, position: str
) -> None:
    """A cookie login ends the session whose refresh cookie the browser still holds
    (``replaced``), also when a same-named cookie was tossed in beside it: the real one's
    session ends, the tossed one harms nobody else. Before the fix only the last value
    sent was looked at: with the tossed one last, the real session stayed alive."""
    tossed = await tossed_value(kind, tw)
    pairs = [f"__Secure-refresh_token={victim.refresh}", f"__Secure-refresh_token={tossed}"]
    if position == "tossed-first":
        pairs.reverse()
    async with isolated_client(tw) as c:
        accounts = Accounts(c)
        email = await accounts.register()
    async with isolated_client(tw) as c:
        r = await c.post(
            "/auth/login",
            json={"email": email, "password": PASSWORD},
            headers=[("cookie", "; ".join(pairs)), ("origin", ORIGIN)],
        )
    assert r.status_code == 200, r.text
    victim_sid = victim.refresh.split(".")[1]
    ended = await tw.session_store.ended(victim.uid)
    assert [(sid, reason) for sid, reason, _ in ended] == [(victim_sid, "replaced")]
    after = await send(
        tw,
        "POST",
        "/auth/refresh",
        victim.unsafe(f"__Secure-refresh_token={victim.refresh}; __Host-csrf_token={victim.csrf}"),
    )
    assert after.status_code == 401, after.text
