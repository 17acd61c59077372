"""Two-step verification in real Chromium (docs/mfa.md): enrolling an authenticator app
from the account page (codes computed with pyotp from the secret the page shows), signing
in with a code or a recovery code on /login/mfa, a wrong code, the step-up prompt, the
enrolment during sign-in under ``TOKENWARD_MFA=required``, the sign-in method on the
sessions page, and the code page without JavaScript.

Codes are real RFC 6238 codes of the real clock. Each is accepted once (and no earlier
step after it), so each use takes the next time step; when that step is more than one
ahead of the clock (the server accepts one step of drift) the test polls the clock until
it is not (bounded: one period), instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pyotp
import pytest
from browserkit import (
    PASSWORD,
    NewContext,
    Server,
    new_email,
    profile_shows,
    screenshot,
    sign_in,
    sign_up,
)
from playwright.async_api import Page, expect

from waiting import await_until

PERIOD = 30
CODE_LABEL = "Authentication code"


class Authenticator:
    """An authenticator app holding one secret: each code it gives is a later step."""

    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret)
        self.last: int | None = None

    async def code(self) -> str:
        now = int(time.time()) // PERIOD
        step = now if self.last is None else max(now, self.last + 1)
        if step > now + 1:
            await await_until(
                lambda: int(time.time()) // PERIOD + 1 >= step,
                within=PERIOD + 5,
                what="the clock reaches the next TOTP step",
                step=0.2,
            )
        self.last = step
        return self.totp.at(step * PERIOD)

    def wrong(self) -> str:
        """A code no step around now has."""
        now = int(time.time()) // PERIOD
        near = {self.totp.at(s * PERIOD) for s in range(now - 2, now + 3)}
        return next(c for c in ("000000", "111111", "222222", "333333") if c not in near)


@pytest.fixture(scope="session")
def required_server(_servers: Callable[..., Server]) -> Server:
    return _servers(register_ip_limit="1000", mfa="required")


#: TOKENWARD_REAUTH_MAX_AGE of stale_server: a sign-in is "recent" this long.
RECENT = 2


@pytest.fixture(scope="session")
def stale_server(_servers: Callable[..., Server]) -> Server:
    return _servers(register_ip_limit="1000", reauth_max_age=str(RECENT))


async def _enrol_on_account_page(page: Page) -> tuple[Authenticator, list[str]]:
    """Set up the app from the account page; returns it and the ten recovery codes."""
    section = page.locator("[data-mfa]")
    await section.get_by_role("button", name="Set up an authenticator app").click()
    secret_text = section.locator('[data-bind="mfa-secret"]')
    await expect(secret_text).not_to_be_empty()
    await expect(section.locator('[data-bind="mfa-qr"] svg')).to_be_visible()
    await expect(section.get_by_label(CODE_LABEL)).to_be_focused()
    await screenshot(page, "account-mfa-enrol")
    app = Authenticator(await secret_text.inner_text())
    await section.get_by_label(CODE_LABEL).fill(await app.code())
    await section.get_by_role("button", name="Turn on").click()
    codes = section.locator('[data-bind="mfa-codes"] li')
    await expect(codes).to_have_count(10)
    await expect(page.locator('[data-notice="mfa-enabled"]')).to_be_visible()
    await screenshot(page, "account-mfa-recovery-codes")
    recovery = [text.strip() for text in await codes.all_inner_texts()]
    await section.get_by_role("button", name="I have saved them").click()
    await expect(section.locator('[data-bind="mfa-left"]')).to_have_text("10")
    return app, recovery


async def _password_step(page: Page, base: str, email: str) -> None:
    await page.goto(f"{base}/login")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await page.wait_for_url(f"{base}/login/mfa*")


async def _sign_out(page: Page, base: str) -> None:
    await page.get_by_role("button", name="Sign out", exact=True).click()
    await page.wait_for_url(f"{base}/login?reason=signed-out")


async def test_enrol_sign_in_with_a_code_and_a_recovery_code_and_step_up(
    server: Server, new_context: NewContext
) -> None:
    context = await new_context()
    page = await context.new_page()
    email = new_email("mfa")
    await sign_up(page, server.url, email)
    await sign_in(page, server.url, email)
    await profile_shows(page, email)
    app, recovery = await _enrol_on_account_page(page)

    # The step-up prompt: this session signed in with a password alone, and new recovery
    # codes need a second factor. The client's onStepUp hook asks for a code, calls
    # POST /auth/reauthenticate and sends the request again.
    section = page.locator("[data-mfa]")
    await section.get_by_role("button", name="New recovery codes").click()
    dialog = page.get_by_role("dialog", name="Confirm it\u2019s you")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label(CODE_LABEL)).to_be_focused()
    await dialog.get_by_label(CODE_LABEL).fill(app.wrong())
    await dialog.get_by_role("button", name="Confirm").click()
    await expect(dialog.get_by_role("alert")).to_contain_text("That code isn\u2019t right")
    await screenshot(page, "account-step-up")
    await dialog.get_by_label(CODE_LABEL).fill(await app.code())
    await dialog.get_by_role("button", name="Confirm").click()
    await expect(dialog).to_be_hidden()
    new_codes = section.locator('[data-bind="mfa-codes"] li')
    await expect(new_codes).to_have_count(10)
    fresh = [text.strip() for text in await new_codes.all_inner_texts()]
    assert not set(fresh) & set(recovery)
    await section.get_by_role("button", name="I have saved them").click()
    await _sign_out(page, server.url)

    # Password, then the code page: a wrong code is explained and the challenge kept.
    await _password_step(page, server.url, email)
    assert "#" not in page.url  # the challenge left the address bar
    code_input = page.get_by_label(CODE_LABEL)
    await expect(code_input).to_be_focused()
    assert await code_input.get_attribute("autocomplete") == "one-time-code"
    assert await code_input.get_attribute("inputmode") == "numeric"
    await screenshot(page, "login-mfa")
    await code_input.fill(app.wrong())
    await page.get_by_role("button", name="Verify").click()
    await expect(page.locator('[data-notice="invalid-code"]')).to_be_visible()
    await expect(code_input).to_be_focused()
    await screenshot(page, "login-mfa-wrong-code")
    await code_input.fill(await app.code())
    await page.get_by_role("button", name="Verify").click()
    await page.wait_for_url(f"{server.url}/account")
    await profile_shows(page, email)

    # The sessions page says how this session signed in.
    await page.goto(f"{server.url}/account/sessions")
    current = page.locator(".session", has=page.locator('[data-slot="current"]'))
    await expect(current.locator('[data-slot="method"]')).to_have_text(
        "Signed in with password and an authenticator code"
    )
    await screenshot(page, "sessions-sign-in-method")
    await _sign_out(page, server.url)

    # A recovery code instead of the app, once.
    await _password_step(page, server.url, email)
    await page.get_by_role("link", name="Use a recovery code").click()
    await expect(page.get_by_label("Recovery code", exact=True)).to_be_focused()
    await screenshot(page, "login-mfa-recovery")
    await page.get_by_label("Recovery code", exact=True).fill(fresh[0])
    await page.get_by_role("button", name="Verify").click()
    await page.wait_for_url(f"{server.url}/account")
    await expect(section.locator('[data-bind="mfa-left"]')).to_have_text("9")
    await page.goto(f"{server.url}/account/sessions")
    await expect(current.locator('[data-slot="method"]')).to_have_text(
        "Signed in with password and a recovery code"
    )
    await page.goto(f"{server.url}/account")
    await expect(section.locator('[data-bind="mfa-left"]')).to_have_text("9")

    # This session used a second factor just now: removing the app needs no prompt.
    await section.get_by_role("button", name="Remove").click()
    await expect(page.locator('[data-notice="mfa-removed"]')).to_be_visible()
    await expect(dialog).to_be_hidden()
    await _sign_out(page, server.url)
    await sign_in(page, server.url, email)  # a password alone again


async def test_enrolment_at_sign_in_under_the_required_policy(
    required_server: Server, new_context: NewContext
) -> None:
    context = await new_context()
    page = await context.new_page()
    email = new_email("required")
    await sign_up(page, required_server.url, email)
    await _password_step(page, required_server.url, email)
    secret_text = page.locator('[data-bind="secret"]')
    await expect(secret_text).not_to_be_empty()
    await expect(page.locator('[data-bind="qr"] svg')).to_be_visible()
    await expect(page.locator("#enroll-code")).to_be_focused()
    await screenshot(page, "login-mfa-enrol")
    app = Authenticator(await secret_text.inner_text())
    # A reload (or a second tab) shows the same secret: either's code confirms.
    await page.reload()
    await expect(secret_text).to_have_text(app.totp.secret)
    await page.locator("#enroll-code").fill(await app.code())
    await page.get_by_role("button", name="Turn on and sign in").click()
    codes = page.locator('[data-bind="codes"] li')
    await expect(codes).to_have_count(10)
    await expect(page.get_by_role("heading", name="Save your recovery codes")).to_be_focused()
    await screenshot(page, "login-mfa-recovery-codes")
    await page.get_by_role("button", name="I have saved them").click()
    await page.wait_for_url(f"{required_server.url}/account")
    await profile_shows(page, email)


async def _enrolled_by_api(server: Server, email: str) -> Authenticator:
    """Register ``email`` and set up an app through the API; the app."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        bearer = {"X-Auth-Transport": "bearer"}
        r = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        r = await client.post(
            "/auth/login", json={"email": email, "password": PASSWORD}, headers=bearer
        )
        auth = {**bearer, "Authorization": f"Bearer {r.json()['access_token']}"}
        r = await client.post("/auth/mfa/totp/enroll", headers=auth)
        app = Authenticator(r.json()["secret"])
        code = await app.code()
        r = await client.post("/auth/mfa/totp/confirm", json={"code": code}, headers=auth)
        assert r.status_code == 200, r.text
    return app


async def test_sign_in_with_a_code_without_javascript(
    server: Server, new_context: NewContext
) -> None:
    email = new_email("mfa-nojs")
    app = await _enrolled_by_api(server, email)
    context = await new_context(java_script_enabled=False)
    page = await context.new_page()
    await _password_step(page, server.url, email)
    assert page.url == f"{server.url}/login/mfa"
    await page.get_by_label(CODE_LABEL).fill(app.wrong())
    await page.get_by_role("button", name="Verify").click()
    await expect(page.locator('[data-notice="invalid-code"]')).to_be_visible()
    await screenshot(page, "login-mfa-nojs")
    await page.get_by_label(CODE_LABEL).fill(await app.code())
    await page.get_by_role("button", name="Verify").click()
    await page.wait_for_url(f"{server.url}/account")
    await expect(page.locator("noscript > p")).to_contain_text("You are signed in.")


async def test_a_stale_sign_in_is_asked_for_the_password(
    stale_server: Server, new_context: NewContext
) -> None:
    """Setting up an app needs a recent sign-in: past TOKENWARD_REAUTH_MAX_AGE the API
    answers 403 reauthentication-required and the page's prompt asks for the password (a
    wrong one is said and asked again), re-authenticates and carries on."""
    context = await new_context()
    page = await context.new_page()
    email = new_email("stale")
    await sign_up(page, stale_server.url, email)
    signed_in = time.time()
    await sign_in(page, stale_server.url, email)
    await profile_shows(page, email)
    await await_until(
        lambda: time.time() - signed_in > RECENT + 1.5,
        within=RECENT + 10,
        what="the sign-in is no longer recent",
        step=0.2,
    )
    section = page.locator("[data-mfa]")
    await section.get_by_role("button", name="Set up an authenticator app").click()
    dialog = page.get_by_role("dialog", name="Confirm it\u2019s you")
    password = dialog.get_by_label("Account password")
    await expect(password).to_be_focused()
    await expect(dialog.get_by_label(CODE_LABEL)).to_be_hidden()
    await password.fill("not the password at all")
    await dialog.get_by_role("button", name="Confirm").click()
    await expect(dialog.get_by_role("alert")).to_have_text("That password is not correct.")
    await password.fill(PASSWORD)
    await dialog.get_by_role("button", name="Confirm").click()
    await expect(dialog).to_be_hidden()
    await expect(section.locator('[data-bind="mfa-qr"] svg')).to_be_visible()
    reauthenticated = time.time()
    await expect(section.locator('[data-bind="mfa-secret"]')).not_to_be_empty()
    # Cancelling the prompt gives up quietly: the call is refused, nothing is shown.
    await section.get_by_role("button", name="Cancel").click()
    await await_until(
        lambda: time.time() - reauthenticated > RECENT + 1.5,
        within=RECENT + 10,
        what="the re-authentication is no longer recent",
        step=0.2,
    )
    await section.get_by_role("button", name="Set up an authenticator app").click()
    await expect(password).to_be_focused()
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(section.get_by_role("button", name="Set up an authenticator app")).to_be_visible()
    await expect(page.locator("[data-notice]:not([hidden])")).to_have_count(0)


async def test_a_challenge_used_up_by_wrong_codes_sends_back_to_sign_in(
    stale_server: Server, new_context: NewContext
) -> None:
    """Each wrong code is explained and the challenge kept, up to five; then the challenge
    is gone and the page sends the browser back to /login, which says why."""
    email = new_email("mfa-gone")
    app = await _enrolled_by_api(stale_server, email)
    page = await (await new_context()).new_page()
    await _password_step(page, stale_server.url, email)
    code_input = page.get_by_label(CODE_LABEL)
    for _ in range(4):
        await code_input.fill(app.wrong())
        await page.get_by_role("button", name="Verify").click()
        await expect(page.locator('[data-notice="invalid-code"]')).to_be_visible()
        await expect(code_input).to_have_value("")
        await expect(code_input).to_be_focused()
    await code_input.fill(app.wrong())
    await page.get_by_role("button", name="Verify").click()
    await page.wait_for_url(f"{stale_server.url}/login?error=mfa-challenge-invalid")
    await expect(page.locator('[data-notice="mfa-challenge-invalid"]')).to_be_visible()
    await screenshot(page, "login-mfa-challenge-gone")
    # Signing in again works: a new challenge, and the right code.
    await _password_step(page, stale_server.url, email)
    await code_input.fill(await app.code())
    await page.get_by_role("button", name="Verify").click()
    await page.wait_for_url(f"{stale_server.url}/account")
