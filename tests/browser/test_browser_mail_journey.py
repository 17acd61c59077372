"""The whole e-mail journey in real Chromium against a real ``tokenward serve`` that sends
its mail to a real SMTP server: register, read the verification mail, verify; forget the
password, read the reset mail, reset, see the other device signed out; change the e-mail
address. And the same link pages with JavaScript off."""

from __future__ import annotations

import re
from email.message import EmailMessage

from browserkit import (
    LAPTOP_UA,
    PASSWORD,
    PHONE,
    NewContext,
    Server,
    new_email,
    profile_shows,
    screenshot,
    sign_in,
    sign_up,
)
from mail_support import ARRIVAL, SmtpInbox, html_of, text_of
from playwright.async_api import Page, expect

from waiting import await_until

NEW_PASSWORD = "copper lantern 77 meadow"


def _links(server: Server, smtp: SmtpInbox, address: str, page: str) -> list[str]:
    """Every link to ``page`` in the text of the mails to ``address``, oldest first."""
    pattern = re.escape(server.url + page) + r"\?token=[A-Za-z0-9_.-]{20,}"
    return [link for m in smtp.to(address) for link in re.findall(pattern, text_of(m))]


async def _link(server: Server, smtp: SmtpInbox, address: str, page: str, count: int = 1) -> str:
    """The newest link to ``page`` mailed to ``address``, once ``count`` have come."""
    await await_until(
        lambda: len(_links(server, smtp, address, page)) >= count,
        within=ARRIVAL,
        what=f"a mail to {address} with a link to {page}",
    )
    return _links(server, smtp, address, page)[-1]


async def _notice(smtp: SmtpInbox, address: str, subject: str) -> EmailMessage:
    await await_until(
        lambda: any(subject in str(m["Subject"]) for m in smtp.to(address)),
        within=ARRIVAL,
        what=f"'{subject}' to {address}",
    )
    return next(m for m in smtp.to(address) if subject in str(m["Subject"]))


async def _verified_shows(page: Page, text: str) -> None:
    await expect(page.locator('[data-bind="email_verified"]')).to_have_text(text)


async def test_register_verify_forget_reset_and_change_the_address(
    mail_server: Server, smtp: SmtpInbox, new_context: NewContext
) -> None:
    server = mail_server
    email = new_email("journey")
    laptop = await (await new_context(user_agent=LAPTOP_UA)).new_page()

    # Register; the verification mail arrives; the account says "not yet" until the link.
    await sign_up(laptop, server.url, email)
    verify_link = await _link(server, smtp, email, "/verify-email")
    await sign_in(laptop, server.url, email)
    await profile_shows(laptop, email)
    await _verified_shows(laptop, "Not yet")
    await expect(laptop.get_by_role("button", name="Send a new verification link")).to_be_visible()
    await screenshot(laptop, "account-unverified")

    await laptop.goto(verify_link)
    await expect(laptop).to_have_url(server.url + "/verify-email")  # the token is gone
    await laptop.get_by_role("button", name="Verify my email address").click()
    done = laptop.locator('[data-notice="done"]')
    await expect(done).to_be_visible()
    await expect(done).to_be_focused()
    await expect(laptop.get_by_role("button", name="Verify my email address")).to_be_hidden()
    await screenshot(laptop, "verify-email-done")
    await laptop.get_by_role("link", name="Go to your account").click()
    await _verified_shows(laptop, "Yes")

    # The phone signs in too: the other device of the reset.
    phone = await (await new_context(**PHONE)).new_page()
    await sign_in(phone, server.url, email)
    await profile_shows(phone, email)

    # Forgotten password, from a third browser.
    desk = await (await new_context()).new_page()
    await desk.goto(server.url + "/login")
    await desk.get_by_role("link", name="Forgot password?").click()
    await desk.get_by_label("Email address").fill(email)
    await desk.get_by_role("button", name="Send reset link").click()
    await expect(desk.locator('[data-notice="sent"]')).to_be_visible()
    await screenshot(desk, "forgot-password-sent")
    reset_link = await _link(server, smtp, email, "/reset-password")

    await desk.goto(reset_link)
    await expect(desk).to_have_url(server.url + "/reset-password")
    new_password = desk.get_by_label("New password", exact=True)
    await new_password.fill("iloveyou1234")  # refused: the rule is named, the link still works
    await desk.get_by_role("button", name="Set new password").click()
    await expect(desk.locator('[data-notice="validation"]')).to_contain_text("too common")
    await expect(new_password).to_be_focused()
    await screenshot(desk, "reset-password-refused")
    await new_password.fill(NEW_PASSWORD)
    await desk.get_by_role("button", name="Set new password").click()
    await expect(desk).to_have_url(server.url + "/login?done=password-reset")
    await expect(desk.locator('[data-notice="password-reset"]')).to_be_visible()
    await screenshot(desk, "login-password-reset")

    # Every device that was signed in is signed out, the phone included.
    await phone.reload()
    await expect(phone).to_have_url(server.url + "/login?reason=session-ended&next=%2Faccount")
    await laptop.reload()
    await expect(laptop).to_have_url(server.url + "/login?reason=session-ended&next=%2Faccount")
    # The used link is spent.
    await desk.goto(reset_link)
    await desk.get_by_label("New password", exact=True).fill("another fine passphrase")
    await desk.get_by_role("button", name="Set new password").click()
    await expect(desk.locator('[data-notice="token-invalid"]')).to_be_visible()

    # Change the e-mail address: confirmed from the new address, the old one is told.
    await sign_in(desk, server.url, email, NEW_PASSWORD)
    await profile_shows(desk, email)
    changed = new_email("journey-new")
    await desk.get_by_label("New email address").fill(changed)
    await desk.get_by_label("Your password").fill(PASSWORD)  # the old one: refused
    await desk.get_by_role("button", name="Send confirmation link").click()
    await expect(desk.locator('[data-notice="email-invalid-credentials"]')).to_be_visible()
    await expect(desk).to_have_url(server.url + "/account")  # not sent to sign in
    await desk.get_by_label("Your password").fill(NEW_PASSWORD)
    await desk.get_by_role("button", name="Send confirmation link").click()
    sent = desk.locator('[data-notice="email-change-sent"]')
    await expect(sent).to_be_visible()
    await expect(sent).to_contain_text(changed)
    await screenshot(desk, "account-email-change-sent")

    confirm_link = await _link(server, smtp, changed, "/confirm-email")
    await desk.goto(confirm_link)
    await expect(desk).to_have_url(server.url + "/confirm-email")
    await desk.get_by_role("button", name="Confirm new email address").click()
    await expect(desk.locator('[data-notice="done"]')).to_be_visible()
    await screenshot(desk, "confirm-email-done")
    await desk.get_by_role("link", name="Go to your account").click()
    await profile_shows(desk, changed)  # the session went on
    await _notice(smtp, email, "The e-mail address of your account was changed")

    # The mails as a mail client shows them (their HTML part), for the docs' screenshots.
    reader = await (await new_context()).new_page()
    for name, address, subject in (
        ("mail-verify", email, "Confirm your e-mail address"),
        ("mail-reset", email, "Reset your password"),
        ("mail-notice-password-reset", email, "Your password was reset"),
        ("mail-confirm-change", changed, "Confirm your new e-mail address"),
        ("mail-notice-email-changed", email, "The e-mail address of your account was changed"),
    ):
        message = await _notice(smtp, address, subject)
        await reader.set_content(html_of(message))
        await screenshot(reader, name)

    # The server's log (its access log is on) saw the link pages, never a link's token.
    log = server.log.read_text(errors="replace")
    assert '"path": "/reset-password"' in log or '"path":"/reset-password"' in log
    for link in (verify_link, reset_link, confirm_link):
        assert link.rpartition("token=")[2] not in log


async def test_the_link_pages_work_without_javascript(
    mail_server: Server, smtp: SmtpInbox, new_context: NewContext
) -> None:
    """Plain form posts: ask for a reset, set the new password from the mailed link (the
    page sends no Referer, so its post says "Origin: null"), sign in with it."""
    server = mail_server
    email = server.register(new_email("journey-nojs"))
    page = await (await new_context(java_script_enabled=False)).new_page()
    await page.goto(server.url + "/forgot-password")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_role("button", name="Send reset link").click()
    await expect(page.locator('[data-notice="sent"]')).to_be_visible()
    await expect(page.get_by_label("Email address")).to_have_value(email)
    reset_link = await _link(server, smtp, email, "/reset-password")

    await page.goto(reset_link)
    await page.get_by_label("New password", exact=True).fill("password1234")
    await page.get_by_role("button", name="Set new password").click()
    await expect(page.locator('[data-notice="validation"]')).to_be_visible()
    await expect(page).to_have_url(server.url + "/reset-password")  # no token in the address
    await page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Set new password").click()
    await expect(page).to_have_url(server.url + "/login?done=password-reset")
    await sign_in(page, server.url, email, NEW_PASSWORD)

    verify_link = await _link(server, smtp, email, "/verify-email")
    await page.goto(verify_link)
    await page.get_by_role("button", name="Verify my email address").click()
    await expect(page).to_have_url(server.url + "/verify-email?done=done")
    await expect(page.locator('[data-notice="done"]')).to_be_visible()


async def test_an_unverified_address_is_asked_to_verify_and_can_get_a_new_link(
    verifying_server: Server, smtp: SmtpInbox, new_context: NewContext
) -> None:
    """With TOKENWARD_REQUIRE_VERIFIED_EMAIL the sign-in page says to verify first and sends
    a new link (with and without JavaScript); the link's page verifies, then sign-in works."""
    server = verifying_server
    email = server.register(new_email("unverified"))
    await _link(server, smtp, email, "/verify-email")  # the registration's mail
    for scripts, count in ((True, 2), (False, 3)):
        page = await (await new_context(java_script_enabled=scripts)).new_page()
        await page.goto(server.url + "/login")
        await page.get_by_label("Email address").fill(email)
        await page.get_by_label("Password", exact=True).fill(PASSWORD)
        await page.get_by_role("button", name="Sign in", exact=True).click()
        notice = page.locator('[data-notice="email-not-verified"]')
        await expect(notice).to_be_visible()
        if scripts:
            await screenshot(page, "login-email-not-verified")
        await notice.get_by_role("button", name="Send a new link").click()
        await expect(page.locator('[data-notice="verification-sent"]')).to_be_visible()
        link = await _link(server, smtp, email, "/verify-email", count=count)
    await page.goto(link)
    await page.get_by_role("button", name="Verify my email address").click()
    await expect(page.locator('[data-notice="done"]')).to_be_visible()
    await sign_in(page, server.url, email)
