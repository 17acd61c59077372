"""With JavaScript off, registering, signing in, the account forms and signing out still
work as plain form posts, and a refused post explains itself."""

from __future__ import annotations

import json

from browserkit import (
    ACCESS,
    CSRF,
    LOGIN_PAIR_LIMIT,
    PASSWORD,
    NewContext,
    Server,
    cookie,
    new_email,
    screenshot,
)
from playwright.async_api import Page, expect

from tokenward.web.pages import duration


async def _submit(page: Page, email: str, password: str, button: str) -> None:
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name=button).click()


async def test_register_sign_in_and_sign_out_without_javascript(
    server: Server, new_context: NewContext
) -> None:
    """Form post -> 303 -> the next page, with the server-rendered notice; a shared
    computer's user can sign out."""
    context = await new_context(java_script_enabled=False)
    page = await context.new_page()
    email = new_email("nojs")

    await page.goto(server.url + "/register")
    await _submit(page, email, PASSWORD, "Create account")
    await expect(page).to_have_url(server.url + "/login?registered=1")
    await expect(page.locator('[data-notice="registered"]')).to_be_visible()

    await _submit(page, email, PASSWORD, "Sign in")
    await expect(page).to_have_url(server.url + "/account")
    note = page.locator("noscript > p")  # get_by_text does not look inside <noscript>
    await expect(note).to_be_visible()
    await expect(note).to_contain_text("You are signed in.")
    # The controls that need scripts are gone; the forms that work without them are there.
    await expect(page.get_by_role("heading", name="Profile")).to_be_hidden()
    await expect(page.get_by_role("heading", name="Change password")).to_be_visible()
    await expect(page.get_by_role("heading", name="Change email address")).to_be_visible()
    await screenshot(page, "account-nojs")
    assert await cookie(context, ACCESS) is not None

    # The session is real: the protected API answers this browser.
    await page.goto(server.url + "/auth/me")
    assert json.loads(await page.locator("body").inner_text())["email"] == email

    # A signed-in visitor of the sign-in page is sent on to the account.
    await page.goto(server.url + "/login")
    await expect(page).to_have_url(server.url + "/account")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(server.url + "/login?reason=signed-out")
    await expect(page.locator('[data-notice="signed-out"]')).to_be_visible()
    assert await cookie(context, ACCESS) is None
    assert await cookie(context, CSRF) is None
    await page.goto(server.url + "/account")
    await expect(page).to_have_url(server.url + "/login?next=%2Faccount")


async def test_form_errors_are_explained_without_javascript(
    server: Server, new_context: NewContext
) -> None:
    """Each refused form post comes back with a clear message and the address kept."""
    email = server.register(new_email("nojs-errors"))
    page = await (await new_context(java_script_enabled=False)).new_page()

    await page.goto(server.url + "/login")
    await _submit(page, email, "not the right password", "Sign in")
    await expect(page).to_have_url(server.url + "/login")
    await expect(page.locator('[data-notice="invalid-credentials"]')).to_be_visible()
    await expect(page.locator("[data-notice]:visible")).to_have_count(1)
    await expect(page.get_by_label("Email address")).to_have_value(email)

    await page.goto(server.url + "/register")
    await _submit(page, email, PASSWORD, "Create account")
    await expect(page.locator('[data-notice="conflict"]')).to_be_visible()
    await expect(page.get_by_label("Email address")).to_have_value(email)

    weak = new_email("nojs-weak")
    await _submit(page, weak, "iloveyou1234", "Create account")
    notice = page.locator('[data-notice="validation"]')
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text("too common")  # the rule that failed
    await expect(page.get_by_label("Email address")).to_have_value(weak)


async def test_the_throttle_says_the_real_wait_without_javascript(
    server: Server, new_context: NewContext
) -> None:
    """The 429 page says how long, from the API's Retry-After, not "a few minutes"."""
    email = server.register(new_email("nojs-throttle"))
    page = await (await new_context(java_script_enabled=False)).new_page()
    await page.goto(server.url + "/login")
    statuses = []
    for _ in range(LOGIN_PAIR_LIMIT + 1):
        async with page.expect_response(server.url + "/login") as answer:
            await _submit(page, email, "still not the password", "Sign in")
        statuses.append((await answer.value).status)
    assert statuses == [401] * LOGIN_PAIR_LIMIT + [429]
    retry_after = int((await answer.value).headers["retry-after"])
    notice = page.locator('[data-notice="rate-limited"]')
    await expect(notice).to_be_visible()
    await expect(notice.locator('[data-field="retry"]')).to_have_text(duration(retry_after))
    assert "a few minutes" not in await notice.inner_text()


async def test_the_account_forms_work_without_javascript(
    server: Server, new_context: NewContext
) -> None:
    """Change the password (the same one again is refused, naming why) and ask for an
    e-mail change (a wrong password is explained, the new address kept), all as posts."""
    email = server.register(new_email("nojs-account"))
    context = await new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(server.url + "/login")
    await _submit(page, email, PASSWORD, "Sign in")
    await expect(page).to_have_url(server.url + "/account")
    before = await cookie(context, CSRF)

    await page.get_by_label("Current password").fill(PASSWORD)
    await page.get_by_label("New password").fill(PASSWORD)
    await page.get_by_role("button", name="Change password").click()
    same = page.locator('[data-notice="password-validation"]')
    await expect(same).to_be_visible()
    await expect(same).to_contain_text("must differ from the current one")

    fresh = "a quiet harbour at dawn"
    await page.get_by_label("Current password").fill(PASSWORD)
    await page.get_by_label("New password").fill(fresh)
    await page.get_by_role("button", name="Change password").click()
    await expect(page).to_have_url(server.url + "/account?done=password-changed")
    await expect(page.locator('[data-notice="password-changed"]')).to_be_visible()
    after = await cookie(context, CSRF)
    assert before is not None
    assert after is not None
    assert after["value"] != before["value"]  # the session got new credentials

    other = new_email("nojs-new")
    await page.get_by_label("New email address").fill(other)
    await page.get_by_label("Your password").fill(PASSWORD)  # the old one now
    await page.get_by_role("button", name="Send confirmation link").click()
    await expect(page.locator('[data-notice="email-invalid-credentials"]')).to_be_visible()
    await expect(page.get_by_label("New email address")).to_have_value(other)
    await page.get_by_label("Your password").fill(fresh)
    await page.get_by_role("button", name="Send confirmation link").click()
    await expect(page).to_have_url(server.url + "/account?done=email-change-sent")
    await expect(page.locator('[data-notice="email-change-sent"]')).to_be_visible()

    # The page's forms carry the new CSRF token: signing out still works.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(server.url + "/login?reason=signed-out")


async def test_a_forged_sign_out_is_refused(server: Server, new_context: NewContext) -> None:
    """Without the session's CSRF token the sign-out form post changes nothing."""
    email = server.register(new_email("nojs-forged"))
    context = await new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(server.url + "/login")
    await _submit(page, email, PASSWORD, "Sign in")
    await expect(page).to_have_url(server.url + "/account")
    await page.locator('input[name="csrf"]').first.evaluate("input => { input.value = 'forged'; }")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator('[data-notice="csrf"]')).to_be_visible()
    assert await cookie(context, ACCESS) is not None
    await page.goto(server.url + "/auth/me")
    assert json.loads(await page.locator("body").inner_text())["email"] == email
