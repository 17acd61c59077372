"""Every endpoint's success and failure shapes, as docs/api.md and /openapi.json promise them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from http_support import GENEROUS_LIMITS, ORIGIN, PASSWORD, Accounts, MakeTw, isolated_client
from sqlalchemy import text
from starlette.routing import Route

from ports import free_port
from tokenward.http.app import create_app
from tokenward.passwords import Argon2Params
from tokenward.runtime import Tokenward

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
PROBLEM = "urn:tokenward:problem:"
BEARER = {"X-Auth-Transport": "bearer"}


def _at(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["type"] == PROBLEM + slug
    assert body["status"] == status
    return body


async def _stored_hash(tw: Tokenward, email: str) -> str:
    async with tw.engine.connect() as conn:
        row = await conn.execute(
            text("SELECT password_hash FROM tokenward_users WHERE email = :e"), {"e": email}
        )
        value: str = row.scalar_one()
    return value


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    """This module's service: default settings with the abuse limits out of the way."""
    return await make_tw(**GENEROUS_LIMITS)


# ---------------------------------------------------------------------------- register


async def test_register_answers_201_with_id_email_created_at(
    client: httpx.AsyncClient, tw: Tokenward
) -> None:
    """201 ``{id, email, created_at}`` with an RFC 3339 UTC time; nothing else."""
    r = await client.post(
        "/auth/register", json={"email": "New.User@Example.com", "password": PASSWORD}
    )
    assert r.status_code == 201
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"id", "email", "created_at", "email_verified"}
    assert body["email_verified"] is False
    assert body["email"] == "new.user@example.com"
    assert RFC3339.match(body["created_at"])
    assert body["created_at"] == _at(tw.clock.now())
    assert "set-cookie" not in r.headers


async def test_register_same_email_other_case_is_409(client: httpx.AsyncClient) -> None:
    """Alice@X and alice@x are one address: the second registration is a 409 conflict."""
    r1 = await client.post("/auth/register", json={"email": "Alice@X.test", "password": PASSWORD})
    assert r1.status_code == 201
    r2 = await client.post("/auth/register", json={"email": "alice@x.test", "password": PASSWORD})
    body = _assert_problem(r2, 409, "conflict")
    assert PASSWORD not in r2.text
    assert body["detail"]


async def test_register_stores_an_argon2id_hash(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """The database row holds an argon2id hash, not the password."""
    email = await accounts.register()
    stored = await _stored_hash(tw, email)
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


async def test_register_policy_failure_is_422_without_the_password(
    client: httpx.AsyncClient,
) -> None:
    """A short password is a 422 validation problem naming the rule, never echoing it."""
    r = await client.post("/auth/register", json={"email": "p@x.test", "password": "Sh0rt!"})
    body = _assert_problem(r, 422, "validation")
    assert body.get("rule")
    assert "Sh0rt!" not in r.text


async def test_login_rehashes_when_argon2_parameters_change(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """A second deployment with stronger argon2 parameters upgrades the hash at login."""
    email = await accounts.register()
    before = await _stored_hash(tw, email)
    assert "$m=64,t=1,p=1$" in before
    stronger = Tokenward(tw.settings, clock=tw.clock, argon2=Argon2Params(256, 2, 1))
    await stronger.start()
    try:
        async with isolated_client(stronger) as other:
            r = await other.post("/auth/login", json={"email": email, "password": PASSWORD})
            assert r.status_code == 200, r.text
        after = await _stored_hash(tw, email)
        assert "$m=256,t=2,p=1$" in after
        assert after != before
    finally:
        await stronger.stop()
    # the old deployment still verifies the upgraded hash
    assert (await accounts.login_bearer(email))["access_token"]


# ------------------------------------------------------------------------------- login


async def test_cookie_login_body_has_user_and_session_only(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """Cookie mode: ``{user: {id, email}, session: {id, expires_at}}`` and no token."""
    email = await accounts.register()
    r = await accounts.login_cookie(email)
    body = r.json()
    assert set(body) == {"user", "session"}
    assert set(body["user"]) == {"id", "email"}
    assert body["user"]["email"] == email
    assert set(body["session"]) == {"id", "expires_at"}
    policy = tw.policy
    expected = tw.clock.now() + min(policy.idle_ttl, policy.max_ttl)
    assert body["session"]["expires_at"] == _at(expected)


async def test_bearer_login_body_carries_the_tokens(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """Bearer mode adds access/refresh tokens, token_type, expires_in, refresh_expires_in."""
    email = await accounts.register()
    r = await client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
    )
    assert r.status_code == 200
    assert "set-cookie" not in r.headers
    body = r.json()
    assert set(body) == {
        "user", "session", "access_token", "refresh_token", "token_type", "expires_in",
        "refresh_expires_in",
    }  # fmt: skip
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == tw.settings.access_ttl
    assert body["refresh_expires_in"] == min(tw.policy.idle_ttl, tw.policy.max_ttl)
    assert RFC3339.match(body["session"]["expires_at"])


async def test_unknown_email_and_wrong_password_get_identical_401(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Login never tells whether the account exists: same status, headers and body."""
    email = await accounts.register()
    wrong = await client.post("/auth/login", json={"email": email, "password": PASSWORD + "x"})
    unknown = await client.post(
        "/auth/login", json={"email": "nobody-" + email, "password": PASSWORD}
    )
    _assert_problem(wrong, 401, "invalid-credentials")
    assert wrong.content == unknown.content
    strip = {"date", "content-length", "x-request-id"}  # the request id is per request
    assert {k: v for k, v in wrong.headers.items() if k not in strip} == {
        k: v for k, v in unknown.headers.items() if k not in strip
    }


async def test_malformed_login_bodies_are_precise_4xx(client: httpx.AsyncClient) -> None:
    """Bad JSON 400, wrong media type 415, missing field 422: never a 500."""
    bad_json = await client.post(
        "/auth/login", content=b"{", headers={"content-type": "application/json"}
    )
    _assert_problem(bad_json, 400, "bad-request")
    xml = await client.post(
        "/auth/login", content=b"<a/>", headers={"content-type": "application/xml"}
    )
    _assert_problem(xml, 415, "unsupported-media-type")
    missing = await client.post("/auth/login", json={"email": "a@b.test"})
    _assert_problem(missing, 422, "validation")
    huge = await client.post("/auth/login", json={"email": "a@b.test", "password": "x" * 20_000})
    assert huge.status_code in (413, 422)


@pytest.mark.parametrize("path", ["/auth/register", "/auth/login"])
async def test_password_over_1024_characters_is_422(
    client: httpx.AsyncClient, accounts: Accounts, path: str
) -> None:
    """A password longer than 1024 characters is a 422 (refused before any hashing)."""
    email = await accounts.register() if path == "/auth/login" else accounts.new_email()
    r = await client.post(path, json={"email": email, "password": "p" * 1025})
    body = _assert_problem(r, 422, "validation")
    assert "p" * 1025 not in r.text
    assert body["rule"] == "too-long"


# ----------------------------------------------------------------------------- refresh


async def test_bearer_refresh_answers_the_login_shape(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Refresh returns a new access and refresh token in the same body as login."""
    tokens = await accounts.login_bearer(await accounts.register())
    r = await client.post(
        "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, headers=BEARER
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == set(tokens)
    assert body["refresh_token"] != tokens["refresh_token"]
    assert body["session"]["id"] == tokens["session"]["id"]


async def test_refresh_without_or_with_bad_token_is_401(client: httpx.AsyncClient) -> None:
    """Missing, malformed or unknown refresh tokens are 401 unauthenticated (docs/api.md)."""
    _assert_problem(await client.post("/auth/refresh"), 401, "unauthenticated")
    missing: list[dict[str, Any]] = [
        {},  # no body at all
        {"content": b"", "headers": {"content-type": "application/json"}},
        {"json": {}},
        {"json": {"refresh_token": None}},
    ]
    for token in ("", "garbage", "0" * 32 + "." + "A" * 22 + "." + "A" * 43):
        missing.append({"json": {"refresh_token": token}})
    for kwargs in missing:
        headers = {**BEARER, **kwargs.pop("headers", {})}
        r = await client.post("/auth/refresh", headers=headers, **kwargs)
        _assert_problem(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_bearer_refresh_with_a_malformed_body_is_a_precise_4xx(
    client: httpx.AsyncClient,
) -> None:
    """A token of the wrong type, or a body of the wrong media type, is not a 401."""
    r = await client.post("/auth/refresh", json={"refresh_token": 5}, headers=BEARER)
    assert _assert_problem(r, 422, "validation")["rule"] == "type"
    r = await client.post(
        "/auth/refresh",
        content=b"refresh_token=x",
        headers={**BEARER, "content-type": "text/plain"},
    )
    _assert_problem(r, 415, "unsupported-media-type")
    r = await client.post(
        "/auth/refresh", content=b"{", headers={**BEARER, "content-type": "application/json"}
    )
    _assert_problem(r, 400, "bad-request")


# ------------------------------------------------------------------------------ logout


async def test_bearer_logout_with_authorization_ends_the_session(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """``Authorization: Bearer`` logout: 204, then the access and refresh tokens are dead."""
    tokens = await accounts.login_bearer(await accounts.register())
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    r = await client.post("/auth/logout", headers=auth)
    assert r.status_code == 204
    assert r.content == b""
    _assert_problem(await client.get("/auth/me", headers=auth), 401, "unauthenticated")
    again = await client.post(
        "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, headers=BEARER
    )
    assert again.status_code == 401


async def test_bearer_logout_with_refresh_token_body_ends_the_session(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """A body ``{"refresh_token"}`` logs out a client that has no valid access token."""
    tokens = await accounts.login_bearer(await accounts.register())
    r = await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 204
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await client.get("/auth/me", headers=auth)).status_code == 401


async def test_cookie_logout_clears_all_three_cookies(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Cookie logout answers 204 and expires the access, refresh and CSRF cookies."""
    await accounts.login_cookie(await accounts.register())
    r = await client.post("/auth/logout", headers=accounts.csrf_headers())
    assert r.status_code == 204
    cleared = {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}
    assert set(cleared) == {"__Host-access_token", "__Secure-refresh_token", "__Host-csrf_token"}
    assert all("Max-Age=0" in h for h in cleared.values())
    assert "Path=/auth" in cleared["__Secure-refresh_token"]
    assert (await client.get("/auth/me")).status_code == 401


async def test_logout_ends_only_the_current_session(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Logging out on one device leaves the user's other session working."""
    email = await accounts.register()
    phone, laptop = await accounts.login_bearer(email), await accounts.login_bearer(email)
    phone_auth = {"Authorization": f"Bearer {phone['access_token']}"}
    laptop_auth = {"Authorization": f"Bearer {laptop['access_token']}"}
    assert (await client.post("/auth/logout", headers=phone_auth)).status_code == 204
    assert (await client.get("/auth/me", headers=phone_auth)).status_code == 401
    assert (await client.get("/auth/me", headers=laptop_auth)).status_code == 200
    r = await client.post(
        "/auth/refresh", json={"refresh_token": laptop["refresh_token"]}, headers=BEARER
    )
    assert r.status_code == 200


async def test_logout_without_any_credential_is_401(client: httpx.AsyncClient) -> None:
    """Logout needs to know which session: nothing presented is 401, in either transport."""
    _assert_problem(await client.post("/auth/logout"), 401, "unauthenticated")
    for kwargs in (
        {},
        {"json": {}},
        {"json": {"refresh_token": None}},
        {"json": {"refresh_token": ""}},
    ):
        r = await client.post("/auth/logout", headers=BEARER, **kwargs)
        _assert_problem(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


# ---------------------------------------------------------------------------------- me


async def test_me_answers_id_email_created_at(
    client: httpx.AsyncClient, accounts: Accounts, tw: Tokenward
) -> None:
    """``GET /auth/me`` is ``{id, email, created_at}`` of the token's user."""
    r = await client.post("/auth/register", json={"email": "me@x.test", "password": PASSWORD})
    registered = r.json()
    tokens = await accounts.login_bearer("me@x.test")
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    assert me.json() == registered


async def test_me_without_token_is_401(client: httpx.AsyncClient) -> None:
    """No token: 401 unauthenticated."""
    _assert_problem(await client.get("/auth/me"), 401, "unauthenticated")


# ------------------------------------------------------------------------ public routes


async def test_jwks_serves_only_public_members(client: httpx.AsyncClient, tw: Tokenward) -> None:
    """The JWKS lists every verifying key, public members only, for the signing kid too."""
    r = await client.get("/.well-known/jwks.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    keys = r.json()["keys"]
    assert [k["kid"] for k in keys] == [k.kid for k in tw.keys.keys]
    private_members = {"d", "p", "q", "dp", "dq", "qi", "k"}
    assert all(not (private_members & set(k)) for k in keys)
    assert all(k["alg"] == "EdDSA" and k["use"] == "sig" for k in keys)


async def test_jwks_verifies_an_issued_token(client: httpx.AsyncClient, accounts: Accounts) -> None:
    """A relying party can verify our access token with the published JWKS alone."""
    import jwt

    tokens = await accounts.login_bearer(await accounts.register())
    jwks = (await client.get("/.well-known/jwks.json")).json()
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    public = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        tokens["access_token"], public, algorithms=["EdDSA"], audience="tokenward", issuer=ORIGIN
    )
    assert claims["sid"] == tokens["session"]["id"]


async def test_healthz_is_200(client: httpx.AsyncClient) -> None:
    """The process is alive."""
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


async def test_readyz_is_200_when_backends_answer(client: httpx.AsyncClient) -> None:
    """Redis and the database answer: ready."""
    assert (await client.get("/readyz")).status_code == 200


async def test_readyz_is_503_when_redis_is_down(make_tw: MakeTw) -> None:
    """With Redis unreachable, the service starts but is not ready: 503 unavailable."""
    tw = await make_tw(
        **GENEROUS_LIMITS, redis_url=f"redis://127.0.0.1:{free_port()}/0", backend_timeout=0.5
    )
    async with isolated_client(tw) as c:
        r = await c.get("/readyz")
        _assert_problem(r, 503, "unavailable")
        assert int(r.headers["retry-after"]) >= 1
        assert (await c.get("/healthz")).status_code == 200


# ------------------------------------------------------------------------------ openapi

#: Path prefixes of the API (as opposed to the browser pages the app also serves).
API_PREFIXES = ("/auth/", "/.well-known/", "/healthz", "/readyz", "/metrics")


async def test_openapi_is_a_valid_openapi_31_document(client: httpx.AsyncClient) -> None:
    """/openapi.json validates against the OpenAPI 3.1 schema, its schemas against 2020-12."""
    import jsonschema_rs
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    OPENAPI_31_VALIDATOR.validate(doc)
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                for media in response.get("content", {}).values():
                    schema = media["schema"]
                    if "$ref" not in schema:
                        assert jsonschema_rs.meta.is_valid(schema), (path, method, status)
    components = doc["components"]["schemas"]
    for name, schema in components.items():
        assert jsonschema_rs.meta.is_valid(schema), name
    refs = set(re.findall(r'"#/components/schemas/([A-Za-z]+)"', r.text))
    assert refs <= set(components), refs - set(components)


async def test_openapi_lists_every_api_route_the_app_serves(
    client: httpx.AsyncClient, tw: Tokenward
) -> None:
    """Each API route and method served is documented, and nothing documented is missing."""
    doc = (await client.get("/openapi.json")).json()
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    app = create_app(tw, manage_lifespan=False)
    served = {
        (route.path, method)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith(API_PREFIXES)
        for method in (route.methods or ())
        if method != "HEAD"
    }
    assert served == {d for d in documented if d[0].startswith(API_PREFIXES)}
    assert documented <= served | {(p, m) for p, m in documented if not p.startswith(API_PREFIXES)}


async def test_openapi_error_responses_use_problem_json(client: httpx.AsyncClient) -> None:
    """Every documented 4xx/5xx is application/problem+json."""
    doc = (await client.get("/openapi.json")).json()
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for status, response in op["responses"].items():
                if status[0] in "45":
                    assert set(response["content"]) == {"application/problem+json"}, path


@pytest.mark.parametrize(("method", "path"), [("GET", "/auth/nope"), ("GET", "/no/such/page")])
async def test_unknown_route_is_a_problem_404(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    """Unknown paths answer a problem+json 404, not an HTML page or a 500."""
    r = await client.request(method, path)
    _assert_problem(r, 404, "not-found")
