"""The security notice of a used recovery code (docs/mfa.md, docs/email.md): mailed off the
request path, with the number of codes left, and turned off by
``TOKENWARD_NOTIFY_RECOVERY_CODE_USED=false``."""

from __future__ import annotations

import httpx
from mail_support import BEARER, MakeMailTw, SmtpInbox, isolated_client, settled, text_of

from tokenward.clock import FrozenClock
from tokenward.mfa import TOTP_PERIOD, totp_code
from tokenward.runtime import Tokenward
from tw_accounts import PASSWORD, new_email

SUBJECT = "A recovery code of your account was used"


async def _login(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
    )


async def _enrolled(tw: Tokenward, client: httpx.AsyncClient) -> tuple[str, list[str]]:
    """A new account with an authenticator app: its address and recovery codes."""
    assert isinstance(tw.clock, FrozenClock)
    email = new_email()
    r = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    auth = {"Authorization": f"Bearer {(await _login(client, email)).json()['access_token']}"}
    secret = (await client.post("/auth/mfa/totp/enroll", headers=auth)).json()["secret"]
    code = totp_code(secret, tw.clock.now() // TOTP_PERIOD)
    r = await client.post("/auth/mfa/totp/confirm", json={"code": code}, headers=auth)
    assert r.status_code == 200, r.text
    return email, r.json()["recovery_codes"]


async def _sign_in_with_recovery(client: httpx.AsyncClient, email: str, code: str) -> None:
    challenge = (await _login(client, email)).json()["challenge"]
    r = await client.post(
        "/auth/login/mfa", json={"challenge": challenge, "code": code}, headers=BEARER
    )
    assert r.status_code == 200, r.text
    assert r.json()["recovery_codes_left"] == 9


async def test_a_used_recovery_code_is_announced_with_the_codes_left(
    mail_tw: MakeMailTw, smtp: SmtpInbox
) -> None:
    tw = await mail_tw(notify_new_device="false")
    async with isolated_client(tw) as client:
        email, codes = await _enrolled(tw, client)
        await settled(tw)
        assert SUBJECT not in [str(m["Subject"]) for m in smtp.to(email)]
        await _sign_in_with_recovery(client, email, codes[0])
        await settled(tw)
    mails = [m for m in smtp.to(email) if str(m["Subject"]) == SUBJECT]
    assert len(mails) == 1
    text = text_of(mails[0])
    assert "You have 9 unused recovery codes left." in " ".join(text.split())
    assert codes[0] not in text  # the code itself is never mailed


async def test_the_recovery_code_notice_can_be_turned_off(
    mail_tw: MakeMailTw, smtp: SmtpInbox
) -> None:
    tw = await mail_tw(notify_new_device="false", notify_recovery_code_used="false")
    async with isolated_client(tw) as client:
        email, codes = await _enrolled(tw, client)
        await _sign_in_with_recovery(client, email, codes[0])
        await settled(tw)
    assert SUBJECT not in [str(m["Subject"]) for m in smtp.to(email)]
