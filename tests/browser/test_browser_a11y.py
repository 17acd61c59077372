"""Keyboard and focus: the fields of a form are next to each other in the tab order, and
focus is not lost when the control that had it goes away."""

from __future__ import annotations

import pytest
from browserkit import PASSWORD, NewContext, Server, new_email, profile_shows, sign_in
from playwright.async_api import Page, expect


async def _focused(page: Page) -> str:
    return str(await page.evaluate("document.activeElement && document.activeElement.id"))


@pytest.mark.parametrize("path", ["/login", "/register"])
async def test_the_show_toggle_comes_after_the_fields(
    server: Server, new_context: NewContext, path: str
) -> None:
    """Tab from the e-mail address reaches the password, then "Show"."""
    page = await (await new_context()).new_page()
    await page.goto(server.url + path)
    await page.get_by_label("Email address").focus()
    await page.keyboard.press("Tab")
    assert await _focused(page) == "password"
    await page.keyboard.press("Tab")
    show = page.get_by_role("button", name="Show")
    await expect(show).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Password", exact=True)).to_have_attribute("type", "text")
    await expect(page.get_by_role("button", name="Hide")).to_have_attribute("aria-pressed", "true")


async def test_changing_to_the_same_password_is_refused(
    server: Server, new_context: NewContext
) -> None:
    """The same password again is not "changed": the form says it must differ."""
    email = server.register(new_email("same"))
    page = await (await new_context()).new_page()
    await sign_in(page, server.url, email)
    await profile_shows(page, email)
    await page.get_by_label("Current password").fill(PASSWORD)
    await page.get_by_label("New password").fill(PASSWORD)
    await page.get_by_role("button", name="Change password").click()
    notice = page.locator('[data-notice="password-validation"]')
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text("must differ from the current one")
    await expect(page.locator('[data-notice="password-changed"]')).to_be_hidden()
    await expect(page.get_by_label("New password")).to_be_focused()
