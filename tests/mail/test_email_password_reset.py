"""Forgotten passwords: enumeration-safe requests, single-use reset links, every session
ended, the race of two resets with one link (real concurrency), throttling, outages."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
import redis.asyncio as aioredis
from mail_support import (
    BEARER,
    UNKNOWN,
    MakeMailTw,
    SmtpInbox,
    isolated_client,
    link_of,
    settled,
    text_of,
)

from ports import free_port
from tokenward.runtime import Tokenward
from tw_accounts import PASSWORD, new_email

INVALID = "urn:tokenward:problem:token-invalid"
NEW_PASSWORD = "copper lantern 77 meadow"
#: Headers that differ between any two responses whatever they answer.
_VOLATILE = {"date", "x-request-id"}


async def _account(client: httpx.AsyncClient, email: str | None = None) -> str:
    email = email or new_email()
    r = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return email


async def _login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post(
        "/auth/login", json={"email": email, "password": password}, headers=BEARER
    )


async def _reset_token(client: httpx.AsyncClient, smtp: SmtpInbox, email: str) -> str:
    before = len([m for m in smtp.to(email) if "Reset" in str(m["Subject"])])
    r = await client.post("/auth/password/forgot", json={"email": email})
    assert r.status_code == 202, r.text

    async def arrived() -> bool:
        return len([m for m in smtp.to(email) if "Reset" in str(m["Subject"])]) > before

    from waiting import await_until

    await await_until(arrived, within=10.0, what="the reset mail")
    mail = [m for m in smtp.to(email) if "Reset" in str(m["Subject"])][-1]
    page, token = link_of(mail)
    assert page == "/reset-password"
    return token


def _shape(r: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in r.headers.items() if k.lower() not in _VOLATILE}
    return r.status_code, r.content, headers


async def test_forgot_answers_the_same_whether_or_not_the_account_exists(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward
) -> None:
    """Status, body and headers are identical; only the existing account gets a mail."""
    email = await _account(client)
    nobody = new_email()
    known = await client.post("/auth/password/forgot", json={"email": email})
    unknown = await client.post("/auth/password/forgot", json={"email": nobody})
    assert known.status_code == 202
    assert _shape(known) == _shape(unknown)
    assert known.json() == {"status": "accepted"}
    await settled(tw)
    assert any("Reset" in str(m["Subject"]) for m in smtp.to(email))
    assert smtp.to(nobody) == []


async def test_forgot_throttles_every_address_alike(mail_tw: MakeMailTw) -> None:
    """Past the per-address limit: 429 for an address with or without an account, the same
    problem; a fresh address is still answered 202."""
    tw = await mail_tw(mail_address_limit=3)
    async with isolated_client(tw) as client:
        email = await _account(client)
        answers = {}
        for address in (email, new_email()):
            for _ in range(3):
                assert (
                    await client.post("/auth/password/forgot", json={"email": address})
                ).status_code == 202
            refused = await client.post("/auth/password/forgot", json={"email": address.upper()})
            assert refused.status_code == 429
            answers[address] = (refused.json()["type"], refused.json()["detail"])
        assert len(set(answers.values())) == 1
        fresh = await client.post("/auth/password/forgot", json={"email": new_email()})
        assert fresh.status_code == 202


async def test_forgot_throttles_per_client_address(mail_tw: MakeMailTw) -> None:
    tw = await mail_tw(mail_ip_limit=2)
    async with isolated_client(tw) as client:
        for _ in range(2):
            r = await client.post("/auth/password/forgot", json={"email": new_email()})
            assert r.status_code == 202
        r = await client.post("/auth/password/forgot", json={"email": new_email()})
        assert r.status_code == 429


async def test_a_reset_ends_every_session_and_mails_a_notice(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward
) -> None:
    """Forget, read the mail, reset: the other device is signed out (access and refresh),
    the old password stops working, the new one works, ``password.reset`` is recorded and
    the owner gets a notice; the link works once."""
    email = await _account(client)
    other = (await _login(client, email)).json()
    other_auth = {"Authorization": f"Bearer {other['access_token']}"}
    assert (await client.get("/auth/me", headers=other_auth)).status_code == 200

    token = await _reset_token(client, smtp, email)
    r = await client.post(
        "/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert r.status_code == 204, r.text
    assert (await client.get("/auth/me", headers=other_auth)).status_code == 401
    refresh = await client.post(
        "/auth/refresh", json={"refresh_token": other["refresh_token"]}, headers=BEARER
    )
    assert refresh.status_code == 401
    assert (await _login(client, email)).status_code == 401
    fresh = await _login(client, email, NEW_PASSWORD)
    assert fresh.status_code == 200
    again = await client.post(
        "/auth/password/reset", json={"token": token, "new_password": "another 55 fine phrase"}
    )
    assert again.status_code == 400
    assert again.json()["type"] == INVALID

    await settled(tw)
    auth = {"Authorization": f"Bearer {fresh.json()['access_token']}"}
    kinds = [e["kind"] for e in (await client.get("/auth/events", headers=auth)).json()]
    assert "password.reset" in kinds
    notices = [m for m in smtp.to(email) if m["Subject"] == "Your password was reset"]
    assert len(notices) == 1
    assert "https://tokenward.test/forgot-password" in text_of(notices[0])
    # The link reached the mailbox: the address counts as verified now.
    me = (await client.get("/auth/me", headers=auth)).json()
    assert me["email_verified"] is True


async def test_the_reset_link_is_stored_hashed_for_30_minutes(
    client: httpx.AsyncClient, smtp: SmtpInbox, redis: aioredis.Redis
) -> None:
    email = await _account(client)
    token = await _reset_token(client, smtp, email)
    key = f"tw:{{lk:{token.partition('.')[0]}}}:reset"
    assert 1800 - 60 < await redis.ttl(key) <= 1800
    assert await redis.hget(key, "d") == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(await redis.hgetall(key))


async def test_a_newer_link_invalidates_the_older(
    client: httpx.AsyncClient, smtp: SmtpInbox
) -> None:
    email = await _account(client)
    first = await _reset_token(client, smtp, email)
    second = await _reset_token(client, smtp, email)
    r = await client.post(
        "/auth/password/reset", json={"token": first, "new_password": NEW_PASSWORD}
    )
    assert r.status_code == 400
    assert r.json()["type"] == INVALID
    r = await client.post(
        "/auth/password/reset", json={"token": second, "new_password": NEW_PASSWORD}
    )
    assert r.status_code == 204


async def test_a_password_change_kills_an_outstanding_link(
    client: httpx.AsyncClient, smtp: SmtpInbox
) -> None:
    email = await _account(client)
    token = await _reset_token(client, smtp, email)
    auth = {"Authorization": f"Bearer {(await _login(client, email)).json()['access_token']}"}
    r = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers={**auth, **BEARER},
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/auth/password/reset", json={"token": token, "new_password": "yet another 99 phrase"}
    )
    assert r.status_code == 400


async def test_the_policy_applies_and_a_refusal_keeps_the_link(
    client: httpx.AsyncClient, smtp: SmtpInbox
) -> None:
    """422 names the failed rule; nothing changed, the sessions live on, the link still
    works."""
    email = await _account(client)
    auth = {"Authorization": f"Bearer {(await _login(client, email)).json()['access_token']}"}
    token = await _reset_token(client, smtp, email)
    for weak, rule in (("short", "too-short"), ("password1234", "common-variant")):
        r = await client.post("/auth/password/reset", json={"token": token, "new_password": weak})
        assert r.status_code == 422, r.text
        assert r.json()["rule"] == rule
    assert (await client.get("/auth/me", headers=auth)).status_code == 200
    r = await client.post(
        "/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert r.status_code == 204


async def test_bad_reset_requests(client: httpx.AsyncClient) -> None:
    for token in ("", "nope", "B" * 43, UNKNOWN):
        r = await client.post(
            "/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD}
        )
        assert r.status_code == 400, r.text
        assert r.json()["type"] == INVALID
    for body in (
        {},
        {"token": UNKNOWN},
        {"new_password": NEW_PASSWORD},
        {"token": 1, "new_password": "x"},
    ):
        assert (await client.post("/auth/password/reset", json=body)).status_code == 422
    for body in ({}, {"email": 3}, {"email": "x" * 2000}):
        assert (await client.post("/auth/password/forgot", json=body)).status_code == 422
    r = await client.post("/auth/password/forgot", json={"email": "not-an-address"})
    assert r.status_code == 422
    assert r.json()["rule"] == "email"
    r = await client.post(
        "/auth/password/forgot", content=b"email=a", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415


ROUNDS = 15


async def test_two_resets_racing_with_one_link_exactly_one_wins(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward
) -> None:
    """Real concurrency, many rounds: each round, two resets with one link and different
    passwords run at once; exactly one is 204, the other 400, and the password is the
    winner's."""
    email = await _account(client)
    current = PASSWORD
    for n in range(ROUNDS):
        token = await _reset_token(client, smtp, email)
        passwords = [f"round {n} first 42 phrase", f"round {n} second 42 phrase"]
        answers = await asyncio.gather(
            *(
                client.post("/auth/password/reset", json={"token": token, "new_password": p})
                for p in passwords
            )
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [204, 400], (n, [r.text for r in answers])
        winner = passwords[[r.status_code for r in answers].index(204)]
        loser = passwords[1 - passwords.index(winner)]
        assert (await _login(client, email, winner)).status_code == 200
        assert (await _login(client, email, loser)).status_code == 401
        current = winner
    assert current != PASSWORD


@pytest.fixture
async def tw_without_database(mail_tw: MakeMailTw) -> Tokenward:
    url = f"postgresql+asyncpg://u@127.0.0.1:{free_port()}/db"
    return await mail_tw(database_url=url, migrate=False, backend_timeout=0.5)


async def test_forgot_and_reset_without_the_database_are_503(
    tw_without_database: Tokenward,
) -> None:
    async with isolated_client(tw_without_database) as client:
        r = await client.post("/auth/password/forgot", json={"email": new_email()})
        assert r.status_code == 503
        assert r.json()["type"] == "urn:tokenward:problem:unavailable"


@pytest.fixture
async def tw_without_redis(mail_tw: MakeMailTw) -> Tokenward:
    url = f"redis://127.0.0.1:{free_port()}/0"
    return await asyncio.wait_for(mail_tw(redis_url=url, backend_timeout=0.5), 10)


async def test_every_email_route_without_redis_is_503(tw_without_redis: Tokenward) -> None:
    async with isolated_client(tw_without_redis) as client:
        for path, body in (
            ("/auth/password/forgot", {"email": new_email()}),
            ("/auth/password/reset", {"token": UNKNOWN, "new_password": NEW_PASSWORD}),
            ("/auth/email/verify", {"token": UNKNOWN}),
            ("/auth/email/verify/resend", {"email": new_email()}),
            ("/auth/email/change/confirm", {"token": UNKNOWN}),
        ):
            r = await asyncio.wait_for(client.post(path, json=body), 10)
            assert r.status_code == 503, (path, r.text)
            assert int(r.headers["retry-after"]) >= 1
