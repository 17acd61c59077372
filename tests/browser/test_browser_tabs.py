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
from playwright.async_api import Page, Route, expect

ME = "() => Tokenward.api('GET', '/auth/me').then(me => me.email)"


def _refresh_cookie(response_headers: list[dict[str, str]]) -> str:
    for header in response_headers:
        if header["name"].lower() == "set-cookie" and header["value"].startswith(REFRESH + "="):
            return header["value"].split(";")[0]
    raise AssertionError("the refresh response set no refresh cookie")


async def _race(first: Page, second: Page) -> list[tuple[int, str]]:
    """Both tabs call the API with an expired token at once and both refresh.

    Each tab's refresh request is held until both tabs have asked; then both go to the server
    with the cookies the browser held at that moment, and neither answer reaches the browser
    before both are back. (Released held requests would pick their cookies up only when sent,
    and on a loaded machine the second could already carry the first one's successor.)
    Returns the status and the new refresh cookie of each answer.
    """
    context = first.context
    held: list[Route] = []
    fetched: list[tuple[int, str]] = []
    both_asked, both_answered = asyncio.Event(), asyncio.Event()
    jar: list[str] = []

    async def hold(route: Route) -> None:
        held.append(route)
        if len(held) == 2:
            cookies = await context.cookies(route.request.url)
            jar.append("; ".join(f"{c['name']}={c['value']}" for c in cookies))
            both_asked.set()
        await asyncio.wait_for(both_asked.wait(), timeout=10)
        answer = await route.fetch(headers={**route.request.headers, "cookie": jar[0]})
        fetched.append((answer.status, _refresh_cookie(answer.headers_array)))
        if len(fetched) == 2:
            both_answered.set()
        await asyncio.wait_for(both_answered.wait(), timeout=10)
        await route.fulfill(response=answer)

    await context.route("**/auth/refresh", hold)
    try:
        emails = await asyncio.gather(first.evaluate(ME), second.evaluate(ME))
    finally:
        await context.unroute("**/auth/refresh")
    assert emails[0] == emails[1], "both tabs got their answer, signed in"
    assert len(held) == 2, "each tab refreshed on its own"
    return fetched


async def test_two_tabs_refresh_at_the_same_moment_and_both_stay_signed_in(
    short_ttl_server: Server, new_context: NewContext
) -> None:
    """Both tabs present the same refresh token; the grace window gives both one successor."""
    base = short_ttl_server.url
    email = short_ttl_server.register(new_email("tabs"))
    context = await new_context()
    first = await context.new_page()
    await sign_in(first, base, email)
    await profile_shows(first, email)
    second = await context.new_page()
    await second.goto(base + "/account")
    await profile_shows(second, email)

    await wait_for_access_cookie_expiry(context, limit=SHORT_TTL + 5)
    answers = await _race(first, second)

    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1] == answers[1][1], "the replay in the grace window got the same successor"

    # Both tabs keep working, on one live session that nothing ended.
    for page in (first, second):
        await page.reload()
        await expect(page).to_have_url(base + "/account")
        await profile_shows(page, email)
    sessions = await api(first, "GET", "/auth/sessions")
    assert len(sessions["body"]) == 1
    ended = await api(first, "GET", "/auth/sessions/ended")
    assert ended["body"] == []


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
