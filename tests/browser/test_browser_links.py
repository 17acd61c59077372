"""The pages opened from a mailed link (reset, verify, confirm) and the forgotten-password
page: what they show, and that the link's token goes nowhere but into their own form."""

from __future__ import annotations

import pytest
from browserkit import NewContext, Server, screenshot
from playwright.async_api import Request, expect

SECRET = "aVeryPrivateLinkToken_0123456789abcdefABCDEF"

LINK_PAGES = [
    ("/reset-password", "Choose a new password", "Set new password"),
    ("/verify-email", "Verify your email address", "Verify my email address"),
    ("/confirm-email", "Confirm your new email address", "Confirm new email address"),
]


@pytest.mark.parametrize(("path", "heading", "button"), LINK_PAGES)
async def test_the_token_leaves_the_address_bar_and_is_never_sent_as_referer(
    server: Server, new_context: NewContext, path: str, heading: str, button: str
) -> None:
    """The script takes the token out of the address (and so out of the history); the
    page's own loads carry no Referer; the form still holds the token."""
    page = await (await new_context()).new_page()
    requests: list[Request] = []
    page.on("request", lambda r: requests.append(r))
    await page.goto(f"{server.url}{path}?token={SECRET}")
    await expect(page.get_by_role("heading", name=heading)).to_be_visible()
    await expect(page).to_have_url(server.url + path)
    assert SECRET not in await page.evaluate("location.href + history.length")
    await expect(page.locator('input[name="token"]')).to_have_value(SECRET)
    await expect(page.get_by_role("button", name=button)).to_be_visible()
    loads = [r for r in requests if r.url != f"{server.url}{path}?token={SECRET}"]
    assert loads, "the page loads its script and styles"
    for request in loads:
        headers = await request.all_headers()
        assert SECRET not in headers.get("referer", ""), request.url
    await screenshot(page, path.strip("/"))


@pytest.mark.parametrize(("path", "heading", "button"), LINK_PAGES)
async def test_a_link_without_its_token_says_so(
    server: Server, new_context: NewContext, path: str, heading: str, button: str
) -> None:
    """An incomplete link explains itself and offers no form to fail."""
    page = await (await new_context()).new_page()
    await page.goto(server.url + path)
    notice = page.locator('[data-notice="token-missing"]')
    await expect(notice).to_be_visible()
    await expect(notice).to_have_attribute("role", "alert")
    await expect(page.get_by_role("button", name=button)).to_be_hidden()


async def test_the_sign_in_page_links_to_the_forgotten_password_page(
    server: Server, new_context: NewContext
) -> None:
    """ "Forgot password?" leads to a labelled form that keeps the sign-in page's design."""
    page = await (await new_context()).new_page()
    await page.goto(server.url + "/login")
    await page.get_by_role("link", name="Forgot password?").click()
    await expect(page).to_have_url(server.url + "/forgot-password")
    await expect(page.get_by_role("heading", name="Forgot your password?")).to_be_visible()
    await expect(page.get_by_label("Email address")).to_be_focused()
    await expect(page.get_by_role("button", name="Send reset link")).to_be_visible()
    await screenshot(page, "forgot-password")


async def test_an_unknown_address_shows_a_page(server: Server, new_context: NewContext) -> None:
    """A mistyped address in the browser is a page with a way back, not raw JSON."""
    page = await (await new_context()).new_page()
    response = await page.goto(server.url + "/acount")
    assert response is not None
    assert response.status == 404
    await expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    await expect(page.get_by_role("link", name="Go to your account")).to_be_visible()
    await screenshot(page, "not-found")
