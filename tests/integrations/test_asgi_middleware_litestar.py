"""TokenwardMiddleware with Litestar: wrapping the whole app, or in Litestar's middleware list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, get, post
from litestar.middleware import DefineMiddleware

from tokenward.integrations.asgi import TokenwardMiddleware
from tokenward.runtime import Tokenward

ORIGIN = "https://app.test"


@get("/notes")
async def list_notes(request: Request[Any, Any, Any]) -> dict[str, str]:
    principal = request.state.tokenward
    return {"uid": principal.uid}


@post("/notes", status_code=201)
async def add_note(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {"uid": request.state.tokenward.uid}


@get("/open")
async def open_route() -> dict[str, bool]:
    return {"open": True}


def litestar_app(**kwargs: Any) -> Litestar:
    return Litestar(route_handlers=[list_notes, add_note, open_route], **kwargs)


@pytest.fixture
async def wrapped(tw: Tokenward) -> AsyncIterator[httpx.AsyncClient]:
    """The whole Litestar app behind the middleware, which also serves /auth/*."""
    app = TokenwardMiddleware(litestar_app(), tw, protect=["/notes"], serve_routes=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        yield c


async def test_litestar_protected_route_401_without_token(wrapped: httpx.AsyncClient) -> None:
    """No token: the middleware's 401 problem, not Litestar's error format."""
    r = await wrapped.get("/notes")
    assert r.status_code == 401
    assert r.json()["type"] == "urn:tokenward:problem:unauthenticated"
    assert (await wrapped.get("/open")).json() == {"open": True}


async def test_litestar_handler_reads_principal_from_state(
    wrapped: httpx.AsyncClient, accounts: Any
) -> None:
    """request.state.tokenward carries the principal into a Litestar handler."""
    email = await accounts.register(wrapped)
    tokens = await accounts.login_bearer(wrapped, email)
    r = await wrapped.get("/notes", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 200
    assert r.json() == {"uid": tokens["user"]["id"]}


async def test_litestar_cookie_mode_csrf(wrapped: httpx.AsyncClient, accounts: Any) -> None:
    """Cookie mode through Litestar: POST needs X-CSRF-Token."""
    await accounts.login_cookie(wrapped)
    assert (await wrapped.post("/notes")).status_code == 403
    assert (await wrapped.post("/notes", headers=accounts.csrf_headers(wrapped))).status_code == 201


async def test_litestar_middleware_list(tw: Tokenward, accounts: Any) -> None:
    """As a Litestar middleware (runs per matched route), with Tokenward served separately."""
    from tokenward.http.app import create_app

    app = litestar_app(
        middleware=[DefineMiddleware(TokenwardMiddleware, tw=tw, protect=["/notes"])]
    )
    auth_app = create_app(tw, manage_lifespan=False)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as client,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=auth_app), base_url=ORIGIN) as auth,
    ):
        assert (await client.get("/notes")).status_code == 401
        email = await accounts.register(auth)
        tokens = await accounts.login_bearer(auth, email)
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (await client.get("/notes", headers=bearer)).json() == {"uid": tokens["user"]["id"]}
        assert (await auth.post("/auth/logout", headers=bearer)).status_code == 204
        assert (await client.get("/notes", headers=bearer)).status_code == 401
