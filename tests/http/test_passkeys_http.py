"""Passkeys over HTTP (docs/mfa.md, "Passkeys"): registration from a signed-in session,
sign-in without an e-mail (bearer and cookie mode), the passkey as the second step of a
login, step-up, removal, the policy and the failure answers; on the real Redis and SQLite
with a software authenticator that signs for real (tests/soft_authenticator.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_support import GENEROUS_LIMITS, PASSWORD, Accounts, MakeTw, isolated_client

from ports import free_port
from private_redis import private_redis
from soft_authenticator import SoftAuthenticator
from tokenward.clock import FrozenClock
from tokenward.events import EventKind
from tokenward.http import schemas
from tokenward.http.app import create_app
from tokenward.mfa import TOTP_PERIOD, totp_code
from tokenward.runtime import Tokenward
from tw_accounts import BEARER, ORIGIN
from waiting import await_until

PROBLEM = "urn:tokenward:problem:"


def _type(r: httpx.Response) -> str:
    return str(r.json()["type"]).removeprefix(PROBLEM)


class World:
    def __init__(self, tw: Tokenward, clock: FrozenClock, client: httpx.AsyncClient) -> None:
        self.tw = tw
        self.clock = clock
        self.client = client
        self.accounts = Accounts(client)

    async def bearer(self, email: str) -> dict[str, str]:
        body = await self.accounts.login_bearer(email)
        return {"Authorization": f"Bearer {body['access_token']}"}

    async def with_passkey(
        self, auth: SoftAuthenticator | None = None, name: str = "Laptop"
    ) -> tuple[str, dict[str, str], SoftAuthenticator, dict[str, Any]]:
        """A new user with a passkey: (email, a bearer session, authenticator, passkey)."""
        email = await self.accounts.register()
        headers = await self.bearer(email)
        auth = auth or SoftAuthenticator(ORIGIN)
        passkey = await self.add(headers, auth, name)
        return email, headers, auth, passkey

    async def add(
        self, headers: dict[str, str], auth: SoftAuthenticator, name: str = "Laptop"
    ) -> dict[str, Any]:
        r = await self.client.post("/auth/passkeys/register/options", headers=headers)
        assert r.status_code == 200, r.text
        credential = auth.create(r.json()["publicKey"])
        r = await self.client.post(
            "/auth/passkeys/register",
            json={"name": name, "credential": credential},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def signin_options(self, *, bearer: bool = True) -> dict[str, Any]:
        r = await self.client.post("/auth/login/passkey/options", headers=BEARER if bearer else {})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def signin(
        self, auth: SoftAuthenticator, *, bearer: bool = True, **knobs: Any
    ) -> httpx.Response:
        options = await self.signin_options(bearer=bearer)
        credential = auth.get(options["publicKey"], **knobs)
        return await self.client.post(
            "/auth/login/passkey",
            json={"handle": options["handle"], "credential": credential},
            headers=BEARER if bearer else {},
        )


@pytest.fixture
async def world(make_tw: MakeTw) -> Any:
    clock = FrozenClock(int(time.time()))
    tw = await make_tw(clock=clock, **GENEROUS_LIMITS)
    async with isolated_client(tw) as client:
        yield World(tw, clock, client)


async def test_register_list_and_sign_in_without_an_email(world: World) -> None:
    email, headers, auth, passkey = await world.with_passkey(name="My laptop")
    assert passkey["name"] == "My laptop"
    assert passkey["last_used_at"] is None
    assert passkey["synced"] is False
    listed = (await world.client.get("/auth/passkeys", headers=headers)).json()["passkeys"]
    assert listed == [passkey]
    assert "public" not in str(listed).lower()
    world.clock.advance(10)
    r = await world.signin(auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["email"] == email
    claims = world.tw.tokens.verify(body["access_token"], now=world.clock.now())
    assert claims.amr == ("hwk", "mfa")
    assert claims.auth_time == world.clock.now()
    me = await world.client.get(
        "/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200
    listed = (await world.client.get("/auth/passkeys", headers=headers)).json()["passkeys"]
    assert listed[0]["last_used_at"] is not None
    kinds = [
        e.kind for e in await world.tw.events.for_user(body["user"]["id"], now=world.clock.now())
    ]
    assert EventKind.PASSKEY_ADDED in kinds
    assert EventKind.PASSKEY_USED in kinds


async def test_answers_have_their_documented_shapes(world: World) -> None:
    _, headers, auth, passkey = await world.with_passkey()
    schemas.PasskeyOut.model_validate(passkey)
    r = await world.client.get("/auth/passkeys", headers=headers)
    schemas.PasskeyList.model_validate_json(r.content)
    r = await world.client.post("/auth/passkeys/register/options", headers=headers)
    schemas.PasskeyCreationOptions.model_validate_json(r.content)
    options = schemas.PasskeyRequestOptions.model_validate(await world.signin_options())
    assert options.handle
    r = await world.client.post(
        "/auth/login/passkey",
        json={"handle": options.handle, "credential": auth.get(options.publicKey)},
        headers=BEARER,
    )
    assert schemas.SessionBody.model_validate_json(r.content).access_token


async def test_registration_options_ask_for_a_discoverable_credential(world: World) -> None:
    email, headers, auth, _ = await world.with_passkey()
    r = await world.client.post("/auth/passkeys/register/options", headers=headers)
    body = r.json()
    options = body["publicKey"]
    assert options["rp"] == {"id": "tokenward.test", "name": "Tokenward"}
    assert options["user"]["name"] == email
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    assert [c["id"] for c in options["excludeCredentials"]] == [
        auth.get({"rpId": "tokenward.test", "challenge": "x"})["id"]
    ]
    assert 0 < body["expires_in"] <= 120
    assert r.headers["cache-control"] == "no-store"


async def test_cookie_mode_sign_in_sets_the_session_cookies(world: World) -> None:
    _, _, auth, _ = await world.with_passkey()
    world.client.cookies.clear()
    r = await world.signin(auth, bearer=False)
    assert r.status_code == 200, r.text
    assert "access_token" not in r.json()
    names = {c.split("=", 1)[0] for c in r.headers.get_list("set-cookie")}
    assert {"__Host-access_token", "__Secure-refresh_token", "__Host-csrf_token"} <= names
    assert (await world.client.get("/auth/me")).status_code == 200


async def test_a_cross_site_sign_in_is_refused(world: World) -> None:
    _, _, auth, _ = await world.with_passkey()
    evil = {"Origin": "https://evil.test"}
    r = await world.client.post("/auth/login/passkey/options", headers=evil)
    assert r.status_code == 403
    assert _type(r) == "csrf"
    options = await world.signin_options(bearer=False)
    body = {"handle": options["handle"], "credential": auth.get(options["publicKey"])}
    r = await world.client.post("/auth/login/passkey", json=body, headers=evil)
    assert r.status_code == 403
    assert _type(r) == "csrf"
    assert "set-cookie" not in r.headers


async def test_a_replayed_assertion_is_refused(world: World) -> None:
    _, _, auth, _ = await world.with_passkey()
    options = await world.signin_options()
    payload = {"handle": options["handle"], "credential": auth.get(options["publicKey"])}
    first = await world.client.post("/auth/login/passkey", json=payload, headers=BEARER)
    assert first.status_code == 200
    again = await world.client.post("/auth/login/passkey", json=payload, headers=BEARER)
    assert again.status_code == 401
    assert _type(again) == "passkey-invalid"


async def test_an_expired_handle_is_refused(world: World) -> None:
    _, _, auth, _ = await world.with_passkey()
    options = await world.signin_options()
    world.clock.advance(world.tw.passkeys.challenge_ttl)
    r = await world.client.post(
        "/auth/login/passkey",
        json={"handle": options["handle"], "credential": auth.get(options["publicKey"])},
        headers=BEARER,
    )
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]


@pytest.mark.parametrize(
    "knobs", [{"origin": "https://evil.test"}, {"rp_id": "evil.test"}, {"uv": False}]
)
async def test_wrong_origin_rp_id_or_no_user_verification_is_401(
    world: World, knobs: dict[str, Any]
) -> None:
    _, _, auth, _ = await world.with_passkey()
    r = await world.signin(auth, **knobs)
    assert r.status_code == 401
    assert _type(r) == "passkey-invalid"
    assert "set-cookie" not in r.headers


async def test_a_counter_regression_is_refused_and_recorded(world: World) -> None:
    _, _, auth, _ = await world.with_passkey()
    r = await world.signin(auth, counter=5)
    assert r.status_code == 200
    uid = r.json()["user"]["id"]
    r = await world.signin(auth, counter=5)
    assert r.status_code == 401
    assert "copied" in r.json()["detail"]

    async def recorded() -> bool:
        kinds = [e.kind for e in await world.tw.events.for_user(uid, now=world.clock.now())]
        return EventKind.PASSKEY_CLONE_SUSPECTED in kinds

    await await_until(recorded, within=5, what="the clone event")


async def test_refused_passkeys_count_as_failed_logins_of_the_address(make_tw: MakeTw) -> None:
    clock = FrozenClock(int(time.time()))
    limits = {**GENEROUS_LIMITS, "login_ip_limit": 3}
    tw = await make_tw(clock=clock, **limits)
    async with isolated_client(tw) as client:
        world = World(tw, clock, client)
        _, _, auth, _ = await world.with_passkey()
        for _ in range(5):  # successes are refunded
            assert (await world.signin(auth)).status_code == 200
        for _ in range(3):
            assert (await world.signin(auth, uv=False)).status_code == 401
        r = await world.signin(auth)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0


async def test_removal_needs_a_recent_second_factor_and_is_final(world: World) -> None:
    _, password_session, auth, passkey = await world.with_passkey()
    path = f"/auth/passkeys/{passkey['id']}"
    # Opened by the password alone: not enough to remove a factor.
    r = await world.client.delete(path, headers=password_session)
    assert r.status_code == 403
    assert _type(r) == "mfa-required"
    body = (await world.signin(auth)).json()
    strong = {"Authorization": f"Bearer {body['access_token']}"}
    # Someone else's passkey: 404, as an unknown one.
    _, _, _, theirs = await world.with_passkey()
    r = await world.client.delete(f"/auth/passkeys/{theirs['id']}", headers=strong)
    assert r.status_code == 404
    assert (await world.client.delete(path, headers=strong)).status_code == 204
    assert (await world.client.delete(path, headers=strong)).status_code == 404
    assert (await world.client.get("/auth/passkeys", headers=strong)).json()["passkeys"] == []
    r = await world.signin(auth)
    assert r.status_code == 401
    assert "not registered" in r.json()["detail"]


async def test_rename_a_passkey_but_not_someone_elses(world: World) -> None:
    _, headers, _, passkey = await world.with_passkey(name="Old")
    _, others, _, _ = await world.with_passkey()
    path = f"/auth/passkeys/{passkey['id']}"
    r = await world.client.patch(path, json={"name": "  Work laptop "}, headers=headers)
    assert r.status_code == 200, r.text
    assert {**passkey, "name": "Work laptop"} == schemas.PasskeyOut.model_validate(
        r.json()
    ).model_dump()
    r = await world.client.patch(path, json={"name": "Mine now"}, headers=others)
    assert (r.status_code, _type(r)) == (404, "not-found")
    r = await world.client.patch(path, json={"name": "x" * 65}, headers=headers)
    assert (r.status_code, r.json()["rule"]) == (422, "too-long")
    listed = (await world.client.get("/auth/passkeys", headers=headers)).json()["passkeys"]
    assert [p["name"] for p in listed] == ["Work laptop"]


async def test_registration_needs_a_recent_authentication(world: World) -> None:
    email = await world.accounts.register()
    headers = await world.bearer(email)
    world.clock.advance(world.tw.settings.reauth_max_age + 1)
    r = await world.client.post("/auth/passkeys/register/options", headers=headers)
    assert r.status_code == 403
    assert _type(r) == "reauthentication-required"
    assert (await world.client.post("/auth/passkeys/register/options")).status_code == 401


@pytest.mark.parametrize(
    ("credential", "status", "kind"),
    [
        ("text", 422, "validation"),
        ([], 422, "validation"),
        ({}, 400, "credential-malformed"),
        (
            {"id": "AA", "rawId": "AA", "type": "public-key", "response": "x"},
            400,
            "credential-malformed",
        ),
        (
            {
                "id": "A A",
                "rawId": "AA",
                "type": "public-key",
                "response": {"clientDataJSON": "AA", "authenticatorData": "AA", "signature": "AA"},
            },
            400,
            "credential-malformed",
        ),
        (
            {
                "id": "AA",
                "rawId": "AA",
                "type": "public-key",
                "response": {"clientDataJSON": "AA", "authenticatorData": "AA", "signature": "AA"},
            },
            400,
            "credential-malformed",
        ),
    ],
)
async def test_malformed_credentials_are_precise_4xx(
    world: World, credential: Any, status: int, kind: str
) -> None:
    options = await world.signin_options()
    r = await world.client.post(
        "/auth/login/passkey",
        json={"handle": options["handle"], "credential": credential},
        headers=BEARER,
    )
    assert (r.status_code, _type(r)) == (status, kind), r.text
    email = await world.accounts.register()
    headers = await world.bearer(email)
    await world.client.post("/auth/passkeys/register/options", headers=headers)
    r = await world.client.post(
        "/auth/passkeys/register", json={"credential": credential}, headers=headers
    )
    assert (r.status_code, _type(r)) == (status, kind), r.text


async def test_malformed_bodies_are_422(world: World) -> None:
    r = await world.client.post("/auth/login/passkey", json={"handle": "x"}, headers=BEARER)
    assert (r.status_code, r.json()["rule"]) == (422, "required")
    r = await world.client.post(
        "/auth/login/passkey", json={"handle": "x" * 200, "credential": {}}, headers=BEARER
    )
    assert (r.status_code, r.json()["rule"]) == (422, "too-long")
    r = await world.client.post(
        "/auth/login/passkey", json={"handle": "nope", "credential": {}}, headers=BEARER
    )
    assert r.status_code == 400
    r = await world.client.post(
        "/auth/passkeys/register/options",
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code in (400, 401)


async def test_a_registration_answer_without_options_is_refused(world: World) -> None:
    email = await world.accounts.register()
    headers = await world.bearer(email)
    r = await world.client.post("/auth/passkeys/register/options", headers=headers)
    credential = SoftAuthenticator(ORIGIN).create(r.json()["publicKey"])
    body = {"name": "x", "credential": credential}
    assert (
        await world.client.post("/auth/passkeys/register", json=body, headers=headers)
    ).status_code == 201
    r = await world.client.post("/auth/passkeys/register", json=body, headers=headers)
    assert r.status_code == 400
    assert _type(r) == "passkey-registration-failed"


# ------------------------------------------------------------------ second factor


async def _challenge(world: World, email: str) -> dict[str, Any]:
    r = await world.client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["mfa_required"] is True
    return body


async def test_a_passkey_as_the_second_step_of_a_login(world: World) -> None:
    email, _, auth, _ = await world.with_passkey()
    challenge = await _challenge(world, email)
    assert challenge["factors"] == ["passkey"]
    token = challenge["challenge"]
    # Without options first: no WebAuthn challenge to answer.
    stray = auth.get({"rpId": "tokenward.test", "challenge": "AAAA"})
    r = await world.client.post(
        "/auth/login/mfa", json={"challenge": token, "credential": stray}, headers=BEARER
    )
    assert (r.status_code, _type(r)) == (400, "bad-request")
    r = await world.client.post(
        "/auth/login/mfa/passkey/options", json={"challenge": token}, headers=BEARER
    )
    assert r.status_code == 200, r.text
    options = r.json()["publicKey"]
    assert len(options["allowCredentials"]) == 1
    r = await world.client.post(
        "/auth/login/mfa",
        json={"challenge": token, "credential": auth.get(options, uv=False)},
        headers=BEARER,
    )
    assert r.status_code == 200, r.text
    claims = world.tw.tokens.verify(r.json()["access_token"], now=world.clock.now())
    assert claims.amr == ("pwd", "hwk", "mfa")
    # The challenge is used up.
    r = await world.client.post(
        "/auth/login/mfa/passkey/options", json={"challenge": token}, headers=BEARER
    )
    assert r.status_code == 401


async def test_someone_elses_passkey_is_refused_at_the_second_step(world: World) -> None:
    email, _, _, _ = await world.with_passkey()
    _, _, mallory, _ = await world.with_passkey()
    token = (await _challenge(world, email))["challenge"]
    r = await world.client.post(
        "/auth/login/mfa/passkey/options", json={"challenge": token}, headers=BEARER
    )
    options = r.json()["publicKey"]
    r = await world.client.post(
        "/auth/login/mfa",
        json={"challenge": token, "credential": mallory.get({**options, "allowCredentials": []})},
        headers=BEARER,
    )
    assert r.status_code == 401
    assert "another account" in r.json()["detail"]


async def test_totp_users_see_both_and_removing_the_app_keeps_passkeys(world: World) -> None:
    email, headers, auth, _ = await world.with_passkey()
    secret = (await world.client.post("/auth/mfa/totp/enroll", headers=headers)).json()["secret"]
    code = totp_code(secret, world.clock.now() // TOTP_PERIOD)
    r = await world.client.post("/auth/mfa/totp/confirm", json={"code": code}, headers=headers)
    assert r.status_code == 200
    assert (await _challenge(world, email))["factors"] == ["totp", "recovery", "passkey"]
    strong = {"Authorization": f"Bearer {(await world.signin(auth)).json()['access_token']}"}
    assert (await world.client.delete("/auth/mfa/totp", headers=strong)).status_code == 204
    assert len((await world.client.get("/auth/passkeys", headers=strong)).json()["passkeys"]) == 1
    assert (await _challenge(world, email))["factors"] == ["passkey"]


async def test_reauthenticate_with_a_passkey(world: World) -> None:
    _, headers, auth, _ = await world.with_passkey()
    world.clock.advance(world.tw.settings.reauth_max_age + 1)
    options = await world.signin_options()
    body = {"handle": options["handle"], "credential": auth.get(options["publicKey"])}
    r = await world.client.post("/auth/reauthenticate", json=body, headers=headers)
    assert r.status_code == 200, r.text
    claims = world.tw.tokens.verify(r.json()["access_token"], now=world.clock.now())
    assert claims.amr == ("pwd", "hwk", "mfa")
    assert claims.auth_time == world.clock.now()
    # Another account's passkey does not step this session up.
    _, _, mallory, _ = await world.with_passkey()
    options = await world.signin_options()
    body = {"handle": options["handle"], "credential": mallory.get(options["publicKey"])}
    fresh = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await world.client.post("/auth/reauthenticate", json=body, headers=fresh)
    assert r.status_code == 403
    assert _type(r) == "invalid-code"


async def test_reset_mfa_removes_passkeys(world: World) -> None:
    _, _, auth, _ = await world.with_passkey()
    uid = (await world.signin(auth)).json()["user"]["id"]
    assert await world.tw.mfa.remove_all(uid) == 1
    r = await world.signin(auth)
    assert r.status_code == 401


async def test_required_policy_is_satisfied_by_a_passkey(make_tw: MakeTw) -> None:
    clock = FrozenClock(int(time.time()))
    tw = await make_tw(clock=clock, mfa="required", **GENEROUS_LIMITS)
    async with isolated_client(tw) as client:
        world = World(tw, clock, client)
        email = await world.accounts.register()
        # A user with a passkey is not led through TOTP enrolment: the challenge asks for it.
        user = await tw.user_store.by_email(email)
        assert user is not None
        auth = SoftAuthenticator(ORIGIN)
        options = await tw.passkeys.registration_options(user.id, email, now=clock.now())
        await tw.passkeys.register(user.id, "k", auth.create(options), now=clock.now())
        body = await _challenge(world, email)
        assert body["enrollment_required"] is False
        assert body["factors"] == ["passkey"]


async def test_no_passkey_routes_with_mfa_off(make_tw: MakeTw) -> None:
    tw = await make_tw(mfa="off")
    paths = {getattr(r, "path", "") for r in create_app(tw, manage_lifespan=False).routes}
    assert not {p for p in paths if "passkey" in p}


# ---------------------------------------------------------------------------- outages


async def test_redis_down_is_503(make_tw: MakeTw, tmp_path: Path) -> None:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    with private_redis(workdir, durable=True) as server:
        clock = FrozenClock(int(time.time()))
        tw = await make_tw(
            clock=clock, redis_url=server.url, backend_timeout=0.5, **GENEROUS_LIMITS
        )
        async with isolated_client(tw) as client:
            world = World(tw, clock, client)
            _, _, auth, _ = await world.with_passkey()
            options = await world.signin_options()
            server.kill()
            r = await client.post(
                "/auth/login/passkey",
                json={"handle": options["handle"], "credential": auth.get(options["publicKey"])},
                headers=BEARER,
            )
            assert r.status_code == 503
            assert _type(r) == "unavailable"
            r = await client.post("/auth/login/passkey/options", headers=BEARER)
            assert r.status_code == 503
            server.start()

            async def back() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await await_until(back, within=10, what="Redis answers again")
            r = await world.signin(auth)
            assert r.status_code == 200, r.text


async def test_database_down_is_503(make_tw: MakeTw) -> None:
    """The passkeys live in the user database: with it unreachable a sign-in is 503."""
    clock = FrozenClock(int(time.time()))
    up = await make_tw(clock=clock, **GENEROUS_LIMITS)
    async with isolated_client(up) as client:
        _, _, auth, _ = await World(up, clock, client).with_passkey()
    down = await make_tw(
        clock=clock,
        database_url=f"postgresql+asyncpg://u@127.0.0.1:{free_port()}/db",
        migrate=False,
        **GENEROUS_LIMITS,
    )
    async with isolated_client(down) as client:
        r = await World(down, clock, client).signin(auth)
        assert r.status_code == 503
        assert _type(r) == "unavailable"
