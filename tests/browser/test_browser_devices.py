"""Two browser contexts are two devices of one user; each can end the other's session."""

from __future__ import annotations

from browserkit import (
    LAPTOP_UA,
    PHONE,
    NewContext,
    Server,
    api,
    new_email,
    profile_shows,
    screenshot,
    sign_in,
)
from playwright.async_api import Page, expect


async def _two_devices(server: Server, new_context: NewContext, email: str) -> tuple[Page, Page]:
    phone = await (await new_context(**PHONE)).new_page()
    await sign_in(phone, server.url, email)
    await profile_shows(phone, email)
    laptop = await (await new_context(user_agent=LAPTOP_UA)).new_page()
    await sign_in(laptop, server.url, email)
    await profile_shows(laptop, email)
    return laptop, phone


async def test_ending_the_other_device_signs_it_out_on_its_next_action(
    server: Server, new_context: NewContext
) -> None:
    """The laptop ends the phone's session; the phone's next click lands on sign-in."""
    email = server.register("margaret.hamilton@example.com")
    laptop, phone = await _two_devices(server, new_context, email)
    await screenshot(phone, "account-mobile")

    await laptop.get_by_role("link", name="Manage sessions").click()
    rows = laptop.locator('[data-list="active"] > li')
    await expect(rows).to_have_count(2)
    this_device = rows.filter(has_text="This device")
    await expect(this_device).to_contain_text("Chrome on Linux")
    other = rows.filter(has_text="Safari on iOS")
    await expect(other.get_by_text("This device")).to_be_hidden()
    await expect(other).to_have_class("session session--phone")  # the phone's icon
    await screenshot(laptop, "sessions")

    await other.get_by_role("button", name="End session").click()
    await expect(laptop.locator('[data-notice="ended-one"]')).to_be_visible()
    await expect(rows).to_have_count(1)
    # The button left with its session; focus went to the list, not to the top of the page.
    await expect(laptop.get_by_role("heading", name="Active sessions")).to_be_focused()

    # The phone's access token is still within its lifetime: refused all the same.
    await phone.get_by_role("link", name="Sessions", exact=True).click()
    await expect(phone).to_have_url(
        server.url + "/login?reason=session-ended&next=%2Faccount%2Fsessions"
    )
    await expect(phone.locator('[data-notice="session-ended"]')).to_be_visible()
    await screenshot(phone, "login-session-ended")
    assert {c["name"] for c in await phone.context.cookies()} == set()

    # The laptop is untouched, and its history says how the other session ended.
    await laptop.reload()
    await expect(rows).to_have_count(1)
    ended = laptop.locator('[data-list="ended"] > li')
    await expect(ended.first).to_contain_text("Ended from another device")
    # It names the device and address that had signed in, with the phone's icon.
    await expect(ended.first).to_contain_text("Safari on iOS")
    await expect(ended.first).to_contain_text("127.0.0.1")
    await expect(ended.first).to_have_class("session session--phone")
    await screenshot(laptop, "sessions-ended")


async def test_sign_out_everywhere_else_keeps_only_this_device(
    server: Server, new_context: NewContext
) -> None:
    """ "Sign out everywhere else" ends the phone's session and keeps the laptop's."""
    email = server.register(new_email("everywhere"))
    laptop, phone = await _two_devices(server, new_context, email)

    await laptop.goto(server.url + "/account/sessions")
    await expect(laptop.locator('[data-list="active"] > li')).to_have_count(2)
    await laptop.get_by_role("button", name="Sign out everywhere else").click()
    await expect(laptop.locator('[data-notice="ended-others"]')).to_be_visible()
    await expect(laptop.locator('[data-list="active"] > li')).to_have_count(1)
    await expect(laptop.get_by_role("button", name="Sign out everywhere else")).to_be_disabled()

    problem = await api(phone, "GET", "/auth/me")
    assert problem["ok"] is False
    assert problem["loginRequired"] is True
    await expect(phone).to_have_url(server.url + "/login?reason=session-ended&next=%2Faccount")
    assert (await api(laptop, "GET", "/auth/me"))["body"]["email"] == email


async def test_changing_the_password_signs_out_the_other_device(
    server: Server, new_context: NewContext
) -> None:
    """The password form checks the current password, then ends every other session."""
    email = server.register(new_email("rotate"))
    laptop, phone = await _two_devices(server, new_context, email)
    current = laptop.get_by_label("Current password")
    new = laptop.get_by_label("New password")

    await current.fill("this is not my password")
    await new.fill("a brand new passphrase for me")
    await laptop.get_by_role("button", name="Change password").click()
    await expect(laptop.locator('[data-notice="password-invalid-credentials"]')).to_be_visible()
    await expect(laptop).to_have_url(server.url + "/account")

    await current.fill("violet tractor 42 umbrella")
    await new.fill("a brand new passphrase for me")
    await laptop.get_by_role("button", name="Change password").click()
    await expect(laptop.locator('[data-notice="password-changed"]')).to_be_visible()
    await expect(laptop.get_by_text("You are signed in on this device only.")).to_be_visible()

    await phone.reload()
    await expect(phone).to_have_url(server.url + "/login?reason=session-ended&next=%2Faccount")
