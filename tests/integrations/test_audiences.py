"""Audiences per service: a token minted for one service is refused by every other one.

The deployment names two services (``TOKENWARD_AUDIENCES=notes,billing``). A client signed
in to the real Tokenward server (uvicorn on 127.0.0.1) asks ``POST /auth/token`` for a token
for each; the verifiers of the two services, fed by the server's JWKS and Redis, and the two
integrations (the ASGI middleware, the FastAPI dependencies) each accept only their own.

No ``from __future__ import annotations``: FastAPI reads the route annotations at run time.
"""

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenward import AsyncVerifier
from tokenward.errors import ConfigError, SessionEnded, TokenInvalid
from tokenward.http.app import create_app
from tokenward.integrations.asgi import TokenwardMiddleware, get_principal
from tokenward.integrations.fastapi import TokenwardFastAPI
from tokenward.runtime import Tokenward
from tokenward.sessions import UserRef
from tokenward.settings import load_settings
from waiting import await_until

APP_ORIGIN = "https://app.test"  # the folder fixtures' issuer
SERVICES = ("notes", "billing")
BEARER = {"X-Auth-Transport": "bearer"}
#: Users (sessions) per run: each gets a token for both services and the cross checks.
ROUNDS = 8


@dataclass
class Deployment:
    tw: Tokenward
    url: str
    client: httpx.AsyncClient
    accounts: Any  # the folder's AppAccounts

    async def login(self) -> dict[str, Any]:
        accounts = self.accounts
        return await accounts.login_bearer(self.client, await accounts.register(self.client))

    async def service_token(self, access: str, audience: Any) -> httpx.Response:
        return await self.client.post(
            "/auth/token",
            json={"audience": audience},
            headers={"Authorization": f"Bearer {access}"},
        )


@pytest.fixture
async def deployment(
    make_tw: Callable[..., Awaitable[Tokenward]], accounts: Any
) -> AsyncIterator[Deployment]:
    tw = await make_tw(audiences=",".join(SERVICES))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(tw, manage_lifespan=False)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await await_until(lambda: server.started, within=10.0, what="Tokenward listens")
    async with httpx.AsyncClient(base_url=url) as client:
        yield Deployment(tw, url, client, accounts)
    server.should_exit = True
    await task
    sock.close()


def _verifier(d: Deployment, audience: str, redis_url: str) -> AsyncVerifier:
    return AsyncVerifier(
        APP_ORIGIN,
        audience=audience,
        jwks_url=f"{d.url}/.well-known/jwks.json",
        redis_url=redis_url,
        clock=d.tw.clock,
    )


async def test_a_token_for_one_service_is_refused_by_the_other(
    deployment: Deployment, redis_url: str
) -> None:
    """notes accepts notes tokens only, billing billing tokens only; Tokenward neither."""
    d = deployment
    accepted = refused = 0
    async with (
        _verifier(d, "notes", redis_url) as notes,
        _verifier(d, "billing", redis_url) as billing,
        _verifier(d, "tokenward", redis_url) as own,
    ):
        verifiers = {"notes": notes, "billing": billing, "tokenward": own}
        for _ in range(ROUNDS):
            login = await d.login()
            first_party = login["access_token"]
            tokens = {"tokenward": first_party}
            for service in SERVICES:
                r = await d.service_token(first_party, service)
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["audience"] == service
                assert body["token_type"] == "Bearer"
                assert 0 < body["expires_in"] <= d.tw.settings.access_ttl
                assert r.headers["cache-control"] == "no-store"
                tokens[service] = body["access_token"]
            for audience, token in tokens.items():
                for name, verifier in verifiers.items():
                    if name == audience:
                        claims = await verifier.verify(token)
                        assert claims.aud == audience
                        assert claims.sid == login["session"]["id"]
                        accepted += 1
                    else:
                        with pytest.raises(TokenInvalid):
                            await verifier.verify(token)
                        refused += 1
            for service in SERVICES:
                # Tokenward's own API takes neither, and a service token is not exchangeable.
                auth = {"Authorization": f"Bearer {tokens[service]}"}
                assert (await d.client.get("/auth/me", headers=auth)).status_code == 401
                again = await d.service_token(tokens[service], "notes")
                assert again.status_code == 401, again.text
    assert (accepted, refused) == (3 * ROUNDS, 6 * ROUNDS)


async def test_service_tokens_end_with_their_session(
    deployment: Deployment, redis_url: str
) -> None:
    """The service token carries the session: logout refuses it at the service too."""
    d = deployment
    login = await d.login()
    access = login["access_token"]
    token = (await d.service_token(access, "notes")).json()["access_token"]
    async with _verifier(d, "notes", redis_url) as notes:
        assert (await notes.verify(token)).sub == login["user"]["id"]
        r = await d.client.post("/auth/logout", headers={"Authorization": f"Bearer {access}"})
        assert r.status_code == 204

        async def refused() -> bool:
            try:
                await notes.verify(token)
            except SessionEnded:
                return True
            return False

        await await_until(refused, within=1.0, what="notes refuses the ended session")


async def test_a_service_token_never_outlives_the_token_exchanged(deployment: Deployment) -> None:
    """Exchanging cannot extend the life of a (possibly stolen) access token."""
    d = deployment
    access = (await d.login())["access_token"]
    d.tw.clock.advance(d.tw.settings.access_ttl - 60)  # type: ignore[attr-defined]
    r = await d.service_token(access, "billing")
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] == 60
    d.tw.clock.advance(61 + d.tw.settings.leeway)  # type: ignore[attr-defined]
    r = await d.service_token(access, "billing")
    assert r.status_code == 401
    assert r.json()["type"] == "urn:tokenward:problem:token-expired"


async def test_token_endpoint_refuses_what_it_should(deployment: Deployment) -> None:
    """Only configured services, only bearer sessions, only well-formed bodies."""
    d = deployment
    access = (await d.login())["access_token"]
    for audience in ("payroll", "tokenward", "", "NOTES"):
        r = await d.service_token(access, audience)
        assert r.status_code == 400, (audience, r.text)
        assert r.json()["type"] == "urn:tokenward:problem:bad-request"
    for audience in (None, 7, ["notes"], "n" * 129):
        r = await d.service_token(access, audience)
        assert r.status_code == 422, (audience, r.text)
    r = await d.client.post("/auth/token", json={"audience": "notes"})
    assert r.status_code == 401
    r = await d.client.post(
        "/auth/token", content=b"audience=notes", headers={"Authorization": f"Bearer {access}"}
    )
    assert r.status_code == 415
    # A cookie session (CSRF and Origin satisfied) gets no token in a body.
    accounts = d.accounts
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(d.tw, manage_lifespan=False)),
        base_url=APP_ORIGIN,
    ) as browser:
        await accounts.login_cookie(browser)
        r = await browser.post(
            "/auth/token", json={"audience": "notes"}, headers=accounts.csrf_headers(browser)
        )
        assert r.status_code == 403, r.text
        assert r.json()["type"] == "urn:tokenward:problem:forbidden"
        assert "access_token" not in r.text


def _notes_app(tw: Tokenward) -> TokenwardMiddleware:
    async def notes(request: Request) -> JSONResponse:
        principal = get_principal(request.scope)
        assert principal is not None
        return JSONResponse({"aud": principal.claims.aud, "uid": principal.uid})

    host = Starlette(routes=[Route("/notes", notes)])
    return TokenwardMiddleware(host, tw, protect=["/notes"], audience="notes")


def _billing_app(tw: Tokenward) -> FastAPI:
    auth = TokenwardFastAPI(tw, audience="billing")
    app = FastAPI()

    @app.get("/invoices")
    async def invoices(user: Annotated[UserRef, Depends(auth.current_user)]) -> dict[str, str]:
        return {"uid": user.id}

    auth.install(app, manage_lifespan=False)
    return app


async def test_integrations_check_their_own_audience(deployment: Deployment) -> None:
    """The ASGI middleware (notes) and the FastAPI dependencies (billing) refuse others."""
    d = deployment
    apps = {"notes": ("/notes", _notes_app(d.tw)), "billing": ("/invoices", _billing_app(d.tw))}
    login = await d.login()
    tokens = {"tokenward": login["access_token"]}
    for service in SERVICES:
        tokens[service] = (await d.service_token(login["access_token"], service)).json()[
            "access_token"
        ]
    for name, (path, app) in apps.items():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=APP_ORIGIN) as client:
            for audience, token in tokens.items():
                r = await client.get(path, headers={"Authorization": f"Bearer {token}"})
                if audience == name:
                    assert r.status_code == 200, r.text
                    assert r.json()["uid"] == login["user"]["id"]
                else:
                    assert r.status_code == 401, (name, audience, r.text)
                    assert r.headers["content-type"].startswith("application/problem+json")
            assert (await client.get(path)).status_code == 401
            # A first-party cookie is Tokenward's audience, not this service's.
            client.cookies.set("__Host-access_token", tokens["tokenward"])
            assert (await client.get(path)).status_code == 401


def test_unconfigured_audiences_are_refused_at_construction(
    deployment: Deployment,
) -> None:
    """A typo in a service name fails at start, not as 401s in production."""
    tw = deployment.tw
    with pytest.raises(ConfigError, match="audience"):
        TokenwardFastAPI(tw, audience="note")
    with pytest.raises(ConfigError, match="audience"):
        TokenwardMiddleware(Starlette(), tw, audience="payroll")
    with pytest.raises(ConfigError, match="TOKENWARD_AUDIENCES"):
        load_settings({"TOKENWARD_AUDIENCES": "notes,bad name"})
    assert load_settings({"TOKENWARD_AUDIENCES": "notes, billing,notes"}).audiences == (
        "notes",
        "billing",
    )
