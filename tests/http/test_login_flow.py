"""The whole login flow through the HTTP contract, in both transports."""

from __future__ import annotations

import httpx
from http_support import ORIGIN, Accounts

from tokenward.runtime import Tokenward


async def test_bearer_flow_register_login_me_refresh_logout(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """A bearer client registers, logs in, reads /me, refreshes and logs out."""
    email = await accounts.register()
    tokens = await accounts.login_bearer(email)
    assert tokens["token_type"] == "Bearer"
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    me = await client.get("/auth/me", headers=auth)
    assert me.status_code == 200
    assert me.json()["email"] == email
    r = await client.post(
        "/auth/refresh",
        json={"refresh_token": tokens["refresh_token"]},
        headers={"X-Auth-Transport": "bearer"},
    )
    assert r.status_code == 200
    assert r.json()["refresh_token"] != tokens["refresh_token"]
    out = await client.post("/auth/logout", headers=auth)
    assert out.status_code == 204
    after = await client.get("/auth/me", headers=auth)
    assert after.status_code == 401
    assert after.json()["type"] == "urn:tokenward:problem:unauthenticated"


async def test_cookie_flow_sets_cookies_and_hides_tokens(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Cookie mode: tokens only in cookies, /me works, refresh needs CSRF, logout clears."""
    email = await accounts.register()
    r = await accounts.login_cookie(email)
    assert "access_token" not in r.json()
    assert "refresh_token" not in r.json()
    assert (await client.get("/auth/me")).status_code == 200
    no_csrf = await client.post("/auth/refresh")
    assert no_csrf.status_code == 403
    ok = await client.post("/auth/refresh", headers=accounts.csrf_headers())
    assert ok.status_code == 200, ok.text
    out = await client.post("/auth/logout", headers=accounts.csrf_headers())
    assert out.status_code == 204
    assert (await client.get("/auth/me")).status_code == 401


async def test_second_device_login_keeps_first_session(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Classic flaw: one session per user. A second login must not end the first."""
    email = await accounts.register()
    first = await accounts.login_bearer(email)
    second = await accounts.login_bearer(email)
    for tokens in (first, second):
        r = await client.get(
            "/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert r.status_code == 200


async def test_jwks_serves_public_members_only(client: httpx.AsyncClient, tw: Tokenward) -> None:
    """The JWKS carries kid/alg/public key and no private member."""
    keys = (await client.get("/.well-known/jwks.json")).json()["keys"]
    assert keys
    assert all("d" not in k for k in keys)
    assert keys[-1]["kid"] == tw.keys.signing_key.kid
    assert ORIGIN.startswith("https://")
