"""Helpers of the HTTP tests (imported by tests/http/conftest.py and the test modules).

A uniquely named module rather than ``conftest``: several test directories have a
conftest, and ``from conftest import ...`` would pick whichever was imported first.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tokenward.http.app import create_app
from tokenward.runtime import Tokenward
from tokenward.settings import Settings

ORIGIN = "https://tokenward.test"
PASSWORD = "correct horse battery staple"

MakeTw = Callable[..., Awaitable[Tokenward]]

#: Abuse limits high enough that tests which are not about throttling never trip them,
#: although the whole run shares one Redis and one client address. Pass as
#: ``make_tw(**GENEROUS_LIMITS, ...)``.
GENEROUS_LIMITS: dict[str, int] = {
    name: 1_000_000
    for name in (
        "register_ip_limit",
        "login_pair_limit",
        "login_account_limit",
        "login_ip_limit",
        "refresh_ip_limit",
    )
    if name in Settings.model_fields
}


def isolated_client(tw: Tokenward) -> httpx.AsyncClient:
    """A client on ``tw``'s app, calling from a random address of its own (in 10/8).

    The app's lifespan is not run (the fixture started ``tw``). Rate limits and locks are
    kept per client address in Redis, which the whole run shares; a test that is not about
    throttling should neither trip nor inherit them.
    """
    host = "10." + ".".join(str(secrets.randbelow(254) + 1) for _ in range(3))
    app = create_app(tw, manage_lifespan=False)
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN)


class Accounts:
    """Registration and login helpers for one client."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @staticmethod
    def new_email() -> str:
        return f"user-{uuid.uuid4().hex[:12]}@example.com"

    async def register(self, email: str | None = None, password: str = PASSWORD) -> str:
        email = email or self.new_email()
        r = await self.client.post("/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        return email

    async def login_bearer(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        r = await self.client.post(
            "/auth/login",
            json={"email": email, "password": password},
            headers={"X-Auth-Transport": "bearer"},
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def login_cookie(self, email: str, password: str = PASSWORD) -> httpx.Response:
        r = await self.client.post("/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return r

    def csrf_headers(self) -> dict[str, str]:
        cookies = self.client.cookies
        token = cookies.get("__Host-csrf_token") or cookies.get("csrf_token")
        assert token, "no csrf cookie"
        return {"X-CSRF-Token": token, "Origin": ORIGIN}
