"""Requiring a second factor or a recent authentication on a host app's routes: the
FastAPI dependencies and the middleware options (docs/mfa.md), each refusing with its own
problem type until the session steps up with ``POST /auth/reauthenticate``.

No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run time.
"""

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenward.clock import FrozenClock
from tokenward.integrations.asgi import TokenwardMiddleware
from tokenward.integrations.fastapi import TokenwardFastAPI
from tokenward.mfa import TOTP_PERIOD, totp_code
from tokenward.runtime import Tokenward
from tokenward.sessions import Principal

ORIGIN = "https://app.test"
PROBLEM = "urn:tokenward:problem:"
BEARER = {"X-Auth-Transport": "bearer"}


def fastapi_app(tw: Tokenward) -> FastAPI:
    auth = TokenwardFastAPI(tw)
    app = FastAPI()

    @app.get("/admin")
    async def admin(session: Annotated[Principal, Depends(auth.require_mfa())]) -> dict[str, Any]:
        return {"amr": list(session.claims.amr)}

    @app.get("/billing")
    async def billing(
        session: Annotated[Principal, Depends(auth.require_recent_auth(60))],
    ) -> dict[str, Any]:
        return {"auth_time": session.claims.auth_time}

    @app.get("/vault")
    async def vault(
        session: Annotated[Principal, Depends(auth.require_mfa(max_age=60))],
    ) -> dict[str, str]:
        return {"uid": session.uid}

    auth.install(app, manage_lifespan=False)
    return app


def starlette_app(tw: Tokenward) -> TokenwardMiddleware:
    async def handler(request: Request) -> JSONResponse:
        return JSONResponse({"uid": request.state.tokenward.uid})

    app = Starlette(
        routes=[Route("/admin", handler), Route("/billing", handler), Route("/vault", handler)]
    )
    # /vault needs both: a second factor and, with max_auth_age, a recent one.
    return TokenwardMiddleware(
        app,
        tw,
        serve_routes=True,
        require_mfa=["/admin", "/vault"],
        require_recent_auth=["/billing", "/vault"],
        max_auth_age=60,
    )


@pytest.fixture
async def clock_tw(make_tw: Any) -> tuple[Tokenward, FrozenClock]:
    clock = FrozenClock(int(time.time()))
    return await make_tw(clock=clock, login_pair_limit=1000, login_ip_limit=1000), clock


@pytest.fixture(params=["fastapi", "middleware"])
async def host(
    request: pytest.FixtureRequest, clock_tw: tuple[Tokenward, FrozenClock]
) -> AsyncIterator[httpx.AsyncClient]:
    tw, _ = clock_tw
    app: Any = fastapi_app(tw) if request.param == "fastapi" else starlette_app(tw)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c:
        yield c


def _slug(r: httpx.Response) -> str:
    assert r.status_code == 403, r.text
    return str(r.json()["type"]).removeprefix(PROBLEM)


async def test_routes_refuse_until_the_session_steps_up(
    host: httpx.AsyncClient, clock_tw: tuple[Tokenward, FrozenClock], accounts: Any
) -> None:
    _, clock = clock_tw
    email = await accounts.register(host)
    login = await accounts.login_bearer(host, email)
    auth = {"Authorization": f"Bearer {login['access_token']}"}

    # A password session: recent enough, but no second factor.
    assert (await host.get("/billing", headers=auth)).status_code == 200
    assert _slug(await host.get("/admin", headers=auth)) == "mfa-required"
    assert _slug(await host.get("/vault", headers=auth)) == "mfa-required"
    clock.advance(61)
    assert _slug(await host.get("/billing", headers=auth)) == "reauthentication-required"

    # Enrol a factor (a recent authentication first: the password again).
    r = await host.post("/auth/reauthenticate", json={"password": accounts.password}, headers=auth)
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert (await host.get("/billing", headers=auth)).status_code == 200
    secret = (await host.post("/auth/mfa/totp/enroll", headers=auth)).json()["secret"]
    code = totp_code(secret, clock.now() // TOTP_PERIOD)
    r = await host.post("/auth/mfa/totp/confirm", json={"code": code}, headers=auth)
    assert r.status_code == 200, r.text
    assert _slug(await host.get("/admin", headers=auth)) == "mfa-required"

    # Step up with a code: the session is multi-factor now, and recent.
    clock.advance(TOTP_PERIOD)
    code = totp_code(secret, clock.now() // TOTP_PERIOD)
    r = await host.post("/auth/reauthenticate", json={"code": code}, headers=auth)
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    for path in ("/admin", "/billing", "/vault"):
        assert (await host.get(path, headers=auth)).status_code == 200, path

    # Later: still multi-factor, no longer recent.
    clock.advance(61)
    assert (await host.get("/admin", headers=auth)).status_code == 200
    assert _slug(await host.get("/vault", headers=auth)) == "reauthentication-required"
    assert _slug(await host.get("/billing", headers=auth)) == "reauthentication-required"


async def test_a_second_factor_login_passes_require_mfa(
    host: httpx.AsyncClient, clock_tw: tuple[Tokenward, FrozenClock], accounts: Any
) -> None:
    """A login through the challenge (no step-up) carries mfa from the start."""
    _, clock = clock_tw
    email = await accounts.register(host)
    auth = {"Authorization": f"Bearer {(await accounts.login_bearer(host, email))['access_token']}"}
    secret = (await host.post("/auth/mfa/totp/enroll", headers=auth)).json()["secret"]
    code = totp_code(secret, clock.now() // TOTP_PERIOD)
    await host.post("/auth/mfa/totp/confirm", json={"code": code}, headers=auth)
    clock.advance(TOTP_PERIOD)
    first = await host.post(
        "/auth/login", json={"email": email, "password": accounts.password}, headers=BEARER
    )
    code = totp_code(secret, clock.now() // TOTP_PERIOD)
    second = await host.post(
        "/auth/login/mfa",
        json={"challenge": first.json()["challenge"], "code": code},
        headers=BEARER,
    )
    assert second.status_code == 200, second.text
    auth = {"Authorization": f"Bearer {second.json()['access_token']}"}
    assert (await host.get("/admin", headers=auth)).status_code == 200
    assert (await host.get("/vault", headers=auth)).status_code == 200
