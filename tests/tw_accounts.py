"""Registration and login helpers shared by the test folders that talk to Tokenward's HTTP
API (tests/http, tests/abuse, tests/sessions): one :class:`Accounts`, not one per folder.

A uniquely named module at the root of ``tests`` (on ``sys.path`` through the root
conftest), like :mod:`tw_factory`.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

ORIGIN = "https://tokenward.test"
PASSWORD = "violet tractor 42 umbrella"
BEARER = {"X-Auth-Transport": "bearer"}

#: Abuse limits high enough that tests which are not about throttling never trip them,
#: although the whole run shares one Redis and one client address. Pass as
#: ``make_tw(**GENEROUS_LIMITS, ...)``.
GENEROUS_LIMITS: dict[str, int] = {
    "register_ip_limit": 1_000_000,
    "login_pair_limit": 1_000_000,
    "login_account_limit": 1_000_000,
    "login_ip_limit": 1_000_000,
    "refresh_ip_limit": 1_000_000,
}


def new_email() -> str:
    """A fresh, unique address."""
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


class Accounts:
    """Registration and login helpers for one client.

    Args:
        client: the client (its cookie jar keeps the cookies of cookie-mode logins).
        origin: the ``Origin`` sent with the CSRF header.
    """

    def __init__(self, client: httpx.AsyncClient, origin: str = ORIGIN) -> None:
        self.client = client
        self.origin = origin

    @staticmethod
    def new_email() -> str:
        return new_email()

    async def register(self, email: str | None = None, password: str = PASSWORD) -> str:
        """Register an account (a fresh address unless given); returns its email."""
        email = email or new_email()
        r = await self.client.post("/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        return email

    async def login_bearer(
        self, email: str, password: str = PASSWORD, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Log in with the bearer transport; returns the body (tokens included)."""
        r = await self.client.post(
            "/auth/login",
            json={"email": email, "password": password},
            headers={**BEARER, **(headers or {})},
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def new_bearer(self) -> dict[str, Any]:
        """Register and log in a fresh account (bearer)."""
        return await self.login_bearer(await self.register())

    async def login_cookie(self, email: str, password: str = PASSWORD) -> httpx.Response:
        """Log in with cookies (the client's jar keeps them)."""
        r = await self.client.post("/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return r

    def csrf_headers(self) -> dict[str, str]:
        """The double-submit header (and Origin) for the client's current cookies."""
        cookies = self.client.cookies
        token = cookies.get("__Host-csrf_token") or cookies.get("csrf_token")
        assert token, "no csrf cookie"
        return {"X-CSRF-Token": token, "Origin": self.origin}
