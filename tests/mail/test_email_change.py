"""E-mail change: re-authentication, a link to the new address, a notice to the old one
with a way to report it; sessions unaffected."""

from __future__ import annotations

import httpx
from mail_support import BEARER, UNKNOWN, SmtpInbox, link_of, settled, text_of

from tokenward.runtime import Tokenward
from tw_accounts import PASSWORD, new_email

INVALID = "urn:tokenward:problem:token-invalid"


async def _signed_in(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    email = new_email()
    r = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201
    r = await client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
    )
    return email, {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_change_is_confirmed_from_the_new_address_and_the_old_one_is_told(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward
) -> None:
    old, auth = await _signed_in(client)
    new = new_email()
    r = await client.post(
        "/auth/email/change", json={"new_email": new.upper(), "password": PASSWORD}, headers=auth
    )
    assert r.status_code == 202, r.text
    [mail] = await smtp.wait_for(new)
    page, token = link_of(mail)
    assert page == "/confirm-email"
    # Nothing changes before the link is followed.
    assert (await client.get("/auth/me", headers=auth)).json()["email"] == old

    r = await client.post("/auth/email/change/confirm", json={"token": token})
    assert r.status_code == 200, r.text
    assert r.json() == {"email": new}
    me = await client.get("/auth/me", headers=auth)  # the session is unaffected
    assert me.status_code == 200
    assert me.json()["email"] == new
    assert me.json()["email_verified"] is True
    again = await client.post("/auth/email/change/confirm", json={"token": token})
    assert again.status_code == 400
    assert again.json()["type"] == INVALID

    login_new = await client.post("/auth/login", json={"email": new, "password": PASSWORD})
    assert login_new.status_code == 200
    login_old = await client.post("/auth/login", json={"email": old, "password": PASSWORD})
    assert login_old.status_code == 401

    await settled(tw)
    notices = [m for m in smtp.to(old) if "was changed" in str(m["Subject"])]
    assert len(notices) == 1
    text = text_of(notices[0])
    assert new in text
    assert "https://tokenward.test/forgot-password" in text
    kinds = [e["kind"] for e in (await client.get("/auth/events", headers=auth)).json()]
    assert "email.changed" in kinds


async def test_change_needs_the_password(client: httpx.AsyncClient, smtp: SmtpInbox) -> None:
    _, auth = await _signed_in(client)
    new = new_email()
    r = await client.post(
        "/auth/email/change", json={"new_email": new, "password": "wrong wrong wrong"}, headers=auth
    )
    assert r.status_code == 401
    assert r.json()["type"] == "urn:tokenward:problem:invalid-credentials"
    assert (await client.get("/auth/me", headers=auth)).status_code == 200
    assert smtp.to(new) == []


async def test_change_errors(client: httpx.AsyncClient) -> None:
    """409 for a taken address, 422 for a malformed one or the same one, 401 without a
    session, 422 for a malformed body."""
    taken, _ = await _signed_in(client)
    email, auth = await _signed_in(client)
    for new_address, status in (
        (taken, 409),
        (taken.upper(), 409),
        ("no-at-sign", 422),
        (email, 422),
    ):
        r = await client.post(
            "/auth/email/change",
            json={"new_email": new_address, "password": PASSWORD},
            headers=auth,
        )
        assert r.status_code == status, (new_address, r.text)
    r = await client.post(
        "/auth/email/change", json={"new_email": new_email(), "password": PASSWORD}
    )
    assert r.status_code == 401
    for body in ({}, {"new_email": new_email()}, {"new_email": 1, "password": PASSWORD}):
        assert (await client.post("/auth/email/change", json=body, headers=auth)).status_code == 422


async def test_an_address_taken_meanwhile_is_409_at_confirmation(
    client: httpx.AsyncClient, smtp: SmtpInbox
) -> None:
    _, auth = await _signed_in(client)
    new = new_email()
    r = await client.post(
        "/auth/email/change", json={"new_email": new, "password": PASSWORD}, headers=auth
    )
    assert r.status_code == 202
    _, token = link_of((await smtp.wait_for(new))[0])
    r = await client.post("/auth/register", json={"email": new, "password": PASSWORD})
    assert r.status_code == 201
    r = await client.post("/auth/email/change/confirm", json={"token": token})
    assert r.status_code == 409
    assert r.json()["type"] == "urn:tokenward:problem:conflict"


async def test_confirm_bad_tokens(client: httpx.AsyncClient) -> None:
    for token in ("", "D" * 43, "short", UNKNOWN):
        r = await client.post("/auth/email/change/confirm", json={"token": token})
        assert r.status_code == 400
        assert r.json()["type"] == INVALID
    assert (await client.post("/auth/email/change/confirm", json={})).status_code == 422


async def test_no_redis_value_holds_either_address(
    client: httpx.AsyncClient, smtp: SmtpInbox, redis: object
) -> None:
    """The pending change is stored, but not the addresses in the clear (a Redis dump must
    not list users' addresses): the new one is sealed under the link's token."""
    import redis.asyncio as aioredis

    assert isinstance(redis, aioredis.Redis)
    old, auth = await _signed_in(client)
    new = new_email()
    r = await client.post(
        "/auth/email/change", json={"new_email": new, "password": PASSWORD}, headers=auth
    )
    assert r.status_code == 202
    await smtp.wait_for(new)
    async for key in redis.scan_iter(match="tw:{lk:*", count=1000):
        value = (
            await redis.hgetall(key) if await redis.type(key) == "hash" else await redis.get(key)
        )
        assert old not in str(value)
        assert new not in str(value)


async def test_cookie_clients_need_the_csrf_header(
    client: httpx.AsyncClient, smtp: SmtpInbox
) -> None:
    """A cookie session's change follows the rules of every protected route: without the
    double-submit header 403 ``csrf`` and no mail; with it 202."""
    email = new_email()
    r = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201
    r = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200
    new = new_email()
    body = {"new_email": new, "password": PASSWORD}
    refused = await client.post("/auth/email/change", json=body)
    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:tokenward:problem:csrf"
    token = client.cookies.get("__Host-csrf_token")
    assert token
    headers = {"X-CSRF-Token": token, "Origin": "https://tokenward.test"}
    assert (await client.post("/auth/email/change", json=body, headers=headers)).status_code == 202
    await smtp.wait_for(new)
    resend = await client.post("/auth/email/verify/resend", json={})
    assert resend.status_code == 403
    assert (
        await client.post("/auth/email/verify/resend", json={}, headers=headers)
    ).status_code == 202
