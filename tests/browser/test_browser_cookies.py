"""The cookies as Chromium holds them: the flags of docs/api.md, nothing a script can steal."""

from __future__ import annotations

import time

from browserkit import (
    ACCESS,
    CSRF,
    REFRESH,
    NewContext,
    Server,
    new_email,
    profile_shows,
    sign_in,
)

ACCESS_TTL = 600  # the server fixture's default
SESSION_IDLE_TTL = 2_592_000


async def test_cookies_carry_the_contract_flags(server: Server, new_context: NewContext) -> None:
    """Secure, HttpOnly where it matters, SameSite, host-only, paths and lifetimes.

    This also shows that ``Secure`` cookies and the ``__Host-``/``__Secure-`` prefixes work
    on ``http://localhost``: Chromium treats it as a secure context.
    """
    email = server.register(new_email("jar"))
    context = await new_context()
    page = await context.new_page()
    await sign_in(page, server.url, email)
    await profile_shows(page, email)
    now = time.time()

    jar = {c["name"]: c for c in await context.cookies()}
    assert set(jar) == {ACCESS, REFRESH, CSRF}
    expected = {  # name: (HttpOnly, SameSite, Path, lifetime)
        ACCESS: (True, "Lax", "/", ACCESS_TTL),
        REFRESH: (True, "Strict", "/auth", SESSION_IDLE_TTL),
        CSRF: (False, "Lax", "/", SESSION_IDLE_TTL),
    }
    for name, (http_only, same_site, path, lifetime) in expected.items():
        item = jar[name]
        assert item["secure"] is True, name
        assert item["httpOnly"] is http_only, name
        assert item["sameSite"] == same_site, name
        assert item["path"] == path, name
        assert item["domain"] == "localhost", name  # host-only: no Domain attribute
        assert abs(item["expires"] - (now + lifetime)) < 60, (name, item["expires"] - now)


async def test_page_scripts_see_only_the_csrf_cookie(
    server: Server, new_context: NewContext
) -> None:
    """``document.cookie`` never shows the access or refresh token, even under ``/auth``."""
    email = server.register(new_email("script"))
    context = await new_context()
    page = await context.new_page()
    await sign_in(page, server.url, email)
    await profile_shows(page, email)
    jar = {c["name"]: c["value"] for c in await context.cookies()}

    # On a page, and on a document under /auth, where the refresh cookie's Path applies.
    for url in (server.url + "/account", server.url + "/auth/me"):
        await page.goto(url)
        visible = await page.evaluate("() => document.cookie")
        assert visible == f"{CSRF}={jar[CSRF]}", url
        assert jar[ACCESS] not in visible
        assert jar[REFRESH] not in visible
        await page.goto(server.url + "/account")
        assert await page.evaluate("() => Tokenward.csrfToken()") == jar[CSRF]
