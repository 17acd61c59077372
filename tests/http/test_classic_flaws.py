"""The classic JWT-and-Redis tutorial's flaws, one test each, against the real service.

The tutorial this project replaces (FastAPI + PyJWT + Redis, "validate_jwt") had these
design flaws; each test below is written so that the tutorial's design would FAIL it:

* predictable refresh tokens (a JWT or a counter-like value instead of CSPRNG bytes);
* refresh tokens stored in plaintext in Redis (``SET refresh:<uid> <token>``);
* one session per user (a second login overwrote the first);
* the refresh and logout endpoints read the user id out of an expired access token
  with ``verify_signature=False``;
* logout took the user id from the request body;
* cookies set with the framework's defaults (no HttpOnly, no Secure, no SameSite);
* a hard-coded signing secret in the source;
* no rotation: the same refresh token worked forever;
* Redis keys without a TTL;
* inverted expiry checks (``if exp > now: raise Expired``).
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_support import GENEROUS_LIMITS, Accounts, MakeTw, isolated_client

import tokenward
from tokenward.runtime import Tokenward

BEARER = {"X-Auth-Transport": "bearer"}
PROBLEM = "urn:tokenward:problem:"


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    """This module's service: default settings with the abuse limits out of the way."""
    return await make_tw(**GENEROUS_LIMITS)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _secret(refresh_token: str) -> bytes:
    return base64.urlsafe_b64decode(refresh_token.rsplit(".", 1)[1] + "=")


def _bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def _user_keys(tw: Tokenward, uid: str) -> list[str]:
    return [k async for k in tw.redis.scan_iter(match=f"*{uid}*", count=1000)]


async def _dump(tw: Tokenward, key: str) -> str:
    kind = await tw.redis.type(key)
    if kind == "hash":
        return json.dumps(await tw.redis.hgetall(key))
    if kind == "zset":
        return json.dumps(await tw.redis.zrange(key, 0, -1, withscores=True))
    if kind == "list":
        return json.dumps(await tw.redis.lrange(key, 0, -1))
    if kind == "set":
        return json.dumps(sorted(await tw.redis.smembers(key)))
    if kind == "string":
        return str(await tw.redis.get(key))
    if kind == "stream":
        return json.dumps(await tw.redis.xrange(key), default=str)
    raise AssertionError(f"{key}: unexpected type {kind}")


async def _refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refresh_token": token}, headers=BEARER)


async def _victim_is_untouched(client: httpx.AsyncClient, victim: dict[str, Any]) -> None:
    me = await client.get("/auth/me", headers=_bearer(victim))
    assert me.status_code == 200, me.text
    sessions = await client.get("/auth/sessions", headers=_bearer(victim))
    assert victim["session"]["id"] in [s["id"] for s in sessions.json()]


# ---------------------------------------------------------------------------- the flaws


async def test_flaw_predictable_refresh_tokens(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Flaw: predictable refresh tokens. 200 logins give unrelated 256-bit random secrets."""
    email = await accounts.register()
    secrets_ = [_secret((await accounts.login_bearer(email))["refresh_token"]) for _ in range(200)]
    assert all(len(s) == 32 for s in secrets_)
    assert len(set(secrets_)) == 200
    prefixes = Counter(s[:4] for s in secrets_)
    assert max(prefixes.values()) == 1, "no shared 32-bit prefix among 200 random secrets"
    ones = sum(bin(b).count("1") for s in secrets_ for b in s)
    assert abs(ones / (200 * 256) - 0.5) < 0.02
    tokens = await accounts.login_bearer(email)
    assert not tokens["refresh_token"].startswith("eyJ"), "a refresh token must not be a JWT"


async def test_flaw_refresh_token_stored_in_plaintext(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """Flaw: plaintext tokens at rest. Redis holds no refresh, access or CSRF token."""
    email = await accounts.register()
    first = await accounts.login_cookie(email)
    csrf = accounts.csrf_headers()["X-CSRF-Token"]
    cookie_refresh = client.cookies.get("__Secure-refresh_token")
    assert cookie_refresh
    rotated = await client.post("/auth/refresh", headers=accounts.csrf_headers())
    assert rotated.status_code == 200
    bearer = await accounts.login_bearer(email)
    uid = first.json()["user"]["id"]
    needles = [
        cookie_refresh, cookie_refresh.rsplit(".", 1)[1], csrf,
        client.cookies.get("__Secure-refresh_token") or "?", bearer["refresh_token"],
        bearer["refresh_token"].rsplit(".", 1)[1], bearer["access_token"],
        bearer["access_token"].rsplit(".", 1)[1], _secret(bearer["refresh_token"]).hex(),
    ]  # fmt: skip
    keys = await _user_keys(tw, uid)
    assert keys
    stored = " ".join([*keys, *[await _dump(tw, k) for k in keys]])
    for needle in needles:
        assert needle not in stored


async def test_flaw_one_session_per_user(client: httpx.AsyncClient, accounts: Accounts) -> None:
    """Flaw: a new login overwrote the old one. Three devices stay logged in side by side."""
    email = await accounts.register()
    devices = [await accounts.login_bearer(email) for _ in range(3)]
    for tokens in devices:
        assert (await client.get("/auth/me", headers=_bearer(tokens))).status_code == 200
        assert (await _refresh(client, tokens["refresh_token"])).status_code == 200
    listed = (await client.get("/auth/sessions", headers=_bearer(devices[0]))).json()
    assert {s["id"] for s in listed} == {d["session"]["id"] for d in devices}
    assert [s["current"] for s in listed].count(True) == 1


def _forged_expired_token(tw: Tokenward, victim: dict[str, Any], kid: str) -> str:
    """An access token for the victim's session, expired, signed with an attacker's key."""
    now = tw.clock.now()
    header = {"alg": "EdDSA", "kid": kid, "typ": "at+jwt"}
    payload = {
        "iss": tw.settings.effective_issuer, "aud": tw.settings.audience,
        "sub": victim["user"]["id"], "sid": victim["session"]["id"],
        "iat": now - 3600, "exp": now - 3000, "jti": _b64(b"x" * 16),
    }  # fmt: skip
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = ed25519.Ed25519PrivateKey.generate().sign(signing_input.encode())
    return f"{signing_input}.{_b64(signature)}"


@pytest.mark.parametrize("kid_source", ["our-kid", "attacker-kid"])
async def test_flaw_trusting_the_user_id_of_an_expired_token(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward, kid_source: str
) -> None:
    """Flaw: reading ``sub`` from an expired token unverified. Forgeries change nothing."""
    victim = await accounts.login_bearer(await accounts.register())
    kid = tw.keys.signing_key.kid if kid_source == "our-kid" else "attacker-key"
    forged = _forged_expired_token(tw, victim, kid)
    auth = {"Authorization": f"Bearer {forged}"}
    attempts = [
        await client.get("/auth/me", headers=auth),
        await client.post("/auth/logout", headers=auth),
        await client.post("/auth/logout-all", headers=auth),
        await client.post("/auth/refresh", json={}, headers={**auth, **BEARER}),
        await client.delete(f"/auth/sessions/{victim['session']['id']}", headers=auth),
    ]
    async with isolated_client(tw) as cookie_client:
        cookie_client.cookies.set("__Host-access_token", forged, domain="tokenward.test")
        attempts += [
            await cookie_client.get("/auth/me"),
            await cookie_client.post("/auth/logout"),
            await cookie_client.post("/auth/refresh"),
        ]
    for r in attempts:
        assert r.status_code in (401, 403, 422), (r.request.url.path, r.status_code)
        assert r.json()["type"] != PROBLEM + "token-expired", "a forgery is not 'expired'"
    await _victim_is_untouched(client, victim)
    assert (await _refresh(client, victim["refresh_token"])).status_code == 200


async def test_flaw_logout_of_a_user_id_from_the_body(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Flaw: logout ended whatever user id the body named. The victim is unaffected."""
    victim = await accounts.login_bearer(await accounts.register())
    attacker = await accounts.login_bearer(await accounts.register())
    named = {"user_id": victim["user"]["id"], "sid": victim["session"]["id"]}
    anonymous = await client.post("/auth/logout", json=named)
    assert anonymous.status_code == 401
    await _victim_is_untouched(client, victim)
    r = await client.post("/auth/logout-all", json={**named}, headers=_bearer(attacker))
    assert r.status_code in (204, 422)
    await _victim_is_untouched(client, victim)
    deleted = await client.delete(
        f"/auth/sessions/{victim['session']['id']}", headers=_bearer(attacker)
    )
    assert deleted.status_code in (401, 404)
    await _victim_is_untouched(client, victim)
    attacker2 = await accounts.login_bearer(attacker["user"]["email"])
    own = await client.post("/auth/logout", json=named, headers=_bearer(attacker2))
    assert own.status_code == 204
    assert (await client.get("/auth/me", headers=_bearer(attacker2))).status_code == 401
    await _victim_is_untouched(client, victim)


async def test_flaw_cookies_without_httponly_secure_samesite(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Flaw: framework-default cookies. All are Secure and SameSite; token cookies HttpOnly."""
    email = await accounts.register()
    login = await accounts.login_cookie(email)
    refreshed = await client.post("/auth/refresh", headers=accounts.csrf_headers())
    for r in (login, refreshed):
        headers = r.headers.get_list("set-cookie")
        assert len(headers) == 3
        for header in headers:
            attrs = {a.strip().split("=")[0].lower() for a in header.split(";")[1:]}
            assert {"secure", "samesite"} <= attrs, header
            if not header.startswith("__Host-csrf_token="):
                assert "httponly" in attrs, header
            assert "samesite=none" not in header.lower().replace(" ", "")
        refresh = next(h for h in headers if h.startswith("__Secure-refresh_token="))
        assert "SameSite=Strict" in refresh
        assert "Path=/auth" in refresh


async def test_flaw_hard_coded_secret(make_tw: MakeTw) -> None:
    """Flaw: one secret in the source. Each deployment has its own key; none ship with us."""
    a, b = await make_tw(**GENEROUS_LIMITS), await make_tw(**GENEROUS_LIMITS)
    assert a.keys.signing_key.kid != b.keys.signing_key.kid
    async with isolated_client(a) as ca, isolated_client(b) as cb:
        accounts = Accounts(ca)
        tokens = await accounts.login_bearer(await accounts.register())
        r = await cb.get("/auth/me", headers=_bearer(tokens))
        assert r.status_code == 401
    _assert_no_key_material_in_the_package()


def _assert_no_key_material_in_the_package() -> None:
    package = Path(tokenward.__file__).resolve().parent
    private_jwk = re.compile(r'"d"\s*:\s*"[A-Za-z0-9_-]{40,}"')
    for path in package.rglob("*"):
        if path.is_dir() or path.suffix in (".pyc", ".xz", ".png", ".ico", ".woff2"):
            continue
        text = path.read_text(errors="ignore")
        assert "PRIVATE KEY" not in text, path
        assert not private_jwk.search(text), path
        assert path.suffix not in (".pem", ".jwks", ".key"), path


async def test_flaw_no_rotation(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """Flaw: a refresh token that works forever. Each refresh replaces it; reuse ends it all."""
    tokens = await accounts.login_bearer(await accounts.register())
    first = await _refresh(client, tokens["refresh_token"])
    assert first.status_code == 200
    newer = first.json()
    assert newer["refresh_token"] != tokens["refresh_token"]
    tw.clock.advance(tw.settings.refresh_grace + 1)  # type: ignore[attr-defined]
    replay = await _refresh(client, tokens["refresh_token"])
    assert replay.status_code == 401
    assert replay.json()["type"] == PROBLEM + "refresh-reused"
    for live in (tokens, newer):
        assert (await client.get("/auth/me", headers=_bearer(live))).status_code == 401
    assert (await _refresh(client, newer["refresh_token"])).status_code == 401


async def test_flaw_redis_keys_without_ttl(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """Flaw: immortal Redis keys. After login, refresh, logout and reuse, every key expires."""
    email = await accounts.register()
    a = await accounts.login_bearer(email)
    b = await accounts.login_bearer(email)
    rotated = (await _refresh(client, a["refresh_token"])).json()
    await client.post("/auth/logout", headers=_bearer(b))
    await client.post("/auth/login", json={"email": email, "password": "wrong password!!"})
    tw.clock.advance(tw.settings.refresh_grace + 1)  # type: ignore[attr-defined]
    assert (await _refresh(client, a["refresh_token"])).status_code == 401
    assert rotated["refresh_token"]
    keys = await _user_keys(tw, a["user"]["id"])
    assert keys
    every = [k async for k in tw.redis.scan_iter(match="tw:*", count=1000)]
    for key in {*keys, *every}:
        # -1 is a key without a TTL. The scan covers every test's keys in this Redis: one
        # in its last second answers 0 (TTL rounds down), one gone meanwhile -2.
        ttl = await tw.redis.ttl(key)
        assert ttl != -1, f"{key} has no TTL"


async def test_flaw_inverted_expiry_checks(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """Flaw: inverted exp test. Valid until exp + leeway, refused one second later."""
    tokens = await accounts.login_bearer(await accounts.register())
    ttl, leeway = tw.settings.access_ttl, tw.settings.leeway
    tw.clock.advance(ttl - 1)  # type: ignore[attr-defined]
    assert (await client.get("/auth/me", headers=_bearer(tokens))).status_code == 200
    tw.clock.advance(1 + leeway)  # type: ignore[attr-defined]  # exactly exp + leeway
    assert (await client.get("/auth/me", headers=_bearer(tokens))).status_code == 200
    tw.clock.advance(1)  # type: ignore[attr-defined]
    late = await client.get("/auth/me", headers=_bearer(tokens))
    assert late.status_code == 401
    assert late.json()["type"] == PROBLEM + "token-expired"


async def test_flaw_session_past_its_absolute_limit(make_tw: MakeTw) -> None:
    """Flaw: sliding sessions forever. Past the absolute limit neither refresh nor access work."""
    tw = await make_tw(**GENEROUS_LIMITS, session_idle_ttl=700, session_max_ttl=700)
    async with isolated_client(tw) as client:
        accounts = Accounts(client)
        tokens = await accounts.login_bearer(await accounts.register())
        tw.clock.advance(650)  # type: ignore[attr-defined]
        r = await _refresh(client, tokens["refresh_token"])
        assert r.status_code == 200
        assert r.json()["refresh_expires_in"] == 50
        fresh = r.json()
        assert (await client.get("/auth/me", headers=_bearer(fresh))).status_code == 200
        tw.clock.advance(50)  # type: ignore[attr-defined]  # the absolute limit
        assert (await _refresh(client, fresh["refresh_token"])).status_code == 401
        assert (await client.get("/auth/me", headers=_bearer(fresh))).status_code == 401
