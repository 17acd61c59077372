"""Expired access tokens in several tabs, and many calls in one tab, at the same moment."""

from __future__ import annotations

import asyncio

from browserkit import (
    REFRESH,
    SHORT_TTL,
    NewContext,
    Server,
    api,
    new_email,
    profile_shows,
    sign_in,
    wait_for_access_cookie_expiry,
)
from playwright.async_api import Page, Response, Route, expect

ME = "() => Tokenward.api('GET', '/auth/me').then(me => me.email)"


def _refresh_cookie(response_headers: list[dict[str, str]]) -> str:
    for header in response_headers:
        if header["name"].lower() == "set-cookie" and header["value"].startswith(REFRESH + "="):
            return header["value"].split(";")[0]
    raise AssertionError("the refresh response set no refresh cookie")


async def _race(first: Page, second: Page) -> list[Response]:
    """Both tabs call the API with an expired token at once; their refreshes are held until
    both tabs have asked, then released together. Returns the two refresh responses."""
    held: list[Route] = []
    both_asked = asyncio.Event()

    async def hold(route: Route) -> None:
        held.append(route)
        if len(held) == 2:
            both_asked.set()
        await asyncio.wait_for(both_asked.wait(), timeout=10)
        await route.continue_()

    answers: list[Response] = []
    context = first.context
    context.on("response", lambda r: answers.append(r) if r.url.endswith("/auth/refresh") else None)
    await context.route("**/auth/refresh", hold)
    try:
        emails = await asyncio.gather(first.evaluate(ME), second.evaluate(ME))
    finally:
        await context.unroute("**/auth/refresh")
    email = emails[0]
    assert emails == [email, email], "both tabs got their answer, signed in"
    assert len(held) == 2, "each tab refreshed on its own"
    assert [r.status for r in answers] == [200, 200]
    return answers


async def test_two_tabs_refresh_at_the_same_moment_and_both_stay_signed_in(
    short_ttl_server: Server, new_context: NewContext
) -> None:
    """Both tabs present the same refresh token; the grace window gives both one successor.

    The browser attaches cookies when a held request is released, so on a loaded machine the
    second tab may already send the first tab's successor (no race, nothing proven): the
    race is retried, up to three times, until both tabs presented the same token.
    """
    base = short_ttl_server.url
    email = short_ttl_server.register(new_email("tabs"))
    context = await new_context()
    first = await context.new_page()
    await sign_in(first, base, email)
    await profile_shows(first, email)
    second = await context.new_page()
    await second.goto(base + "/account")
    await profile_shows(second, email)

    presented: list[set[str]] = []
    for _ in range(3):
        await wait_for_access_cookie_expiry(context, limit=SHORT_TTL + 5)
        answers = await _race(first, second)
        presented.append({_sent_refresh_cookie(await r.request.all_headers()) for r in answers})
        import httpx as _h
        _jar = {c["name"]: c["value"] for c in await context.cookies()}
        _r1 = _sent_refresh_cookie(await answers[0].request.all_headers())
        _resp = _h.post(f"http://127.0.0.1:{short_ttl_server.port}/auth/refresh", headers={"Cookie": f"{_r1}; __Host-csrf_token={_jar['__Host-csrf_token']}", "X-CSRF-Token": _jar['__Host-csrf_token'], "Origin": base})
        print("DEBUG replay", _resp.status_code, _resp.text[:80], [c[-12:] for c in _resp.headers.get_list("set-cookie") if c.startswith("__Secure")])
        print("DEBUG presented", [(_sent_refresh_cookie(await r.request.all_headers())[-12:], _refresh_cookie(await r.headers_array())[-12:], r.request.url) for r in answers])
        if len(presented[-1]) == 1:
            successors = {_refresh_cookie(await r.headers_array()) for r in answers}
            assert len(successors) == 1, "the replay in the grace window got the same successor"
            break
    assert len(presented[-1]) == 1, f"the refreshes never overlapped: {len(presented)} tries"

    # Both tabs keep working, on one live session that nothing ended.
    for page in (first, second):
        await page.reload()
        await expect(page).to_have_url(base + "/account")
        await profile_shows(page, email)
    sessions = await api(first, "GET", "/auth/sessions")
    assert len(sessions["body"]) == 1
    ended = await api(first, "GET", "/auth/sessions/ended")
    assert ended["body"] == []


def _sent_refresh_cookie(request_headers: dict[str, str]) -> str:
    for item in request_headers.get("cookie", "").split("; "):
        if item.startswith(REFRESH + "="):
            return item
    raise AssertionError("the refresh request carried no refresh cookie")


async def test_many_calls_in_one_tab_share_one_refresh(
    short_ttl_server: Server, new_context: NewContext
) -> None:
    """Five calls fail with the same expired token; the tab refreshes once for all of them."""
    base = short_ttl_server.url
    email = short_ttl_server.register(new_email("burst"))
    context = await new_context()
    page = await context.new_page()
    await sign_in(page, base, email)
    await profile_shows(page, email)
    refreshes: list[str] = []
    page.on("request", lambda r: refreshes.append(r.url) if "/auth/refresh" in r.url else None)

    await wait_for_access_cookie_expiry(context, limit=SHORT_TTL + 5)
    emails = await page.evaluate(
        """() => Promise.all(Array.from({ length: 5 },
            () => Tokenward.api('GET', '/auth/me').then(me => me.email)))"""
    )

    assert emails == [email] * 5
    assert len(refreshes) == 1
