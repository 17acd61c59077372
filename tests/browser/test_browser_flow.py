"""A first-time user in a real browser: register, sign in, stay signed in, sign out."""

from __future__ import annotations

import httpx
from browserkit import (
    ACCESS,
    CSRF,
    LOGIN_PAIR_LIMIT,
    SHORT_TTL,
    NewContext,
    Server,
    api,
    cookie,
    profile_shows,
    screenshot,
    sign_in,
    wait_for_access_cookie_expiry,
)
from playwright.async_api import Request, Response, expect

from waiting import await_until


async def test_register_sign_in_refresh_unnoticed_and_sign_out(
    short_ttl_server: Server, new_context: NewContext
) -> None:
    """The whole journey, with an access token that expires (2 s) in the middle of it."""
    base = short_ttl_server.url
    context = await new_context()
    page = await context.new_page()
    refreshes: list[Response] = []
    page.on("response", lambda r: refreshes.append(r) if r.url.endswith("/auth/refresh") else None)

    # The front door sends a visitor without a session to the sign-in page.
    await page.goto(base + "/")
    await expect(page).to_have_url(base + "/login")
    await expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    await screenshot(page, "login")

    await page.get_by_role("link", name="Create an account").click()
    await expect(page).to_have_url(base + "/register")
    await screenshot(page, "register")
    email = "ada.lovelace@example.com"
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill("violet tractor 42 umbrella")
    await page.get_by_role("button", name="Create account").click()

    # Registered: the sign-in page says so and already knows the email address.
    await expect(page).to_have_url(base + "/login?registered=1")
    await expect(page.locator('[data-notice="registered"]')).to_be_visible()
    await expect(page.get_by_label("Email address")).to_have_value(email)
    await expect(page.get_by_label("Password", exact=True)).to_be_focused()
    await page.get_by_label("Password", exact=True).fill("violet tractor 42 umbrella")
    await page.get_by_role("button", name="Sign in", exact=True).click()

    # The profile comes from a protected call (GET /auth/me).
    await expect(page).to_have_url(base + "/account")
    await profile_shows(page, email)
    await expect(page.get_by_text("You are signed in on this device only.")).to_be_visible()
    await screenshot(page, "account")
    assert refreshes == []

    # The access token expires; the browser drops its cookie at Max-Age = TTL. The session
    # (refresh and CSRF cookies) stays.
    await wait_for_access_cookie_expiry(context, limit=SHORT_TTL + 5)
    assert await cookie(context, CSRF) is not None

    # The next action needs the API: the client refreshes once and retries, unnoticed.
    await page.get_by_role("link", name="Manage sessions").click()
    await expect(page).to_have_url(base + "/account/sessions")
    sessions = page.locator('[data-list="active"] > li')
    await expect(sessions).to_have_count(1)
    await expect(sessions.first.get_by_text("This device")).to_be_visible()
    await expect(page.locator('[data-action="end-others"]')).to_be_disabled()
    assert [r.status for r in refreshes] == [200]
    assert await cookie(context, ACCESS) is not None

    # Sign out: the session ends on the server and the cookies go.
    await page.get_by_role("button", name="Sign out", exact=True).click()
    await expect(page).to_have_url(base + "/login?reason=signed-out")
    await expect(page.locator('[data-notice="signed-out"]')).to_be_visible()
    assert {c["name"] for c in await context.cookies()} == set()
    assert await page.evaluate("() => fetch('/auth/me').then(r => r.status)") == 401
    await page.goto(base + "/account")
    await expect(page).to_have_url(base + "/login?next=%2Faccount")


async def test_wrong_password_is_explained_and_the_email_kept(
    server: Server, new_context: NewContext
) -> None:
    """A failed sign-in says what went wrong, in place, without losing what was typed."""
    email = server.register("grace.hopper@example.com")
    page = await (await new_context()).new_page()
    await page.goto(server.url + "/login")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill("not the password at all")
    await page.get_by_role("button", name="Sign in", exact=True).click()

    notice = page.locator('[data-notice="invalid-credentials"]')
    await expect(notice).to_be_visible()
    await expect(notice).to_have_attribute("role", "alert")
    await expect(page).to_have_url(server.url + "/login")
    await expect(page.get_by_label("Email address")).to_have_value(email)
    await expect(page.get_by_label("Password", exact=True)).to_have_value("")
    await screenshot(page, "login-error")


async def test_throttled_sign_in_says_how_long_to_wait(
    server: Server, new_context: NewContext
) -> None:
    """After repeated wrong passwords the page says to wait, for as long as Retry-After."""
    email = server.register("hedy.lamarr@example.com")
    page = await (await new_context()).new_page()
    await page.goto(server.url + "/login")
    password = page.get_by_label("Password", exact=True)
    sign_in = page.get_by_role("button", name="Sign in", exact=True)
    statuses: list[int] = []
    for _ in range(LOGIN_PAIR_LIMIT + 1):
        await page.get_by_label("Email address").fill(email)
        await password.fill("still not the password")
        async with page.expect_response(server.url + "/auth/login") as answer:
            await sign_in.click()
        statuses.append((await answer.value).status)
        # The page handles an answer after it has arrived: it clears the password, then
        # frees the button. Filling in before that races the clearing, and the next click
        # would submit an empty (required) field, which the browser never sends.
        await expect(password).to_have_value("")
        await expect(sign_in).to_be_enabled()
    assert statuses == [401] * LOGIN_PAIR_LIMIT + [429]
    retry_after = int((await answer.value).headers["retry-after"])

    notice = page.locator('[data-notice="rate-limited"]')
    await expect(notice).to_be_visible()
    await expect(page.locator('[data-notice="invalid-credentials"]')).to_be_hidden()
    minutes = -(-retry_after // 60)
    await expect(notice.locator('[data-field="retry"]')).to_have_text(
        f"{retry_after} seconds" if retry_after < 60 else f"{minutes} minutes"
    )
    await screenshot(page, "login-throttled")


async def test_refused_password_names_the_rule(server: Server, new_context: NewContext) -> None:
    """Registration with a breached password shows the API's reason, not a generic error."""
    page = await (await new_context()).new_page()
    requests: list[Request] = []
    page.on("request", lambda r: requests.append(r) if "/auth/" in r.url else None)
    await page.goto(server.url + "/register")
    await page.get_by_label("Email address").fill("alan.turing@example.com")
    await page.get_by_label("Password", exact=True).fill("iloveyou1234")
    await page.get_by_role("button", name="Create account").click()

    notice = page.locator('[data-notice="validation"]')
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text("too common")
    await expect(page.get_by_label("Password", exact=True)).to_have_attribute(
        "aria-invalid", "true"
    )
    assert [r.url for r in requests] == [server.url + "/auth/register"]
    await screenshot(page, "register-error")


async def test_signed_in_visitor_goes_straight_to_the_account(
    server: Server, new_context: NewContext
) -> None:
    """``/`` sends a browser with a session to its account, and ``next`` is honoured."""
    email = server.register("katherine@example.com")
    page = await (await new_context()).new_page()
    await page.goto(server.url + "/account/sessions")
    await expect(page).to_have_url(server.url + "/login?next=%2Faccount%2Fsessions")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill("violet tractor 42 umbrella")
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await expect(page).to_have_url(server.url + "/account/sessions")
    await page.goto(server.url + "/")
    await expect(page).to_have_url(server.url + "/account")
    await profile_shows(page, email)


async def test_an_expired_token_the_browser_still_sends_is_refreshed(
    short_ttl_server: Server, new_context: NewContext
) -> None:
    """The ``token-expired`` answer (a browser whose clock keeps the cookie) also refreshes."""
    base = short_ttl_server.url
    email = short_ttl_server.register("dorothy.vaughan@example.com")
    context = await new_context()
    page = await context.new_page()
    await sign_in(page, base, email)
    await profile_shows(page, email)
    stale = await cookie(context, ACCESS)
    assert stale is not None
    await wait_for_access_cookie_expiry(context, limit=SHORT_TTL + 5)
    # exp has whole-second resolution: poll until the server, too, calls the token expired.
    await await_until(
        lambda: _me_problem(short_ttl_server, stale["value"]) == "token-expired",
        within=5,
        what="the server calls the token expired",
        step=0.1,
    )
    stale["expires"] = stale["expires"] + 3600  # as if the browser's clock were behind
    await context.add_cookies([stale])  # type: ignore[list-item]

    responses: list[Response] = []
    page.on("response", lambda r: responses.append(r) if "/auth/" in r.url else None)
    body = await api(page, "GET", "/auth/me")

    assert body["body"]["email"] == email
    answers = [
        (r.url.removeprefix(base), r.status, (await r.json())["type"] if r.status == 401 else "")
        for r in responses
    ]
    assert answers == [
        ("/auth/me", 401, "urn:tokenward:problem:token-expired"),
        ("/auth/refresh", 200, ""),
        ("/auth/me", 200, ""),
    ]


def _me_problem(server: Server, access_token: str) -> str:
    r = httpx.get(
        f"http://127.0.0.1:{server.port}/auth/me", headers={"Cookie": f"{ACCESS}={access_token}"}
    )
    return "" if r.status_code == 200 else str(r.json()["type"]).rsplit(":", 1)[-1]
