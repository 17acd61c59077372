"""Another site's auto-submitting forms against Tokenward: refused, the session unharmed.

The foreign site is ``http://127.0.0.1:<port>``, a different site from ``localhost`` for the
browser, so its form posts are cross-site: ``SameSite`` keeps the session cookies home, and
the server's Origin check refuses what comes anyway.
"""

from __future__ import annotations

from browserkit import (
    ACCESS,
    PASSWORD,
    ForeignSite,
    NewContext,
    Server,
    api,
    cookie,
    new_email,
    profile_shows,
    sign_in,
)
from playwright.async_api import Page, expect

ATTACK = """<!doctype html>
<title>Win a prize</title>
<form method="post" action="{action}">{fields}</form>
<script>document.forms[0].submit()</script>
"""


def _attack_page(site: ForeignSite, name: str, action: str, **fields: str) -> str:
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    return site.serve(f"/{name}", ATTACK.format(action=action, fields=inputs))


async def _visit(page: Page, url: str, target: str) -> int:
    """Open the attack page; return the status Tokenward answered the forged post with."""
    async with page.expect_response(lambda r: r.url.startswith(target)) as answer:
        await page.goto(url)
    return (await answer.value).status


async def test_forged_logout_all_and_password_change_are_refused(
    server: Server, new_context: NewContext, foreign_site: ForeignSite
) -> None:
    """The victim visits the attacker's page while signed in; nothing of theirs changes."""
    email = server.register(new_email("victim"))
    context = await new_context()
    page = await context.new_page()
    await sign_in(page, server.url, email)
    await profile_shows(page, email)

    attacker = await context.new_page()
    logout_all = server.url + "/auth/logout-all"
    url = _attack_page(foreign_site, "prize", logout_all, keep_current="false")
    assert await _visit(attacker, url, logout_all) in (401, 403)
    # Cross-site, SameSite alone withholds the cookies (hence 401 is fine above). The same
    # page on localhost at another port is same-site but cross-origin: the cookies go along,
    # so only the server's own check (Origin, X-CSRF-Token) can refuse it.
    same_site = url.replace(foreign_site.url, f"http://localhost:{foreign_site.port}")
    assert same_site != url
    assert await _visit(attacker, same_site, logout_all) == 403

    password = server.url + "/auth/password"
    forged = {"current_password": PASSWORD, "new_password": "pwned by eve 123"}
    url = _attack_page(foreign_site, "prize-2", password, **forged)
    assert await _visit(attacker, url, password) in (401, 403, 415)

    # Still signed in, with the same one session, and the password unchanged.
    assert (await api(page, "GET", "/auth/me"))["body"]["email"] == email
    assert len((await api(page, "GET", "/auth/sessions"))["body"]) == 1
    assert (await api(page, "GET", "/auth/sessions/ended"))["body"] == []
    other = await (await new_context()).new_page()
    await sign_in(other, server.url, email)


async def test_forged_sign_in_does_not_sign_the_victim_in(
    server: Server, new_context: NewContext, foreign_site: ForeignSite
) -> None:
    """Login CSRF: a foreign form posting the attacker's credentials is refused by Origin."""
    attacker_email = server.register(new_email("eve"))
    context = await new_context()
    page = await context.new_page()
    login = server.url + "/auth/login"
    url = _attack_page(foreign_site, "login", login, email=attacker_email, password=PASSWORD)

    await page.goto(url)
    await expect(page).to_have_url(server.url + "/login?error=csrf")
    await expect(page.locator('[data-notice="csrf"]')).to_be_visible()
    assert await cookie(context, ACCESS) is None
