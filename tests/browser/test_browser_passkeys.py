"""Passkeys in real Chromium with the DevTools virtual authenticator (WebAuthn domain):
register one from the account page, sign out, sign in with "Sign in with a passkey"
without typing the e-mail, remove it, and see a sign-in with it refused.

WebAuthn refuses IP addresses as the rp id: the browser uses ``http://localhost:<port>``
(the server's issuer, so the rp id is ``localhost``), which Chromium treats as a secure
context."""

from __future__ import annotations

from typing import Any

from browserkit import (
    PASSWORD,
    NewContext,
    Server,
    new_email,
    profile_shows,
    screenshot,
    sign_in,
)
from playwright.async_api import expect


async def _authenticator(context: Any, page: Any) -> tuple[Any, str]:
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    added = await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, str(added["authenticatorId"])


async def test_register_sign_in_with_and_remove_a_passkey(
    server: Server, new_context: NewContext
) -> None:
    base = server.url
    email = server.register(new_email("passkey"))
    context = await new_context()
    page = await context.new_page()
    cdp, authenticator = await _authenticator(context, page)

    await sign_in(page, base, email)
    await profile_shows(page, email)
    section = page.locator("[data-passkeys]")
    await expect(section.get_by_role("heading", name="Passkeys")).to_be_visible()
    await expect(section.get_by_text("You have no passkeys yet.")).to_be_visible()
    await section.get_by_label("Name for the new passkey").fill("Test laptop")
    await section.get_by_role("button", name="Add a passkey").click()
    await expect(section.locator('[data-notice="passkeys-added"]')).to_be_visible()
    await expect(section.get_by_text("Test laptop")).to_be_visible()
    await expect(section.get_by_text("never used")).to_be_visible()
    stored = await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
    assert len(stored["credentials"]) == 1
    assert stored["credentials"][0]["isResidentCredential"] is True
    assert stored["credentials"][0]["rpId"] == "localhost"
    await screenshot(page, "account-passkeys")

    # Sign out, then back in with the passkey alone: no e-mail typed.
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{base}/login?reason=signed-out")
    button = page.get_by_role("button", name="Sign in with a passkey")
    await expect(button).to_be_visible()
    await screenshot(page, "login-passkey")
    await expect(page.get_by_label("Email address")).to_have_value("")
    await button.click()
    await page.wait_for_url(f"{base}/account")
    await profile_shows(page, email)
    await expect(section.get_by_text("Test laptop")).to_be_visible()
    await expect(section.get_by_text("last used")).to_be_visible()

    # The passkey is now a second factor: a password sign-in is asked for it on /login/mfa
    # (the user has no authenticator app, so the passkey comes first there).
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{base}/login?reason=signed-out")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await page.wait_for_url(f"{base}/login/mfa*")
    step = page.get_by_role("button", name="Use a passkey")
    await expect(step).to_be_visible()
    await expect(page.get_by_label("Authentication code")).to_be_hidden()
    await screenshot(page, "login-mfa-passkey")
    await step.click()
    await page.wait_for_url(f"{base}/account")
    await profile_shows(page, email)
    await page.get_by_role("link", name="Sessions", exact=True).click()
    await expect(page.get_by_text("Signed in with password and a passkey")).to_be_visible()
    await page.get_by_role("link", name="Profile", exact=True).click()
    await page.wait_for_url(f"{base}/account")

    # This session used the passkey (amr mfa): it may remove it.
    await section.get_by_role("button", name="Remove passkey: Test laptop").click()
    await expect(section.locator('[data-notice="passkeys-removed"]')).to_be_visible()
    await expect(section.get_by_text("You have no passkeys yet.")).to_be_visible()

    # The authenticator still holds the key; the server no longer knows it.
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{base}/login?reason=signed-out")
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await expect(page.locator('[data-notice="passkey-invalid"]')).to_be_visible()
    await expect(page).to_have_url(f"{base}/login?reason=signed-out")


async def test_passkey_controls_are_hidden_without_javascript(
    server: Server, new_context: NewContext
) -> None:
    context = await new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(server.url + "/login")
    await expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name="Sign in with a passkey")).to_be_hidden()


async def test_rename_a_passkey_from_the_account_page(
    server: Server, new_context: NewContext
) -> None:
    email = server.register(new_email("passkey-rename"))
    context = await new_context()
    page = await context.new_page()
    await _authenticator(context, page)
    await sign_in(page, server.url, email)
    await profile_shows(page, email)
    section = page.locator("[data-passkeys]")
    await section.get_by_label("Name for the new passkey").fill("Old laptop")
    await section.get_by_role("button", name="Add a passkey").click()
    await expect(section.locator('[data-notice="passkeys-added"]')).to_be_visible()

    # Keyboard only: the input is labelled and prefilled, Enter saves.
    rename = section.get_by_role("button", name="Rename passkey: Old laptop")
    await rename.click()
    field = section.get_by_label("New name for this passkey")
    await expect(field).to_be_focused()
    await expect(field).to_have_value("Old laptop")
    await expect(section.get_by_role("button", name="Remove passkey: Old laptop")).to_be_hidden()
    await field.fill("Work laptop")
    await screenshot(page, "account-passkey-rename")
    await field.press("Enter")
    await expect(section.locator('[data-notice="passkeys-renamed"]')).to_be_visible()
    await expect(field).to_be_hidden()
    renamed = section.get_by_role("button", name="Rename passkey: Work laptop")
    await expect(renamed).to_be_focused()
    await expect(section.get_by_role("button", name="Remove passkey: Work laptop")).to_be_visible()
    await page.reload()
    await profile_shows(page, email)
    await expect(section.locator(".session__device")).to_have_text(["Work laptop"])

    # Escape cancels: nothing is sent, the name stays.
    await renamed.click()
    await field.fill("Never saved")
    await field.press("Escape")
    await expect(field).to_be_hidden()
    await expect(renamed).to_be_focused()
    await expect(section.locator(".session__device")).to_have_text(["Work laptop"])

    # Too long for the API (maxlength stops typing it; a value set by script still gets
    # there): its 422 is shown, the form stays open, the row keeps its name.
    await renamed.click()
    await field.evaluate("(input, value) => { input.value = value; }", "x" * 65)
    await section.get_by_role("button", name="Save").click()
    problem = section.locator('[data-notice="passkeys-validation"]')
    await expect(problem).to_be_visible()
    await expect(problem).to_have_text("Field 'name' is too long.")
    await expect(field).to_be_visible()
    await expect(field).to_have_attribute("aria-invalid", "true")
    await section.get_by_role("button", name="Cancel").click()
    await expect(section.locator(".session__device")).to_have_text(["Work laptop"])
    await page.reload()
    await profile_shows(page, email)
    await expect(section.locator(".session__device")).to_have_text(["Work laptop"])

    # Empty: the API names it "Passkey", as when adding one without a name.
    await section.get_by_role("button", name="Rename passkey: Work laptop").click()
    await field.fill("")
    await field.press("Enter")
    await expect(section.locator(".session__device")).to_have_text(["Passkey"])

    # Removed in another tab while this one renames it (a passkey sign-in may remove): 404
    # says so and the list is reloaded.
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{server.url}/login?reason=signed-out")
    await page.get_by_role("button", name="Sign in with a passkey").click()
    await page.wait_for_url(f"{server.url}/account")
    await profile_shows(page, email)
    await section.get_by_role("button", name="Rename passkey: Passkey").click()
    await field.fill("Gone laptop")
    other = await context.new_page()
    await other.goto(f"{server.url}/account")
    await profile_shows(other, email)
    await (
        other.locator("[data-passkeys]")
        .get_by_role("button", name="Remove passkey: Passkey")
        .click()
    )
    await expect(other.locator('[data-notice="passkeys-removed"]')).to_be_visible()
    await field.press("Enter")
    await expect(section.locator('[data-notice="passkeys-not-found"]')).to_be_visible()
    await expect(section.get_by_text("You have no passkeys yet.")).to_be_visible()
