"""A copied refresh cookie, used by a thief first: the victim's browser learns why it was
signed out, and the thief's tokens die with the session."""

from __future__ import annotations

import httpx
from browserkit import (
    ACCESS,
    CSRF,
    PASSWORD,
    REFRESH,
    NewContext,
    Server,
    cookie,
    new_email,
    sign_in,
)
from playwright.async_api import expect

BEARER = {"X-Auth-Transport": "bearer"}


async def test_a_stolen_refresh_token_signs_out_thief_and_victim_and_says_why(
    strict_server: Server, new_context: NewContext
) -> None:
    server = strict_server
    email = server.register(new_email("victim"))
    context = await new_context()
    page = await context.new_page()
    await sign_in(page, server.url, email)
    stolen = await cookie(context, REFRESH)
    assert stolen is not None

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as thief:
        r = await thief.post(
            "/auth/refresh", json={"refresh_token": stolen["value"]}, headers=BEARER
        )
        assert r.status_code == 200, r.text
        loot = r.json()

        # The victim's access token runs out; its next action refreshes with the token the
        # thief already replaced (no grace on this server): theft detected.
        await context.clear_cookies(name=ACCESS)
        await page.get_by_role("link", name="Sessions", exact=True).click()
        await expect(page).to_have_url(
            server.url + "/login?reason=refresh-reused&next=%2Faccount%2Fsessions"
        )
        await expect(page.locator('[data-notice="theft-alarm"]')).to_be_visible()
        assert await cookie(context, REFRESH) is None
        # The alarm came from the server's one-time cookie, not from the address: it is
        # gone once shown, and the same address alone shows nothing.
        assert {c["name"] for c in await context.cookies()} == set()
        await page.reload()
        await expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
        await expect(page.locator('[data-notice="theft-alarm"]')).to_be_hidden()

        # The thief's fresh pair went with the session, the access token at once.
        me = await thief.get(
            "/auth/me", headers={"Authorization": f"Bearer {loot['access_token']}"}
        )
        assert me.status_code == 401, me.text
        again = await thief.post(
            "/auth/refresh", json={"refresh_token": loot["refresh_token"]}, headers=BEARER
        )
        assert again.status_code == 401, again.text

    # Signed in again, the victim's session history says what happened to the old one.
    await page.goto(f"{server.url}/login")
    await sign_in(page, server.url, email)
    await page.get_by_role("link", name="Manage sessions").click()
    ended = page.locator('[data-list="ended"] > li')
    await expect(ended.first).to_contain_text("Ended for safety: its credentials were used twice")


async def test_a_theft_found_by_a_protected_routes_own_refresh_raises_the_alarm_too(
    transparent_server: Server,
) -> None:
    """With transparent refresh the replaced refresh cookie reaches ``GET /auth/me``, not
    ``/auth/refresh``: the 401 sets the alarm cookie all the same."""
    server = transparent_server
    email = server.register(new_email("transparent"))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as browser:
        login = await browser.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        stolen, csrf = login.cookies[REFRESH], login.cookies[CSRF]
        jar = {"Cookie": f"{REFRESH}={stolen}; {CSRF}={csrf}", "X-CSRF-Token": csrf}
        rotated = await browser.post("/auth/refresh", headers=jar)
        assert rotated.status_code == 200, rotated.text
        me = await browser.get("/auth/me", headers={"Cookie": f"{REFRESH}={stolen}; {CSRF}={csrf}"})
        assert me.status_code == 401, me.text
        assert me.json()["type"].endswith(":refresh-reused")
        alarm = [c for c in me.headers.get_list("set-cookie") if c.startswith("__Host-tw_alarm=")]
        assert len(alarm) == 1
        assert "HttpOnly" in alarm[0]
        assert "Max-Age=600" in alarm[0]
