"""With JavaScript off, registering and signing in still work as plain form posts."""

from __future__ import annotations

import json

from browserkit import ACCESS, PASSWORD, NewContext, Server, cookie, new_email, screenshot
from playwright.async_api import Page, expect


async def _submit(page: Page, email: str, password: str, button: str) -> None:
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name=button).click()


async def test_register_and_sign_in_without_javascript(
    server: Server, new_context: NewContext
) -> None:
    """Form post -> 303 -> the next page, with the server-rendered notice."""
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
    await expect(note).to_contain_text("You are signed in. This page uses JavaScript")
    # The controls that need scripts are gone rather than broken.
    await expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    await expect(page.get_by_role("heading", name="Change password")).to_be_hidden()
    await screenshot(page, "account-nojs")
    assert await cookie(context, ACCESS) is not None

    # The session is real: the protected API answers this browser.
    await page.goto(server.url + "/auth/me")
    assert json.loads(await page.locator("body").inner_text())["email"] == email


async def test_form_errors_are_explained_without_javascript(
    server: Server, new_context: NewContext
) -> None:
    """Each failed form post comes back with a clear message, rendered by the server."""
    email = server.register(new_email("nojs-errors"))
    page = await (await new_context(java_script_enabled=False)).new_page()

    await page.goto(server.url + "/login")
    await _submit(page, email, "not the right password", "Sign in")
    await expect(page).to_have_url(server.url + "/login?error=invalid-credentials")
    await expect(page.locator('[data-notice="invalid-credentials"]')).to_be_visible()
    await expect(page.locator("[data-notice]:visible")).to_have_count(1)

    await page.goto(server.url + "/register")
    await _submit(page, email, PASSWORD, "Create account")
    await expect(page).to_have_url(server.url + "/register?error=conflict")
    await expect(page.locator('[data-notice="conflict"]')).to_be_visible()

    await _submit(page, new_email("nojs-weak"), "iloveyou1234", "Create account")
    await expect(page).to_have_url(server.url + "/register?error=validation")
    notice = page.locator('[data-notice="validation"]')
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text("at least 12 characters")
