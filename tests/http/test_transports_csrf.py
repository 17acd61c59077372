"""Cookie and bearer transports, and the CSRF rules, as docs/browser.md and docs/api.md state them.

Cookie-mode requests that need hand-made cookies (a swapped CSRF token, say) go through a
fresh client with an explicit ``Cookie`` header, so no cookie jar rewrites what is sent.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from http_support import GENEROUS_LIMITS, ORIGIN, PASSWORD, Accounts, MakeTw, isolated_client

from tokenward.clock import FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

SECURE_NAMES = ("__Host-access_token", "__Secure-refresh_token", "__Host-csrf_token")
BEARER = {"X-Auth-Transport": "bearer"}
PROBLEM = "urn:tokenward:problem:"


def parse_set_cookies(r: httpx.Response) -> dict[str, dict[str, Any]]:
    """``{name: {"value": ..., "attrs": {lower-cased attribute: value or True}}}``."""
    out: dict[str, dict[str, Any]] = {}
    for header in r.headers.get_list("set-cookie"):
        first, *attrs = [part.strip() for part in header.split(";")]
        name, _, value = first.partition("=")
        parsed: dict[str, Any] = {}
        for attr in attrs:
            key, eq, val = attr.partition("=")
            parsed[key.lower()] = val if eq else True
        out[name] = {"value": value, "attrs": parsed}
    return out


def cookie_header(values: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in values.items())}


def _assert_csrf_refused(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == PROBLEM + "csrf"


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    """This module's service: default settings with the abuse limits out of the way."""
    return await make_tw(**GENEROUS_LIMITS)


@pytest.fixture(scope="module")
async def shared_tw(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Tokenward]:
    """One service for the CSRF matrix below: those tests never move its clock, and each
    logs in its own fresh users, so they cannot see each other's state."""
    data = tmp_path_factory.mktemp("csrf-matrix")
    env = {
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(data / "data"),
        "TOKENWARD_ISSUER": ORIGIN,
        **{f"TOKENWARD_{k.upper()}": str(v) for k, v in GENEROUS_LIMITS.items()},
    }
    settings = load_settings(env, env_file=data / "no.env")
    service = Tokenward(settings, clock=FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture(scope="module")
async def shared_accounts(shared_tw: Tokenward) -> AsyncIterator[Accounts]:
    """Account helpers on a client of ``shared_tw`` (its cookie jar is never relied on)."""
    async with isolated_client(shared_tw) as c:
        yield Accounts(c)


# ------------------------------------------------------------------------ cookie flags


async def test_login_sets_the_three_cookies_with_contract_flags(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """__Host-access_token, __Secure-refresh_token, __Host-csrf_token with exact attributes."""
    r = await accounts.login_cookie(await accounts.register())
    cookies = parse_set_cookies(r)
    assert set(cookies) == set(SECURE_NAMES)
    access = cookies["__Host-access_token"]["attrs"]
    refresh = cookies["__Secure-refresh_token"]["attrs"]
    csrf = cookies["__Host-csrf_token"]["attrs"]
    assert access == {
        "path": "/", "max-age": str(tw.settings.access_ttl), "httponly": True, "secure": True,
        "samesite": "Lax",
    }  # fmt: skip
    session_life = str(min(tw.policy.idle_ttl, tw.policy.max_ttl))
    assert refresh == {
        "path": "/auth", "max-age": session_life, "httponly": True, "secure": True,
        "samesite": "Strict",
    }  # fmt: skip
    assert csrf["path"] == "/"
    assert csrf["secure"] is True
    assert csrf["samesite"] == "Lax"
    assert "httponly" not in csrf, "page scripts must read the CSRF token"
    for name in ("__Host-access_token", "__Host-csrf_token"):
        assert "domain" not in cookies[name]["attrs"], "__Host- cookies carry no Domain"


async def test_refresh_cookie_max_age_is_the_remaining_session_life(make_tw: MakeTw) -> None:
    """Max-Age of the refresh cookie is min(idle timeout, time left to the absolute limit)."""
    tw = await make_tw(**GENEROUS_LIMITS, session_idle_ttl=1000, session_max_ttl=1500)
    async with isolated_client(tw) as client:
        accounts = Accounts(client)
        r = await accounts.login_cookie(await accounts.register())
        assert parse_set_cookies(r)["__Secure-refresh_token"]["attrs"]["max-age"] == "1000"
        tw.clock.advance(800)  # type: ignore[attr-defined]
        r2 = await client.post("/auth/refresh", headers=accounts.csrf_headers())
        assert r2.status_code == 200, r2.text
        cookies = parse_set_cookies(r2)
        assert cookies["__Secure-refresh_token"]["attrs"]["max-age"] == "700"
        assert cookies["__Host-access_token"]["attrs"]["max-age"] == str(tw.settings.access_ttl)
        assert r2.json()["session"]["expires_at"]


async def test_insecure_cookie_mode_drops_prefixes_and_secure(make_tw: MakeTw) -> None:
    """TOKENWARD_COOKIE_SECURE=false: same cookies, no __Host-/__Secure- and no Secure."""
    tw = await make_tw(**GENEROUS_LIMITS, cookie_secure="false")
    async with isolated_client(tw) as client:
        accounts = Accounts(client)
        r = await accounts.login_cookie(await accounts.register())
        cookies = parse_set_cookies(r)
        assert set(cookies) == {"access_token", "refresh_token", "csrf_token"}
        assert all("secure" not in c["attrs"] for c in cookies.values())
        assert cookies["access_token"]["attrs"]["httponly"] is True
        assert cookies["refresh_token"]["attrs"]["samesite"] == "Strict"
        assert cookies["refresh_token"]["attrs"]["path"] == "/auth"
        assert (await client.get("/auth/me")).status_code == 200
        ok = await client.post("/auth/refresh", headers=accounts.csrf_headers())
        assert ok.status_code == 200, ok.text


async def test_cookie_mode_bodies_never_carry_tokens(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """No token of any kind in a cookie-mode login or refresh body."""
    login = await accounts.login_cookie(await accounts.register())
    refreshed = await client.post("/auth/refresh", headers=accounts.csrf_headers())
    assert refreshed.status_code == 200
    for r in (login, refreshed):
        body = r.json()
        assert not {"access_token", "refresh_token", "csrf_token"} & set(body)
        for cookie in parse_set_cookies(r).values():
            assert cookie["value"] not in r.text


async def test_bearer_mode_sets_no_cookie_and_returns_tokens(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """X-Auth-Transport: bearer on login and refresh: tokens in the body, no Set-Cookie."""
    email = await accounts.register()
    r = await client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
    )
    assert r.status_code == 200
    assert not r.headers.get_list("set-cookie")
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["access_token"]
    assert body["refresh_token"]
    r2 = await client.post(
        "/auth/refresh", json={"refresh_token": body["refresh_token"]}, headers=BEARER
    )
    assert r2.status_code == 200
    assert not r2.headers.get_list("set-cookie")


async def test_refresh_without_transport_header_is_cookie_mode(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Without X-Auth-Transport a body refresh_token is not used: cookie mode, 401."""
    tokens = await accounts.login_bearer(await accounts.register())
    r = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401


# ------------------------------------------------------------------------------- CSRF

UNSAFE = [
    ("POST", "/auth/logout", None),
    ("POST", "/auth/logout-all", None),
    ("POST", "/auth/refresh", None),
    ("POST", "/auth/password", {"current_password": PASSWORD, "new_password": PASSWORD + "!"}),
    ("DELETE", "/auth/sessions/{sid}", None),
]


async def _cookie_session(tw: Tokenward) -> tuple[dict[str, str], str, str]:
    """A logged-in user's cookies, session id and email (the client keeps no jar)."""
    async with isolated_client(tw) as c:
        accounts = Accounts(c)
        email = await accounts.register()
        r = await c.post("/auth/login", json={"email": email, "password": PASSWORD})
    cookies = {name: v["value"] for name, v in parse_set_cookies(r).items()}
    return cookies, r.json()["session"]["id"], email


async def _send(
    tw: Tokenward,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    cookies: dict[str, str],
    headers: dict[str, str],
) -> httpx.Response:
    async with isolated_client(tw) as c:
        return await c.request(
            method, path, json=body, headers={**cookie_header(cookies), **headers}
        )


async def _still_logged_in(tw: Tokenward, cookies: dict[str, str]) -> bool:
    return (await _send(tw, "GET", "/auth/me", None, cookies, {})).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), UNSAFE)
async def test_unsafe_cookie_request_without_csrf_header_is_403(
    shared_tw: Tokenward, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """Every unsafe cookie-authenticated request needs X-CSRF-Token: 403 csrf without it."""
    cookies, sid, _ = await _cookie_session(shared_tw)
    r = await _send(shared_tw, method, path.format(sid=sid), body, cookies, {"Origin": ORIGIN})
    _assert_csrf_refused(r)
    assert await _still_logged_in(shared_tw, cookies)


@pytest.mark.parametrize(("method", "path", "body"), UNSAFE)
async def test_csrf_header_different_from_cookie_is_403(
    shared_tw: Tokenward, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """The header must equal the csrf cookie."""
    cookies, sid, _ = await _cookie_session(shared_tw)
    headers = {"X-CSRF-Token": cookies["__Host-csrf_token"][:-2] + "xx", "Origin": ORIGIN}
    r = await _send(shared_tw, method, path.format(sid=sid), body, cookies, headers)
    _assert_csrf_refused(r)
    assert await _still_logged_in(shared_tw, cookies)


@pytest.mark.parametrize(("method", "path", "body"), UNSAFE)
async def test_csrf_token_of_another_session_is_403(
    shared_tw: Tokenward, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """A cookie+header pair from another session (planted by a sibling site) is refused."""
    victim, sid, _ = await _cookie_session(shared_tw)
    attacker, _, _ = await _cookie_session(shared_tw)
    planted = attacker["__Host-csrf_token"]
    cookies = {**victim, "__Host-csrf_token": planted}
    headers = {"X-CSRF-Token": planted, "Origin": ORIGIN}
    r = await _send(shared_tw, method, path.format(sid=sid), body, cookies, headers)
    _assert_csrf_refused(r)
    assert await _still_logged_in(shared_tw, victim)


@pytest.mark.parametrize(("method", "path", "body"), UNSAFE)
async def test_foreign_origin_with_matching_token_is_403(
    shared_tw: Tokenward, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """A foreign Origin is refused even when the CSRF token matches."""
    cookies, sid, _ = await _cookie_session(shared_tw)
    for extra in ({"Origin": "https://evil.test"}, {"Sec-Fetch-Site": "cross-site"}):
        headers = {"X-CSRF-Token": cookies["__Host-csrf_token"], **extra}
        r = await _send(shared_tw, method, path.format(sid=sid), body, cookies, headers)
        _assert_csrf_refused(r)
    assert await _still_logged_in(shared_tw, cookies)


@pytest.mark.parametrize(("method", "path", "body"), UNSAFE)
async def test_matching_token_without_origin_is_accepted(
    shared_tw: Tokenward, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """No Origin header plus a matching CSRF token of this session: accepted."""
    cookies, sid, _ = await _cookie_session(shared_tw)
    headers = {"X-CSRF-Token": cookies["__Host-csrf_token"]}
    r = await _send(shared_tw, method, path.format(sid=sid), body, cookies, headers)
    assert r.status_code in (200, 204), r.text


async def test_safe_cookie_request_needs_no_csrf(shared_tw: Tokenward) -> None:
    """GET requests with cookies need no CSRF header."""
    cookies, _, email = await _cookie_session(shared_tw)
    r = await _send(shared_tw, "GET", "/auth/me", None, cookies, {"Origin": "https://evil.test"})
    assert r.status_code == 200
    assert r.json()["email"] == email


@pytest.mark.parametrize("path", ["/auth/login", "/auth/register"])
@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.test"},
        {"Origin": "null"},
        {"Origin": "http://tokenward.test"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_login_and_register_from_another_site_are_403(
    shared_accounts: Accounts, path: str, headers: dict[str, str]
) -> None:
    """Login CSRF: a foreign Origin or Sec-Fetch-Site: cross-site is refused."""
    email = (
        await shared_accounts.register() if path == "/auth/login" else shared_accounts.new_email()
    )
    r = await shared_accounts.client.post(
        path, json={"email": email, "password": PASSWORD}, headers=headers
    )
    _assert_csrf_refused(r)
    assert not r.headers.get_list("set-cookie")


@pytest.mark.parametrize("path", ["/auth/login", "/auth/register"])
@pytest.mark.parametrize(
    "headers", [{}, {"Origin": ORIGIN}, {"Sec-Fetch-Site": "same-origin", "Origin": ORIGIN}]
)
async def test_login_and_register_without_foreign_origin_are_accepted(
    shared_accounts: Accounts, path: str, headers: dict[str, str]
) -> None:
    """Non-browser clients (no Origin) and our own pages may log in and register."""
    email = (
        await shared_accounts.register() if path == "/auth/login" else shared_accounts.new_email()
    )
    r = await shared_accounts.client.post(
        path, json={"email": email, "password": PASSWORD}, headers=headers
    )
    assert r.status_code in (200, 201), r.text


async def test_bearer_requests_are_exempt_from_csrf(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Bearer-authenticated unsafe requests need no CSRF token, whatever the Origin."""
    email = await accounts.register()
    tokens = await accounts.login_bearer(email)
    keep = await accounts.login_bearer(email)
    auth = {"Authorization": f"Bearer {tokens['access_token']}", "Origin": "https://evil.test"}
    r = await client.delete(f"/auth/sessions/{keep['session']['id']}", headers=auth)
    assert r.status_code == 204, r.text
    assert (await client.post("/auth/logout", headers=auth)).status_code == 204


# ------------------------------------------------------------------ Authorization header


async def test_two_authorization_headers_are_400(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Two Authorization headers are ambiguous: 400 bad-request."""
    tokens = await accounts.login_bearer(await accounts.register())
    value = f"Bearer {tokens['access_token']}"
    r = await client.get("/auth/me", headers=[("Authorization", value), ("Authorization", value)])
    assert r.status_code == 400
    assert r.json()["type"] == PROBLEM + "bad-request"


async def test_bearer_token_wins_over_access_cookie(shared_tw: Tokenward) -> None:
    """With both a bearer token and an access cookie, the bearer token decides."""
    cookies, _, cookie_email = await _cookie_session(shared_tw)
    async with isolated_client(shared_tw) as c:
        accounts = Accounts(c)
        bearer_email = await accounts.register()
        tokens = await accounts.login_bearer(bearer_email)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    r = await _send(shared_tw, "GET", "/auth/me", None, cookies, headers)
    assert r.status_code == 200
    assert r.json()["email"] == bearer_email != cookie_email
    bad = await _send(shared_tw, "GET", "/auth/me", None, cookies, {"Authorization": "Bearer nope"})
    assert bad.status_code == 401, "a bad bearer token must not fall back to the cookie"


async def test_non_bearer_authorization_scheme_is_401(client: httpx.AsyncClient) -> None:
    """``Authorization: Basic ...`` is not a bearer token: 401."""
    r = await client.get("/auth/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401


async def test_401_in_bearer_mode_carries_www_authenticate(client: httpx.AsyncClient) -> None:
    """A refused bearer token gets ``WWW-Authenticate: Bearer error="invalid_token"``."""
    r = await client.get("/auth/me", headers={"Authorization": "Bearer not.a.token"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


# ---------------------------------------------------------------------- every response


async def test_every_auth_response_is_no_store_and_errors_are_problems(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Success or failure, every /auth/* response says Cache-Control: no-store."""
    email = await accounts.register()
    tokens = await accounts.login_bearer(email)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    creds = {"email": email, "password": PASSWORD}
    refresh, json_type = tokens["refresh_token"], "application/json"
    responses = [
        await client.post("/auth/register", json={**creds, "email": accounts.new_email()}),
        await client.post("/auth/register", json=creds),
        await client.post("/auth/register", json={"email": "x", "password": ""}),
        await client.post("/auth/login", json=creds),
        await client.post("/auth/login", json=creds, headers=BEARER),
        await client.post("/auth/login", json={**creds, "password": "wrong password!"}),
        await client.post("/auth/login", content=b"{", headers={"content-type": json_type}),
        await client.post("/auth/refresh", json={"refresh_token": refresh}, headers=BEARER),
        await client.post("/auth/refresh"),
        await client.get("/auth/me", headers=auth),
        await client.get("/auth/me"),
        await client.get("/auth/sessions", headers=auth),
        await client.delete("/auth/sessions/nope", headers=auth),
        await client.post("/auth/logout-all", json={"keep_current": True}, headers=auth),
        await client.post("/auth/logout", headers=auth),
        await client.post("/auth/logout", headers=auth),
        await client.post("/auth/logout", headers=accounts.csrf_headers()),
        await client.get("/auth/no-such-route"),
    ]  # fmt: skip
    for r in responses:
        path = r.request.url.path
        assert r.headers.get("cache-control") == "no-store", (path, r.status_code)
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/problem+json"), path
            body = r.json()
            assert {"type", "title", "status", "detail"} <= set(body), path
            assert body["status"] == r.status_code
            assert body["type"].startswith(PROBLEM)
            for secret in (tokens["access_token"], tokens["refresh_token"], PASSWORD):
                assert secret not in r.text
