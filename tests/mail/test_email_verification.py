"""E-mail verification through a real SMTP server: register, read the mail, follow the link."""

from __future__ import annotations

import hashlib

import httpx
import jwt
import redis.asyncio as aioredis
from mail_support import BEARER, UNKNOWN, MakeMailTw, SmtpInbox, isolated_client, link_of, settled

from tokenward.runtime import Tokenward
from tw_accounts import PASSWORD, new_email

INVALID = "urn:tokenward:problem:token-invalid"


async def _register(client: httpx.AsyncClient, email: str) -> None:
    r = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert r.json()["email_verified"] is False


async def _login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    r = await client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
    )
    assert r.status_code == 200, r.text
    body: dict[str, str] = r.json()
    return body


def _claims(token: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def test_registration_mails_a_link_that_verifies_once(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward, redis: aioredis.Redis
) -> None:
    """The whole journey: the mail (text and HTML, From set) carries a link to
    /verify-email; its token verifies the address once; /auth/me and the access tokens
    (login and refresh) then say ``email_verified: true``."""
    email = new_email()
    await _register(client, email)
    [mail] = await smtp.wait_for(email)
    assert mail["Subject"] == "Confirm your e-mail address"
    assert "no-reply@tokenward.test" in str(mail["From"])
    page, token = link_of(mail)
    assert page == "/verify-email"

    before = await _login(client, email)
    assert _claims(before["access_token"])["email_verified"] is False
    auth = {"Authorization": f"Bearer {before['access_token']}"}
    assert (await client.get("/auth/me", headers=auth)).json()["email_verified"] is False

    r = await client.post("/auth/email/verify", json={"token": token})
    assert r.status_code == 200, r.text
    assert r.json() == {"email": email, "email_verified": True}
    again = await client.post("/auth/email/verify", json={"token": token})
    assert again.status_code == 400
    assert again.json()["type"] == INVALID

    me = (await client.get("/auth/me", headers=auth)).json()
    assert me["email_verified"] is True
    # What refreshes read for the claim expires, as every key does: with the longest session.
    marker_ttl = await redis.ttl(f"tw:{{u:{me['id']}}}:verified")
    assert tw.settings.session_max_ttl - 60 < marker_ttl <= tw.settings.session_max_ttl
    r = await client.post(
        "/auth/refresh", json={"refresh_token": before["refresh_token"]}, headers=BEARER
    )
    assert r.status_code == 200, r.text
    assert _claims(r.json()["access_token"])["email_verified"] is True
    # A login renews the marker (with the session, in one script): gone, it comes back.
    await redis.delete(f"tw:{{u:{me['id']}}}:verified")
    after = await _login(client, email)
    assert _claims(after["access_token"])["email_verified"] is True
    marker_ttl = await redis.ttl(f"tw:{{u:{me['id']}}}:verified")
    assert tw.settings.session_max_ttl - 60 < marker_ttl <= tw.settings.session_max_ttl
    r = await client.post(
        "/auth/refresh", json={"refresh_token": after["refresh_token"]}, headers=BEARER
    )
    assert r.status_code == 200, r.text
    assert _claims(r.json()["access_token"])["email_verified"] is True
    await settled(tw)
    kinds = [e["kind"] for e in (await client.get("/auth/events", headers=auth)).json()]
    assert "email.verified" in kinds


async def test_only_the_digest_is_stored_with_a_24_hour_ttl(
    client: httpx.AsyncClient, smtp: SmtpInbox, redis: aioredis.Redis
) -> None:
    email = new_email()
    await _register(client, email)
    _, token = link_of((await smtp.wait_for(email))[0])
    digest = hashlib.sha256(token.encode()).hexdigest()
    uid = token.partition(".")[0]
    key = f"tw:{{lk:{uid}}}:verify"
    keys = [k async for k in redis.scan_iter(match=f"tw:{{lk:{uid}}}:*", count=1000)]
    assert keys == [key]  # the user's one link, in the user's own hash slot
    assert await redis.hget(key, "d") == digest
    for key in keys:
        kind = await redis.type(key)
        value = await redis.hgetall(key) if kind == "hash" else await redis.get(key)
        assert token not in str(value)
        assert await redis.ttl(key) > 0
    ttl = await redis.ttl(key)
    assert 24 * 3600 - 60 < ttl <= 24 * 3600


async def test_a_newer_link_supersedes_the_older_one(
    client: httpx.AsyncClient, smtp: SmtpInbox
) -> None:
    """Signed in, ``resend`` with ``{}`` mails a new link; the first one stops working."""
    email = new_email()
    await _register(client, email)
    _, first = link_of((await smtp.wait_for(email))[0])
    auth = {"Authorization": f"Bearer {(await _login(client, email))['access_token']}"}
    r = await client.post("/auth/email/verify/resend", json={}, headers=auth)
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted"}
    _, second = link_of((await smtp.wait_for(email, 2))[1])
    assert second != first
    old = await client.post("/auth/email/verify", json={"token": first})
    assert old.status_code == 400
    assert old.json()["type"] == INVALID
    assert (await client.post("/auth/email/verify", json={"token": second})).status_code == 200


async def test_resend_by_address_is_the_same_whether_or_not_the_account_exists(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward
) -> None:
    email = new_email()
    await _register(client, email)
    await smtp.wait_for(email)
    known = await client.post("/auth/email/verify/resend", json={"email": email})
    unknown = await client.post("/auth/email/verify/resend", json={"email": new_email()})
    assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
    assert known.status_code == 202
    await smtp.wait_for(email, 2)
    await settled(tw)
    assert len(smtp.to(email)) == 2


async def test_resend_is_throttled_per_address(mail_tw: MakeMailTw, smtp: SmtpInbox) -> None:
    """Past ``TOKENWARD_MAIL_ADDRESS_LIMIT`` 429, with Retry-After, for an address with or
    without an account alike; another address is not affected."""
    tw = await mail_tw(mail_address_limit=2)
    async with isolated_client(tw) as client:
        email = new_email()
        await _register(client, email)
        for address in (email, new_email()):
            for _ in range(2):
                ok = await client.post("/auth/email/verify/resend", json={"email": address})
                assert ok.status_code == 202
            refused = await client.post("/auth/email/verify/resend", json={"email": address})
            assert refused.status_code == 429
            assert refused.json()["type"] == "urn:tokenward:problem:rate-limited"
            assert int(refused.headers["retry-after"]) >= 1
        auth = {"Authorization": f"Bearer {(await _login(client, email))['access_token']}"}
        signed_in = await client.post("/auth/email/verify/resend", json={}, headers=auth)
        assert signed_in.status_code == 429


async def test_bad_tokens_are_one_400_and_bad_bodies_422(client: httpx.AsyncClient) -> None:
    for token in ("", "x", "A" * 43, "é" * 43, "A" * 500, UNKNOWN):
        r = await client.post("/auth/email/verify", json={"token": token})
        assert r.status_code == 400, (token, r.text)
        assert r.json()["type"] == INVALID
    for body in ({}, {"token": 5}, {"token": None}, {"token": "A" * 513}):
        r = await client.post("/auth/email/verify", json=body)
        assert r.status_code == 422, (body, r.text)
    r = await client.post(
        "/auth/email/verify", content=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    r = await client.post("/auth/email/verify/resend", json={"email": "not an address"})
    assert r.status_code == 422
    assert r.json()["rule"] == "email"
    for empty in ({}, {"email": None}):
        r = await client.post("/auth/email/verify/resend", json=empty)
        assert r.status_code == 401  # no session and no address
    r = await client.post("/auth/email/verify/resend", json={"email": "x" * 1025})
    assert r.status_code == 422


async def test_a_foreign_origin_cannot_post_a_token(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/auth/email/verify", json={"token": UNKNOWN}, headers={"Origin": "https://evil.test"}
    )
    assert r.status_code == 403
    assert r.json()["type"] == "urn:tokenward:problem:csrf"


async def test_required_verification_refuses_login_until_verified(
    mail_tw: MakeMailTw, smtp: SmtpInbox
) -> None:
    """``TOKENWARD_REQUIRE_VERIFIED_EMAIL=true``: the right password of an unverified
    account gets 403 ``email-not-verified`` with where to resend; a wrong one still 401."""
    tw = await mail_tw(require_verified_email="true")
    async with isolated_client(tw) as client:
        email = new_email()
        await _register(client, email)
        r = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 403
        problem = r.json()
        assert problem["type"] == "urn:tokenward:problem:email-not-verified"
        assert problem["resend"] == "/auth/email/verify/resend"
        assert not r.headers.get_list("set-cookie")
        wrong = await client.post("/auth/login", json={"email": email, "password": "nope" * 4})
        assert wrong.status_code == 401
        _, token = link_of((await smtp.wait_for(email))[0])
        assert (await client.post("/auth/email/verify", json={"token": token})).status_code == 200
        await _login(client, email)


async def test_verification_is_off_by_default(client: httpx.AsyncClient) -> None:
    email = new_email()
    await _register(client, email)
    await _login(client, email)


async def test_a_no_script_login_form_is_sent_back_with_the_problem(
    mail_tw: MakeMailTw,
) -> None:
    """The sign-in form (no JavaScript) of an unverified account with verification required
    is redirected to the sign-in page naming the problem, and gets no cookies."""
    tw = await mail_tw(require_verified_email="true")
    async with isolated_client(tw) as client:
        email = new_email()
        await _register(client, email)
        r = await client.post(
            "/auth/login",
            data={"email": email, "password": PASSWORD},
            headers={"Origin": "https://tokenward.test"},
        )
        assert r.status_code == 303
        assert r.headers["location"] == "/login?error=email-not-verified"
        assert not r.headers.get_list("set-cookie")
