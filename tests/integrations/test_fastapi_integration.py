"""The FastAPI integration: Tokenward's routes inside a host app, and its dependencies.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at run
time, and ``User`` below is a local alias.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from tokenward.errors import ConfigError
from tokenward.integrations.fastapi import TokenwardFastAPI
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.sessions import Principal, UserRef
from tokenward.settings import load_settings
from tw_factory import TokenwardFactory

ORIGIN = "https://app.test"


def build_app(tw: Tokenward, **options: Any) -> tuple[FastAPI, TokenwardFastAPI]:
    """A host app with one route per dependency, Tokenward installed."""
    grants: dict[str, Collection[str]] = {}

    async def scopes_for(principal: Principal) -> Collection[str]:
        return grants.get(principal.uid, ())

    auth = TokenwardFastAPI(tw, scopes_for=scopes_for)
    app = FastAPI()
    app.state.grants = grants
    User = Annotated[UserRef, Depends(auth.current_user)]  # noqa: N806 - a type alias

    @app.get("/me")
    async def me(user: User) -> dict[str, str]:
        return {"id": user.id, "email": user.email}

    @app.post("/me")
    async def post_me(user: User) -> dict[str, str]:
        return {"id": user.id}

    @app.get("/session")
    async def session(
        principal: Annotated[Principal, Depends(auth.current_session)],
    ) -> dict[str, str]:
        return {"sid": principal.sid, "uid": principal.uid}

    @app.get("/maybe")
    async def maybe(user: Annotated[UserRef | None, Depends(auth.optional_user)]) -> dict[str, Any]:
        return {"user": user.email if user else None}

    @app.delete("/admin")
    async def admin(
        principal: Annotated[Principal, Depends(auth.require_scope("notes:admin"))],
    ) -> dict[str, str]:
        return {"ok": principal.uid}

    @app.get("/public")
    async def public() -> dict[str, str]:
        return {"hello": "world"}

    auth.install(app, **options)
    return app, auth


@pytest.fixture
async def host(tw: Tokenward) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app, _ = build_app(tw, manage_lifespan=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as client:
        yield app, client


async def test_auth_routes_are_served_inside_the_host_app(
    host: tuple[FastAPI, httpx.AsyncClient], accounts: Any
) -> None:
    """Register, login and /auth/me work at /auth/* of the host app, with the server's bodies."""
    _, client = host
    email = await accounts.register(client)
    tokens = await accounts.login_bearer(client, email)
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == email
    assert me.headers["cache-control"] == "no-store"
    jwks = await client.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    assert jwks.json()["keys"]


async def test_auth_route_errors_are_problems_even_for_405(
    host: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    """Tokenward's routes keep the server's error mapping inside FastAPI (not FastAPI's JSON)."""
    _, client = host
    wrong_method = await client.get("/auth/login")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"] == "application/problem+json"
    unknown = await client.get("/auth/nope")
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "urn:tokenward:problem:not-found"


async def test_host_routes_untouched(host: tuple[FastAPI, httpx.AsyncClient]) -> None:
    """Routes without a dependency answer as before; FastAPI's own 404 stays FastAPI's."""
    _, client = host
    assert (await client.get("/public")).json() == {"hello": "world"}
    assert (await client.get("/elsewhere")).status_code == 404


async def test_current_user_with_bearer_token(
    host: tuple[FastAPI, httpx.AsyncClient], accounts: Any
) -> None:
    """current_user gives id and email (from the user store), current_session its ids."""
    _, client = host
    email = await accounts.register(client)
    tokens = await accounts.login_bearer(client, email)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    me = await client.get("/me", headers=auth)
    assert me.status_code == 200
    assert me.json() == {"id": tokens["user"]["id"], "email": email}
    session = await client.get("/session", headers=auth)
    assert session.json() == {"sid": tokens["session"]["id"], "uid": tokens["user"]["id"]}


async def test_current_session_needs_no_database_current_user_does(
    redis_url: str, tmp_path: Path
) -> None:
    """With the user database down (a closed PostgreSQL port), a session opened before the
    outage still passes current_session (200: Redis only), while current_user, which reads
    the user store for the e-mail address, is 503 unavailable, never 500 or 401."""
    factory = TokenwardFactory(redis_url, tmp_path, issuer=ORIGIN)
    tw = await asyncio.wait_for(factory.make_without_database(backend_timeout=5), 10)
    try:
        now = tw.clock.now()
        uid = uuid.uuid4().hex  # the run shares one Redis: a user of this test alone
        issued = await tw.sessions.open(
            UserRef(uid, "db-down@example.com", now), ip="10.0.0.2", user_agent="t", now=now
        )
        app, _ = build_app(tw, manage_lifespan=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            auth = {"Authorization": f"Bearer {issued.access_token}"}
            session = await client.get("/session", headers=auth)
            assert session.status_code == 200, session.text
            assert session.json() == {"sid": issued.sid, "uid": uid}
            me = await asyncio.wait_for(client.get("/me", headers=auth), 10)
            assert me.status_code == 503, me.text
            assert me.json()["type"] == "urn:tokenward:problem:unavailable"
    finally:
        await factory.stop_all()


async def test_missing_token_is_a_401_problem_with_bearer_challenge(
    host: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    """No credentials: 401 unauthenticated, problem+json from the server's mapping."""
    _, client = host
    r = await client.get("/me")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "urn:tokenward:problem:unauthenticated"
    bad = await client.get("/me", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_expired_token_says_token_expired(
    host: tuple[FastAPI, httpx.AsyncClient], tw: Tokenward, accounts: Any
) -> None:
    """An expired access token is 401 token-expired, so the client knows to refresh."""
    _, client = host
    auth = await accounts.bearer(client)
    tw.clock.advance(tw.tokens.ttl + tw.settings.leeway + 1)  # type: ignore[attr-defined]
    r = await client.get("/me", headers=auth)
    assert r.status_code == 401
    assert r.json()["type"] == "urn:tokenward:problem:token-expired"


async def test_logout_is_effective_at_once_in_the_host_app(
    host: tuple[FastAPI, httpx.AsyncClient], accounts: Any
) -> None:
    """After /auth/logout the same access token is refused by the host's routes."""
    _, client = host
    auth = await accounts.bearer(client)
    assert (await client.get("/me", headers=auth)).status_code == 200
    assert (await client.post("/auth/logout", headers=auth)).status_code == 204
    r = await client.get("/me", headers=auth)
    assert r.status_code == 401


async def test_cookie_mode_needs_csrf_on_unsafe_methods(
    host: tuple[FastAPI, httpx.AsyncClient], accounts: Any
) -> None:
    """Cookie-authenticated POST without X-CSRF-Token is 403 csrf; with it, 200."""
    _, client = host
    await accounts.login_cookie(client)
    assert (await client.get("/me")).status_code == 200
    refused = await client.post("/me")
    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:tokenward:problem:csrf"
    ok = await client.post("/me", headers=accounts.csrf_headers(client))
    assert ok.status_code == 200


async def test_optional_user(host: tuple[FastAPI, httpx.AsyncClient], accounts: Any) -> None:
    """optional_user: None without credentials, the user with them, 401 for a bad token."""
    _, client = host
    assert (await client.get("/maybe")).json() == {"user": None}
    email = await accounts.register(client)
    tokens = await accounts.login_bearer(client, email)
    r = await client.get("/maybe", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.json() == {"user": email}
    bad = await client.get("/maybe", headers={"Authorization": "Bearer forged"})
    assert bad.status_code == 401


async def test_require_scope_asks_the_app(
    host: tuple[FastAPI, httpx.AsyncClient], accounts: Any
) -> None:
    """require_scope: 403 forbidden until scopes_for grants the scope, then 200."""
    app, client = host
    email = await accounts.register(client)
    tokens = await accounts.login_bearer(client, email)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    refused = await client.delete("/admin", headers=auth)
    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:tokenward:problem:forbidden"
    assert (await client.delete("/admin")).status_code == 401
    app.state.grants[tokens["user"]["id"]] = {"notes:admin", "other"}
    assert (await client.delete("/admin", headers=auth)).status_code == 200


def test_require_scope_without_resolver_fails_at_definition(tw: Tokenward) -> None:
    """Declaring a scope check with nothing to answer it is a start-up error, not a 500."""
    with pytest.raises(ConfigError):
        TokenwardFastAPI(tw).require_scope("x")


async def test_transparent_refresh_sets_new_cookies_on_host_routes(
    make_tw: Any, accounts: Any
) -> None:
    """With transparent refresh, a host route refreshes an expired cookie and sets new ones."""
    tw = await make_tw(transparent_refresh="true")
    app, _ = build_app(tw, manage_lifespan=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as client:
        await accounts.login_cookie(client)
        old_access = client.cookies.get("__Host-access_token")
        tw.clock.advance(tw.tokens.ttl + tw.settings.leeway + 1)
        client.cookies.delete("__Host-access_token")  # the browser dropped it at Max-Age
        r = await client.get("/me")
        assert r.status_code == 200, r.text
        set_cookies = r.headers.get_list("set-cookie")
        assert any(c.startswith("__Host-access_token=") for c in set_cookies)
        assert client.cookies.get("__Host-access_token") not in (None, old_access)


def test_install_runs_the_service_with_the_app_lifespan(redis_url: str, tmp_path: Any) -> None:
    """install() starts Tokenward before the app's own lifespan and stops it after."""

    settings = load_settings(
        {
            "TOKENWARD_REDIS_URL": redis_url,
            "TOKENWARD_DATA_DIR": str(tmp_path / "data"),
            "TOKENWARD_ISSUER": "http://testserver",
            "TOKENWARD_REGISTER_IP_LIMIT": "1000000",  # many registrations from one address
        },
        env_file=tmp_path / "no.env",
    )
    tw = Tokenward(settings, argon2=CHEAP_FOR_TESTS)
    seen: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await tw.check_ready()  # already started: the host's startup can use it
        seen.append("up")
        yield
        seen.append("down")

    app = FastAPI(lifespan=lifespan)
    TokenwardFastAPI(tw).install(app)
    with TestClient(app) as client:
        assert client.get("/.well-known/jwks.json").status_code == 200
        r = client.post(
            "/auth/register",
            json={"email": "a@example.com", "password": "violet tractor 42 umbrella"},
        )
        assert r.status_code == 201, r.text
    assert seen == ["up", "down"]
    assert not tw._started
