"""The MFA pages' server side and the API bits they need (docs/mfa.md): the code page
without JavaScript (its challenge cookie), the sign-in method of each session in
``GET /auth/sessions``, one pending enrolment secret under concurrency, and the recovery
code used in a re-authentication recorded as such."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from http_support import GENEROUS_LIMITS, PASSWORD, MakeTw, isolated_client
from sqlalchemy import select
from test_mfa import Mfa

from tokenward.clock import FrozenClock
from tokenward.events import EventKind
from tokenward.stores.sql_mfa import factors_table
from tw_accounts import BEARER

PAGE_COOKIE = "__Secure-mfa_login"


@pytest.fixture
async def mfa(make_tw: MakeTw) -> Any:
    clock = FrozenClock(int(time.time()))
    tw = await make_tw(clock=clock, **GENEROUS_LIMITS)
    async with isolated_client(tw) as client:
        yield Mfa(tw, clock, client)


def _hidden_challenges(page: str) -> list[str]:
    return re.findall(r'name="challenge" value="([^"]*)"', page)


def _revealed(page: str) -> set[str]:
    return set(re.findall(r'data-notice="([a-z-]+)"(?! hidden)', page))


async def test_the_code_page_works_without_javascript(mfa: Mfa) -> None:
    """The sign-in form (/login) sends an MFA user on to /login/mfa with the challenge in
    a cookie only that page gets; the page writes it into its forms, which post to the API:
    a wrong code comes back explained, the right one signs in and drops the cookie."""
    email, secret, _ = await mfa.enrolled()
    r = await mfa.client.post(
        "/login", data={"email": email, "password": PASSWORD}, follow_redirects=False
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/login/mfa"
    assert PAGE_COOKIE in mfa.client.cookies
    assert not {"__Host-access_token", "__Secure-refresh_token"} & set(mfa.client.cookies)
    challenge = mfa.client.cookies[PAGE_COOKIE].removeprefix("v.")
    page = (await mfa.client.get("/login/mfa")).text
    assert _hidden_challenges(page) == [challenge, challenge]
    assert 'autocomplete="one-time-code"' in page
    assert 'inputmode="numeric"' in page
    assert 'action="/auth/login/mfa"' in page

    wrong = "111111" if mfa.code(secret) != "111111" else "222222"
    r = await mfa.client.post(
        "/auth/login/mfa", data={"challenge": challenge, "code": wrong}, follow_redirects=False
    )
    assert r.status_code == 303
    location = r.headers["location"]
    assert location.startswith("/login/mfa?error=invalid-code#")
    r = await mfa.client.get(location.split("#", 1)[0])  # a browser never sends the fragment
    assert _revealed(r.text) == {"invalid-code"}
    assert _hidden_challenges(r.text) == [challenge, challenge]

    r = await mfa.client.post(
        "/auth/login/mfa",
        data={"challenge": challenge, "code": mfa.code(secret)},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/account"
    assert PAGE_COOKIE not in mfa.client.cookies
    assert (await mfa.client.get("/auth/me")).status_code == 200


async def test_a_stale_plain_password_change_says_what_it_needs(mfa: Mfa) -> None:
    """Without JavaScript there is no prompt: a password change by a user with a factor,
    long after the sign-in, shows the account page with what to do."""
    email, secret, _ = await mfa.enrolled()
    challenge = (await mfa.challenge(email, bearer=False))["challenge"]
    r = await mfa.second(challenge, mfa.code(secret), bearer=False)
    assert r.status_code == 200, r.text
    mfa.clock.advance(mfa.tw.settings.reauth_max_age + 1)
    r = await mfa.client.post(
        "/account/password",
        data={
            "csrf": mfa.client.cookies["__Host-csrf_token"],
            "current_password": PASSWORD,
            "new_password": "plum orchard 31 harbour",
        },
    )
    assert r.status_code == 403
    assert _revealed(r.text) == {"reauthentication-required"}


async def test_the_code_page_without_a_challenge_says_so(mfa: Mfa) -> None:
    page = (await mfa.client.get("/login/mfa")).text
    assert _hidden_challenges(page) == ["", ""]
    recovery = (await mfa.client.get("/login/mfa?use=recovery")).text
    # ?use=recovery (the plain page's "Use a recovery code" link) shows that form instead.
    assert 'data-section="code" hidden' in recovery
    assert 'data-section="recovery" hidden' not in recovery
    assert 'data-section="recovery" hidden' in page


async def test_the_plain_page_says_enrolment_needs_javascript(make_tw: MakeTw) -> None:
    clock = FrozenClock(int(time.time()))
    tw = await make_tw(clock=clock, mfa="required", **GENEROUS_LIMITS)
    async with isolated_client(tw) as client:
        email = await Mfa(tw, clock, client).accounts.register()
        r = await client.post(
            "/login", data={"email": email, "password": PASSWORD}, follow_redirects=False
        )
        assert r.headers["location"] == "/login/mfa"
        assert client.cookies[PAGE_COOKIE].startswith("e.")
        page = (await client.get("/login/mfa")).text
        assert _revealed(page) == {"enroll-needs-script"}
        # The API's own form login says so in the fragment too.
        r = await client.post(
            "/auth/login", data={"email": email, "password": PASSWORD}, follow_redirects=False
        )
        assert r.headers["location"].endswith("&enroll=1")


async def test_sessions_say_how_they_signed_in(mfa: Mfa) -> None:
    email, secret, codes = await mfa.enrolled()
    started = mfa.clock.now()
    second = await mfa.second((await mfa.challenge(email))["challenge"], mfa.code(secret))
    auth = {"Authorization": f"Bearer {second.json()['access_token']}", **BEARER}
    rows = (await mfa.client.get("/auth/sessions", headers=auth)).json()
    by_current = {row["current"]: row for row in rows}
    assert by_current[True]["amr"] == ["pwd", "otp", "mfa"]
    assert by_current[True]["second_factor"] == "totp"
    # The enrolling session signed in with a password alone.
    assert by_current[False]["amr"] == ["pwd"]
    assert by_current[False]["second_factor"] is None
    assert by_current[False]["auth_time"] == by_current[False]["created_at"]
    # A step-up shows up with its time.
    mfa.clock.advance(90)
    r = await mfa.client.post("/auth/reauthenticate", json={"code": codes[0]}, headers=auth)
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['access_token']}", **BEARER}
    rows = (await mfa.client.get("/auth/sessions", headers=auth)).json()
    current = next(row for row in rows if row["current"])
    assert current["amr"] == ["pwd", "otp", "mfa"]
    assert current["second_factor"] == "recovery"
    assert current["auth_time"] != current["created_at"]
    assert current["auth_time"].startswith(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(started + 90))
    )
    # The recovery code spent on the re-authentication is recorded with the codes left.
    events = (await mfa.client.get("/auth/events", headers=auth)).json()
    used = [e for e in events if e["kind"] == EventKind.RECOVERY_CODE_USED.value]
    assert [e["detail"] for e in used] == [{"left": 9}]


async def test_two_tabs_enrolling_on_one_challenge_get_one_secret(make_tw: MakeTw) -> None:
    """``required``: two concurrent calls of the enrolment step on one challenge (two tabs,
    a reload) show the same secret, so whichever QR code was scanned confirms it."""
    clock = FrozenClock(int(time.time()))
    tw = await make_tw(clock=clock, mfa="required", **GENEROUS_LIMITS)
    async with isolated_client(tw) as client:
        mfa = Mfa(tw, clock, client)
        email = await mfa.accounts.register()
        challenge = (await mfa.challenge(email))["challenge"]

        async def enrol() -> str:
            r = await client.post(
                "/auth/login/mfa/enroll", json={"challenge": challenge}, headers=BEARER
            )
            assert r.status_code == 200, r.text
            return str(r.json()["secret"])

        secrets = await asyncio.gather(*(enrol() for _ in range(6)))
        assert len(set(secrets)) == 1
        r = await mfa.second(challenge, mfa.code(secrets[0]))
        assert r.status_code == 200, r.text


async def test_concurrent_enrolment_starts_leave_one_pending(mfa: Mfa) -> None:
    """Two enrolment starts at once (two tabs of the account page): one pending secret is
    left, the last one shown, and a code of an earlier one does not confirm anything."""
    email = await mfa.accounts.register()
    auth = await mfa.bearer(email)

    async def start() -> str:
        r = await mfa.client.post("/auth/mfa/totp/enroll", headers=auth)
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])

    shown = await asyncio.gather(*(start() for _ in range(6)))
    assert len(set(shown)) == 6
    async with mfa.tw.engine.connect() as conn:
        pending = (await conn.execute(select(factors_table.c.id))).all()
    assert len(pending) == 1
    # Exactly one of the secrets shown confirms: the one stored.
    confirmed = []
    for secret in shown:
        r = await mfa.client.post(
            "/auth/mfa/totp/confirm", json={"code": mfa.code(secret)}, headers=auth
        )
        if r.status_code == 200:
            confirmed.append(secret)
        else:
            assert r.status_code in (403, 404), r.text
    assert len(confirmed) == 1
