"""Second factors over HTTP (docs/mfa.md): TOTP enrolment, the two-step login, recovery
codes, step-up and the policy modes, on the real Redis and SQLite.

Time is a FrozenClock: TOTP codes are computed from the shown secret at the clock's time
step, and the clock is moved past a step (replays), a challenge's life (expiry) or the
re-authentication age, instead of waiting.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_support import GENEROUS_LIMITS, PASSWORD, Accounts, MakeTw, isolated_client
from sqlalchemy import select

from private_redis import private_redis
from tokenward.clock import FrozenClock
from tokenward.events import EventKind
from tokenward.http.app import create_app
from tokenward.mfa import TOTP_PERIOD, totp_code
from tokenward.runtime import Tokenward
from tokenward.secretbox import KEY_FILE, SecretBox
from tokenward.stores.sql_mfa import factors_table, recovery_table
from tw_accounts import BEARER
from waiting import await_until

PROBLEM = "urn:tokenward:problem:"


class Mfa:
    """One Tokenward with a FrozenClock, a client, and the steps of the flows."""

    def __init__(self, tw: Tokenward, clock: FrozenClock, client: httpx.AsyncClient) -> None:
        self.tw = tw
        self.clock = clock
        self.client = client
        self.accounts = Accounts(client)

    def code(self, secret: str) -> str:
        """The code of the current time step."""
        return totp_code(secret, self.clock.now() // TOTP_PERIOD)

    def next_step(self) -> None:
        """Move to the next time step (the last code was used)."""
        self.clock.advance(TOTP_PERIOD)

    async def bearer(self, email: str) -> dict[str, str]:
        body = await self.accounts.login_bearer(email)
        return {"Authorization": f"Bearer {body['access_token']}"}

    async def enrolled(self) -> tuple[str, str, list[str]]:
        """A new user with TOTP enrolled: (email, secret, recovery codes)."""
        email = await self.accounts.register()
        auth = await self.bearer(email)
        r = await self.client.post("/auth/mfa/totp/enroll", headers=auth)
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        r = await self.client.post(
            "/auth/mfa/totp/confirm", json={"code": self.code(secret)}, headers=auth
        )
        assert r.status_code == 200, r.text
        self.next_step()
        return email, secret, r.json()["recovery_codes"]

    async def challenge(
        self, email: str, *, client: httpx.AsyncClient | None = None, bearer: bool = True
    ) -> dict[str, Any]:
        r = await (client or self.client).post(
            "/auth/login",
            json={"email": email, "password": PASSWORD},
            headers=BEARER if bearer else {},
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert body["mfa_required"] is True, body
        return body

    async def second(
        self,
        challenge: str,
        code: str,
        *,
        client: httpx.AsyncClient | None = None,
        bearer: bool = True,
    ) -> httpx.Response:
        return await (client or self.client).post(
            "/auth/login/mfa",
            json={"challenge": challenge, "code": code},
            headers=BEARER if bearer else {},
        )


@pytest.fixture
async def mfa(make_tw: MakeTw) -> Any:
    clock = FrozenClock(int(time.time()))
    tw = await make_tw(clock=clock, **GENEROUS_LIMITS)
    async with isolated_client(tw) as client:
        yield Mfa(tw, clock, client)


def _type(r: httpx.Response) -> str:
    return str(r.json()["type"]).removeprefix(PROBLEM)


# ----------------------------------------------------------------------------- enrolment


async def test_enrolment_shows_secret_uri_and_a_local_svg_qr_code(mfa: Mfa) -> None:
    email = await mfa.accounts.register()
    auth = await mfa.bearer(email)
    r = await mfa.client.post("/auth/mfa/totp/enroll", headers=auth)
    assert r.status_code == 201
    body = r.json()
    assert len(base64.b32decode(body["secret"])) == 20
    assert body["otpauth_uri"].startswith("otpauth://totp/Tokenward:")
    assert f"secret={body['secret']}" in body["otpauth_uri"]
    assert body["qr_svg"].startswith("<svg")
    assert "http" not in body["qr_svg"].split("xmlns")[0]
    assert "<path" in body["qr_svg"]
    # Not active before its first code: the login is still password-only.
    status = (await mfa.client.get("/auth/mfa", headers=auth)).json()
    assert status["factors"] == []
    assert status["policy"] == "optional"
    r = await mfa.client.post("/auth/mfa/totp/confirm", json={"code": "000000"}, headers=auth)
    assert r.status_code == 403
    assert _type(r) == "invalid-code"
    login = await mfa.client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
    )
    assert "access_token" in login.json()


async def test_confirmation_activates_and_shows_ten_codes_once(mfa: Mfa) -> None:
    email, _, codes = await mfa.enrolled()
    assert len(codes) == 10
    assert len(set(codes)) == 10
    auth = await _mfa_session(mfa, email, codes[0])
    status = (await mfa.client.get("/auth/mfa", headers=auth)).json()
    assert [f["kind"] for f in status["factors"]] == ["totp"]
    assert status["recovery_codes_left"] == 9
    events = (await mfa.client.get("/auth/events", headers=auth)).json()
    kinds = [e["kind"] for e in events]
    assert EventKind.MFA_ENABLED.value in kinds
    assert EventKind.RECOVERY_CODE_USED.value in kinds


async def test_a_second_enrolment_is_refused_while_one_is_active(mfa: Mfa) -> None:
    email, secret, _ = await mfa.enrolled()
    r = await mfa.second((await mfa.challenge(email))["challenge"], mfa.code(secret))
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    again = await mfa.client.post("/auth/mfa/totp/enroll", headers=auth)
    assert again.status_code == 409


async def test_the_stored_secret_is_sealed_not_plaintext(mfa: Mfa) -> None:
    """Encryption at rest: the row holds neither the base32 secret nor its bytes; it opens
    only with the key in the data directory (0600) and for its own user."""
    _, secret, codes = await mfa.enrolled()
    async with mfa.tw.engine.connect() as conn:
        row = (await conn.execute(select(factors_table))).one()
        digests = (await conn.execute(select(recovery_table.c.digest))).scalars().all()
    sealed = bytes(row.secret)
    raw = base64.b32decode(secret)
    assert secret.encode() not in sealed
    assert raw not in sealed
    assert secret.lower().encode() not in sealed
    key_file = mfa.tw.settings.data_dir / KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    box = SecretBox.from_config(None, mfa.tw.settings.data_dir)
    assert box.open(sealed, context=f"tokenward:totp:{row.user_id}").decode() == secret
    with pytest.raises(Exception, match="does not open"):
        box.open(sealed, context="tokenward:totp:someone-else")
    # Recovery codes: only digests.
    assert len(digests) == 10
    assert not {c.replace("-", "") for c in codes} & set(digests)
    assert all(len(d) == 64 for d in digests)


# ----------------------------------------------------------------------- two-step login


async def _mfa_session(mfa: Mfa, email: str, code: str) -> dict[str, str]:
    r = await mfa.second((await mfa.challenge(email))["challenge"], code)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_login_of_a_user_with_a_factor_opens_no_session(mfa: Mfa) -> None:
    """Step one answers a challenge: no tokens, no cookies, no session record."""
    email, _, _ = await mfa.enrolled()
    uid = (await mfa.tw.user_store.by_email(email)).id  # type: ignore[union-attr]
    before = {r.sid for r in await mfa.tw.session_store.list(uid, now=mfa.clock.now())}
    for bearer in (True, False):
        r = await mfa.client.post(
            "/auth/login",
            json={"email": email, "password": PASSWORD},
            headers=BEARER if bearer else {},
        )
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {
            "mfa_required", "challenge", "factors", "expires_in", "enrollment_required"
        }  # fmt: skip
        assert body["factors"] == ["totp", "recovery"]
        assert body["expires_in"] == 300
        names = [c.split("=", 1)[0] for c in r.headers.get_list("set-cookie")]
        assert names == ([] if bearer else ["__Secure-mfa_challenge"])
    after = {r.sid for r in await mfa.tw.session_store.list(uid, now=mfa.clock.now())}
    assert after == before


async def test_second_step_opens_the_session_with_amr_and_auth_time(mfa: Mfa) -> None:
    email, secret, _ = await mfa.enrolled()
    started = mfa.clock.now()
    r = await mfa.second((await mfa.challenge(email))["challenge"], mfa.code(secret))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["email"] == email
    assert body["recovery_codes_left"] == 10
    claims = mfa.tw.tokens.verify(body["access_token"], now=mfa.clock.now())
    assert claims.amr == ("pwd", "otp", "mfa")
    assert claims.auth_time == started
    # A refresh later keeps how the session signed in, and when.
    mfa.clock.advance(120)
    r = await mfa.client.post(
        "/auth/refresh", json={"refresh_token": body["refresh_token"]}, headers=BEARER
    )
    again = mfa.tw.tokens.verify(r.json()["access_token"], now=mfa.clock.now())
    assert again.amr == ("pwd", "otp", "mfa")
    assert again.auth_time == started


async def test_a_password_login_carries_pwd_and_its_time(mfa: Mfa) -> None:
    email = await mfa.accounts.register()
    body = await mfa.accounts.login_bearer(email)
    claims = mfa.tw.tokens.verify(body["access_token"], now=mfa.clock.now())
    assert claims.amr == ("pwd",)
    assert claims.auth_time == mfa.clock.now()


async def test_cookie_mode_second_step_sets_the_session_cookies(mfa: Mfa) -> None:
    email, secret, _ = await mfa.enrolled()
    challenge = (await mfa.challenge(email, bearer=False))["challenge"]
    r = await mfa.second(challenge, mfa.code(secret), bearer=False)
    assert r.status_code == 200, r.text
    assert "access_token" not in r.json()
    cookies = r.headers.get_list("set-cookie")
    names = [c.split("=", 1)[0] for c in cookies]
    assert {"__Host-access_token", "__Secure-refresh_token", "__Host-csrf_token"} <= set(names)
    assert any(c.startswith("__Secure-mfa_challenge=;") and "Max-Age=0" in c for c in cookies)
    assert (await mfa.client.get("/auth/me")).status_code == 200


async def test_a_replayed_code_is_refused_within_its_window(mfa: Mfa) -> None:
    email, secret, _ = await mfa.enrolled()
    code = mfa.code(secret)
    assert (await mfa.second((await mfa.challenge(email))["challenge"], code)).status_code == 200
    challenge = (await mfa.challenge(email))["challenge"]
    replay = await mfa.second(challenge, code)
    assert replay.status_code == 401
    assert _type(replay) == "invalid-code"
    assert "already used" in replay.json()["detail"]
    # Still in the drift window a step later: still refused (an earlier step than accepted).
    mfa.clock.advance(TOTP_PERIOD)
    assert (await mfa.second(challenge, code)).status_code == 401
    # The challenge survived the wrong attempts: the next step's code works.
    assert (await mfa.second(challenge, mfa.code(secret))).status_code == 200
    # The owner learns that someone got past the password.
    uid = (await mfa.tw.user_store.by_email(email)).id  # type: ignore[union-attr]
    await mfa.tw.events.drain()
    events = await mfa.tw.event_log.for_user(uid, now=mfa.clock.now())
    assert [e.kind for e in events].count(EventKind.MFA_FAILED) == 2


async def test_an_expired_challenge_is_refused(mfa: Mfa) -> None:
    email, secret, _ = await mfa.enrolled()
    challenge = (await mfa.challenge(email))["challenge"]
    mfa.clock.advance(mfa.tw.settings.mfa_challenge_ttl)
    r = await mfa.second(challenge, mfa.code(secret))
    assert r.status_code == 401
    assert _type(r) == "mfa-challenge-invalid"
    assert "expired" in r.json()["detail"]


async def test_a_challenge_is_single_use(mfa: Mfa) -> None:
    email, secret, codes = await mfa.enrolled()
    challenge = (await mfa.challenge(email))["challenge"]
    assert (await mfa.second(challenge, mfa.code(secret))).status_code == 200
    r = await mfa.second(challenge, codes[0])
    assert r.status_code == 401
    assert _type(r) == "mfa-challenge-invalid"


async def test_a_challenge_from_another_client_is_refused(mfa: Mfa) -> None:
    """Another address, another User-Agent, or (cookie mode) no challenge cookie: refused,
    and the challenge stays for the client that started it."""
    email, secret, _ = await mfa.enrolled()
    challenge = (await mfa.challenge(email))["challenge"]
    async with isolated_client(mfa.tw) as elsewhere:
        r = await mfa.second(challenge, mfa.code(secret), client=elsewhere)
    assert r.status_code == 401
    assert _type(r) == "mfa-challenge-invalid"
    assert "another client" in r.json()["detail"]
    other_agent = await mfa.client.post(
        "/auth/login/mfa",
        json={"challenge": challenge, "code": mfa.code(secret)},
        headers={**BEARER, "User-Agent": "curl/8"},
    )
    assert other_agent.status_code == 401
    # Cookie mode: the same client without the challenge cookie.
    cookie_challenge = (await mfa.challenge(email, bearer=False))["challenge"]
    mfa.client.cookies.clear()
    r = await mfa.second(cookie_challenge, mfa.code(secret), bearer=False)
    assert r.status_code == 401
    assert "another client" in r.json()["detail"]
    # The bearer challenge is intact for its own client.
    assert (await mfa.second(challenge, mfa.code(secret))).status_code == 200


async def test_wrong_codes_use_up_the_challenge(mfa: Mfa) -> None:
    email, secret, _ = await mfa.enrolled()
    challenge = (await mfa.challenge(email))["challenge"]
    for _ in range(4):
        r = await mfa.second(challenge, "123456" if mfa.code(secret) != "123456" else "654321")
        assert r.status_code == 401
        assert _type(r) == "invalid-code"
    last = await mfa.second(challenge, "not-a-code")
    assert last.status_code == 401
    assert _type(last) == "mfa-challenge-invalid"
    assert (await mfa.second(challenge, mfa.code(secret))).status_code == 401


async def test_code_attempts_are_throttled_like_logins(make_tw: MakeTw) -> None:
    clock = FrozenClock(int(time.time()))
    tw = await make_tw(clock=clock, **{**GENEROUS_LIMITS, "login_pair_limit": 3})
    async with isolated_client(tw) as client:
        mfa = Mfa(tw, clock, client)
        email, secret, _ = await mfa.enrolled()
        wrong = "111111" if mfa.code(secret) != "111111" else "222222"
        statuses = []
        for _ in range(4):
            challenge = (await mfa.challenge(email))["challenge"]
            statuses.append((await mfa.second(challenge, wrong)).status_code)
        assert statuses[:3] == [401, 401, 401]
        assert statuses[3] == 429


async def test_recovery_codes_are_single_use_and_run_out(mfa: Mfa) -> None:
    email, _, codes = await mfa.enrolled()
    left = []
    for code in codes:
        r = await mfa.second((await mfa.challenge(email))["challenge"], code.upper())
        assert r.status_code == 200, r.text
        left.append(r.json()["recovery_codes_left"])
    assert left == list(range(9, -1, -1))
    for code in (codes[0], codes[-1]):
        r = await mfa.second((await mfa.challenge(email))["challenge"], code)
        assert r.status_code == 401
        assert _type(r) == "invalid-code"


async def test_concurrent_redemptions_of_one_challenge_open_one_session(mfa: Mfa) -> None:
    """Four requests race with one challenge and right codes, 25 rounds: exactly one opens
    a session each round, the others are refused."""
    email, secret, codes = await mfa.enrolled()
    uid = (await mfa.tw.user_store.by_email(email)).id  # type: ignore[union-attr]
    for _ in range(25):
        before = len(await mfa.tw.session_store.list(uid, now=mfa.clock.now()))
        challenge = (await mfa.challenge(email))["challenge"]
        code = mfa.code(secret)
        results = await asyncio.gather(
            mfa.second(challenge, code),
            mfa.second(challenge, code),
            mfa.second(challenge, codes[0]),
            mfa.second(challenge, code),
        )
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 401, 401, 401], [r.text for r in results]
        after = len(await mfa.tw.session_store.list(uid, now=mfa.clock.now()))
        assert after == before + 1
        mfa.next_step()


async def test_one_code_on_two_challenges_at_once_opens_one_session(mfa: Mfa) -> None:
    """The replay rule holds under concurrency: two logins race with one TOTP code (or one
    recovery code); exactly one wins, 15 rounds each."""
    email, secret, codes = await mfa.enrolled()
    for round_ in range(15):
        first = (await mfa.challenge(email))["challenge"]
        second = (await mfa.challenge(email))["challenge"]
        code = mfa.code(secret) if round_ % 2 else codes[round_ // 2]
        results = await asyncio.gather(mfa.second(first, code), mfa.second(second, code))
        assert sorted(r.status_code for r in results) == [200, 401]
        mfa.next_step()


# ------------------------------------------------------------------- step-up and claims


async def test_factor_changes_need_a_recent_authentication(mfa: Mfa) -> None:
    email, secret, _ = await mfa.enrolled()
    auth = await _mfa_session(mfa, email, mfa.code(secret))
    mfa.clock.advance(mfa.tw.settings.reauth_max_age + 1)
    r = await mfa.client.post("/auth/mfa/recovery-codes", headers=auth)
    assert r.status_code == 403
    assert _type(r) == "reauthentication-required"
    mfa.next_step()
    r = await mfa.client.post("/auth/reauthenticate", json={"code": mfa.code(secret)}, headers=auth)
    assert r.status_code == 200, r.text
    fresh = {"Authorization": f"Bearer {r.json()['access_token']}"}
    claims = mfa.tw.tokens.verify(r.json()["access_token"], now=mfa.clock.now())
    assert claims.auth_time == mfa.clock.now()
    assert "otp" in claims.amr
    r = await mfa.client.post("/auth/mfa/recovery-codes", headers=fresh)
    assert r.status_code == 200
    assert len(r.json()["recovery_codes"]) == 10


async def test_removing_the_factor_needs_a_second_factor_session(mfa: Mfa) -> None:
    """A session that only knows the password (opened before enrolment) cannot remove the
    factor, nor change the password; re-authenticating with a code can."""
    email = await mfa.accounts.register()
    auth = await mfa.bearer(email)
    secret = (await mfa.client.post("/auth/mfa/totp/enroll", headers=auth)).json()["secret"]
    code = mfa.code(secret)
    await mfa.client.post("/auth/mfa/totp/confirm", json={"code": code}, headers=auth)
    r = await mfa.client.delete("/auth/mfa/totp", headers=auth)
    assert r.status_code == 403
    assert _type(r) == "mfa-required"
    change = {"current_password": PASSWORD, "new_password": PASSWORD + " again"}
    r = await mfa.client.post("/auth/password", json=change, headers=auth)
    assert r.status_code == 403
    assert _type(r) == "mfa-required"
    r = await mfa.client.post("/auth/reauthenticate", json={"password": "wrong"}, headers=auth)
    assert r.status_code == 403
    assert _type(r) == "invalid-credentials"
    mfa.next_step()
    both = {"password": PASSWORD, "code": mfa.code(secret)}
    r = await mfa.client.post("/auth/reauthenticate", json=both, headers=auth)
    assert r.status_code == 200
    stepped = {"Authorization": f"Bearer {r.json()['access_token']}"}
    claims = mfa.tw.tokens.verify(r.json()["access_token"], now=mfa.clock.now())
    assert claims.amr == ("pwd", "otp", "mfa")
    assert (await mfa.client.delete("/auth/mfa/totp", headers=stepped)).status_code == 204
    # Password-only again.
    assert "access_token" in (await mfa.accounts.login_bearer(email))


async def test_reauthenticate_needs_something(mfa: Mfa) -> None:
    auth = await mfa.bearer(await mfa.accounts.register())
    r = await mfa.client.post("/auth/reauthenticate", json={}, headers=auth)
    assert r.status_code == 422
    r = await mfa.client.post("/auth/reauthenticate", json={"code": "123456"}, headers=auth)
    assert r.status_code == 404


# ------------------------------------------------------------------------------ policy


async def test_policy_off_serves_no_mfa_routes(make_tw: MakeTw) -> None:
    tw = await make_tw(mfa="off", **GENEROUS_LIMITS)
    async with isolated_client(tw) as client:
        accounts = Accounts(client)
        body = await accounts.login_bearer(await accounts.register())
        auth = {"Authorization": f"Bearer {body['access_token']}"}
        assert (await client.post("/auth/mfa/totp/enroll", headers=auth)).status_code == 404
        assert (await client.post("/auth/login/mfa", json={})).status_code == 404
        claims = tw.tokens.verify(body["access_token"], now=tw.clock.now())
        assert claims.amr == ("pwd",)
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert "/auth/login/mfa" not in paths
        assert "/auth/reauthenticate" in paths


async def test_policy_required_leads_a_user_without_a_factor_through_enrolment(
    make_tw: MakeTw,
) -> None:
    clock = FrozenClock(int(time.time()))
    tw = await make_tw(clock=clock, mfa="required", **GENEROUS_LIMITS)
    async with isolated_client(tw) as client:
        mfa = Mfa(tw, clock, client)
        email = await mfa.accounts.register()
        body = await mfa.challenge(email)
        assert body["enrollment_required"] is True
        assert body["factors"] == ["totp"]
        challenge = body["challenge"]
        early = await mfa.second(challenge, "123456")
        assert early.status_code == 400
        r = await client.post(
            "/auth/login/mfa/enroll", json={"challenge": challenge}, headers=BEARER
        )
        assert r.status_code == 200, r.text
        secret = r.json()["secret"]
        assert r.json()["qr_svg"].startswith("<svg")
        async with isolated_client(tw) as elsewhere:
            stolen = await elsewhere.post(
                "/auth/login/mfa/enroll", json={"challenge": challenge}, headers=BEARER
            )
        assert stolen.status_code == 401
        r = await mfa.second(challenge, mfa.code(secret))
        assert r.status_code == 200, r.text
        assert len(r.json()["recovery_codes"]) == 10
        claims = tw.tokens.verify(r.json()["access_token"], now=clock.now())
        assert claims.amr == ("pwd", "otp", "mfa")
        # The next login asks for a code.
        mfa.next_step()
        again = await mfa.challenge(email)
        assert again["enrollment_required"] is False
        assert (await mfa.second(again["challenge"], mfa.code(secret))).status_code == 200


async def test_a_form_login_is_sent_to_the_code_page(mfa: Mfa) -> None:
    email, _, _ = await mfa.enrolled()
    r = await mfa.client.post(
        "/auth/login", data={"email": email, "password": PASSWORD}, follow_redirects=False
    )
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login/mfa#challenge=")
    challenge = r.headers["location"].split("#challenge=", 1)[1]
    cookies = {c.split("=", 1)[0]: c for c in r.headers.get_list("set-cookie")}
    assert set(cookies) == {"__Secure-mfa_challenge", "__Secure-mfa_login"}
    # The code page's cookie (for the page without JavaScript): the challenge, for that
    # page only, never sent cross-site, unreadable by scripts.
    page = cookies["__Secure-mfa_login"]
    assert page.startswith(f"__Secure-mfa_login=v.{challenge};")
    assert "Path=/login/mfa" in page
    assert "HttpOnly" in page
    assert "SameSite=Strict" in page
    assert "Max-Age=300" in page


async def test_the_code_page_can_post_a_form(mfa: Mfa) -> None:
    """The second step as an HTML form: 303 to the account with the cookies; a wrong code
    back to the code page with the challenge; a spent challenge to the login page."""
    email, secret, _ = await mfa.enrolled()
    first = await mfa.client.post(
        "/auth/login", data={"email": email, "password": PASSWORD}, follow_redirects=False
    )
    challenge = first.headers["location"].split("#challenge=", 1)[1]
    wrong = "111111" if mfa.code(secret) != "111111" else "222222"
    r = await mfa.client.post(
        "/auth/login/mfa", data={"challenge": challenge, "code": wrong}, follow_redirects=False
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/login/mfa?error=invalid-code#challenge={challenge}"
    r = await mfa.client.post(
        "/auth/login/mfa",
        data={"challenge": challenge, "code": mfa.code(secret)},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/account"
    names = {c.split("=", 1)[0] for c in r.headers.get_list("set-cookie")}
    assert {"__Host-access_token", "__Secure-refresh_token", "__Host-csrf_token"} <= names
    r = await mfa.client.post(
        "/auth/login/mfa",
        data={"challenge": challenge, "code": mfa.code(secret)},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/login?error=mfa-challenge-invalid"


async def test_app_without_mfa_routes_is_the_same_app(tw: Tokenward) -> None:
    """The default policy (optional) serves the MFA routes."""
    paths = {getattr(r, "path", "") for r in create_app(tw, manage_lifespan=False).routes}
    assert {"/auth/login/mfa", "/auth/mfa/totp/enroll", "/auth/reauthenticate"} <= paths


# ---------------------------------------------------------------------------- outages


async def test_redis_down_at_the_second_step_is_503_and_changes_nothing(
    make_tw: MakeTw, tmp_path: Path
) -> None:
    """With Redis gone the second step answers 503 (no cookie, no session); once Redis is
    back the same challenge and code open the session: nothing was half-used."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    with private_redis(workdir, durable=True) as server:
        clock = FrozenClock(int(time.time()))
        tw = await make_tw(
            clock=clock, redis_url=server.url, backend_timeout=0.5, **GENEROUS_LIMITS
        )
        async with isolated_client(tw) as client:
            mfa = Mfa(tw, clock, client)
            email, secret, _ = await mfa.enrolled()
            challenge = (await mfa.challenge(email, bearer=False))["challenge"]
            server.kill()
            r = await asyncio.wait_for(mfa.second(challenge, mfa.code(secret), bearer=False), 10)
            assert r.status_code == 503
            assert _type(r) == "unavailable"
            assert not r.headers.get_list("set-cookie")
            server.start()

            async def back() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await await_until(back, within=10, what="Redis answers again")
            r = await mfa.second(challenge, mfa.code(secret), bearer=False)
            assert r.status_code == 200, r.text
