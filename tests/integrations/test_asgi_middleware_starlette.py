"""TokenwardMiddleware in front of a plain Starlette app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from tokenward.integrations.asgi import TokenwardMiddleware, get_principal
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

ORIGIN = "https://app.test"


def starlette_app(tw: Tokenward, *, lifespan: Any = None, **options: Any) -> TokenwardMiddleware:
    async def private(request: Request) -> JSONResponse:
        principal = request.state.tokenward
        return JSONResponse({"uid": principal.uid, "sid": principal.sid})

    async def public(request: Request) -> JSONResponse:
        principal = get_principal(request.scope)
        return JSONResponse({"signed_in": principal is not None})

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"uid": websocket.state.tokenward.uid})
        await websocket.close()

    app = Starlette(
        routes=[
            Route("/private/things", private, methods=["GET", "POST"]),
            Route("/privately", public),
            Route("/public", public),
            WebSocketRoute("/private/ws", socket),
        ],
        lifespan=lifespan,
    )
    return TokenwardMiddleware(app, tw, **options)


@pytest.fixture
async def client(tw: Tokenward) -> AsyncIterator[httpx.AsyncClient]:
    app = starlette_app(tw, protect=["/private"], serve_routes=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        yield c


async def test_protected_path_needs_a_token(client: httpx.AsyncClient) -> None:
    """The middleware answers 401 problem+json itself; the route never runs."""
    r = await client.get("/private/things")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "urn:tokenward:problem:unauthenticated"


async def test_protected_path_gets_the_principal(client: httpx.AsyncClient, accounts: Any) -> None:
    """A valid bearer token reaches the route with request.state.tokenward set."""
    email = await accounts.register(client)
    tokens = await accounts.login_bearer(client, email)
    r = await client.get(
        "/private/things", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert r.status_code == 200
    assert r.json() == {"uid": tokens["user"]["id"], "sid": tokens["session"]["id"]}


async def test_prefixes_match_whole_segments(client: httpx.AsyncClient) -> None:
    """'/private' protects /private/... but not /privately; unprotected paths see no principal."""
    assert (await client.get("/privately")).json() == {"signed_in": False}
    assert (await client.get("/public")).status_code == 200


async def test_cookie_csrf_enforced_by_the_middleware(
    client: httpx.AsyncClient, accounts: Any
) -> None:
    """A cookie-authenticated POST without the CSRF header is refused with 403 csrf."""
    await accounts.login_cookie(client)
    assert (await client.get("/private/things")).status_code == 200
    refused = await client.post("/private/things")
    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:tokenward:problem:csrf"
    assert (
        await client.post("/private/things", headers=accounts.csrf_headers(client))
    ).status_code == 200


async def test_ended_session_refused_at_once(client: httpx.AsyncClient, accounts: Any) -> None:
    """After logout the middleware refuses the still-unexpired access token."""
    auth = await accounts.bearer(client)
    assert (await client.post("/auth/logout", headers=auth)).status_code == 204
    assert (await client.get("/private/things", headers=auth)).status_code == 401


async def test_predicate_protection(tw: Tokenward, accounts: Any) -> None:
    """protect may be a predicate on the scope (here: only unsafe methods are protected)."""
    app = starlette_app(tw, protect=lambda scope: scope["method"] == "POST", serve_routes=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        assert (await c.get("/public")).status_code == 200
        assert (await c.post("/private/things")).status_code == 401


async def test_without_serve_routes_auth_paths_reach_the_host(tw: Tokenward) -> None:
    """serve_routes=False leaves /auth/* to the wrapped app (here: its 404)."""
    app = starlette_app(tw, protect=["/private"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        r = await c.post("/auth/login", json={})
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("text/plain")


def test_protect_must_not_be_a_bare_string(tw: Tokenward) -> None:
    """protect="/api" would silently protect one-letter prefixes: refused."""
    with pytest.raises(TypeError):
        TokenwardMiddleware(Starlette(), tw, protect="/api")


def test_websocket_handshake_is_authenticated(redis_url: str, tmp_path: Path) -> None:
    """A WebSocket to a protected path is closed (1008) without a token, accepted with one."""
    settings = load_settings(
        {
            "TOKENWARD_REDIS_URL": redis_url,
            "TOKENWARD_DATA_DIR": str(tmp_path / "data"),
            "TOKENWARD_ISSUER": "http://testserver",
            "TOKENWARD_REGISTER_IP_LIMIT": "1000000",  # many registrations from one address
        },
        env_file=tmp_path / "no.env",
    )
    # Started by the app's lifespan: TestClient runs the app on its own event loop.
    tw = Tokenward(settings, argon2=CHEAP_FOR_TESTS)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await tw.start()
        yield
        await tw.stop()

    app = starlette_app(tw, lifespan=lifespan, protect=["/private"], serve_routes=True)
    password = "violet tractor 42 umbrella"
    with TestClient(app, base_url="http://testserver") as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/private/ws"):
            pass
        assert refused.value.code == 1008
        email = "ws-user@example.com"
        assert (
            client.post("/auth/register", json={"email": email, "password": password}).status_code
            == 201
        )
        r = client.post(
            "/auth/login",
            json={"email": email, "password": password},
            headers={"X-Auth-Transport": "bearer"},
        )
        token = r.json()["access_token"]
        with client.websocket_connect(
            "/private/ws", headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            assert ws.receive_json() == {"uid": r.json()["user"]["id"]}


async def test_other_well_known_paths_stay_the_hosts(tw: Tokenward) -> None:
    """serve_routes takes /.well-known/jwks.json only: security.txt and friends are the host's."""

    async def security_txt(request: Request) -> PlainTextResponse:
        return PlainTextResponse("Contact: mailto:security@app.test")

    host = Starlette(routes=[Route("/.well-known/security.txt", security_txt)])
    app = TokenwardMiddleware(host, tw, protect=["/api"], serve_routes=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        assert (await c.get("/.well-known/jwks.json")).json()["keys"]
        r = await c.get("/.well-known/security.txt")
        assert r.status_code == 200
        assert r.text.startswith("Contact:")
