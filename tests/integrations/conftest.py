"""Fixtures for the integration tests: a started Tokenward on the real Redis, and helpers.

* ``make_tw(**settings)`` -- build and start a Tokenward (FrozenClock, cheap hashing);
  stopped at teardown.
* ``tw``                  -- one with the defaults (issuer ``https://app.test``).
* ``accounts``            -- ``register`` / ``login_bearer`` / ``login_cookie`` /
  ``csrf_headers`` against any ``httpx.AsyncClient`` whose app serves Tokenward's routes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenward.runtime import Tokenward
from tw_factory import TokenwardFactory

APP_ORIGIN = "https://app.test"
APP_PASSWORD = "violet tractor 42 umbrella"
#: These tests share one Redis and one client address and register many users; the
#: registration limit has its own tests, so it is lifted here.
NO_REGISTER_LIMIT = {"TOKENWARD_REGISTER_IP_LIMIT": "1000000"}

MakeTw = Callable[..., Awaitable[Tokenward]]


@pytest.fixture
async def make_tw(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeTw]:
    factory = TokenwardFactory(redis_url, tmp_path, issuer=APP_ORIGIN, base=dict(NO_REGISTER_LIMIT))
    yield factory.make
    await factory.stop_all()


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    return await make_tw()


class AppAccounts:
    """Registration and login through Tokenward's routes, wherever they are mounted."""

    origin = APP_ORIGIN
    password = APP_PASSWORD

    @staticmethod
    def new_email() -> str:
        return f"user-{uuid.uuid4().hex[:12]}@example.com"

    async def register(self, client: httpx.AsyncClient) -> str:
        email = self.new_email()
        r = await client.post("/auth/register", json={"email": email, "password": APP_PASSWORD})
        assert r.status_code == 201, r.text
        return email

    async def login_bearer(self, client: httpx.AsyncClient, email: str) -> dict[str, Any]:
        r = await client.post(
            "/auth/login",
            json={"email": email, "password": APP_PASSWORD},
            headers={"X-Auth-Transport": "bearer"},
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def bearer(self, client: httpx.AsyncClient) -> dict[str, str]:
        """A new user, logged in: the ``Authorization`` header to send."""
        tokens = await self.login_bearer(client, await self.register(client))
        return {"Authorization": f"Bearer {tokens['access_token']}"}

    async def login_cookie(self, client: httpx.AsyncClient, email: str | None = None) -> str:
        email = email or await self.register(client)
        r = await client.post("/auth/login", json={"email": email, "password": APP_PASSWORD})
        assert r.status_code == 200, r.text
        return email

    @staticmethod
    def csrf_headers(client: httpx.AsyncClient) -> dict[str, str]:
        token = client.cookies.get("__Host-csrf_token") or client.cookies.get("csrf_token")
        assert token, "no csrf cookie"
        return {"X-CSRF-Token": token, "Origin": APP_ORIGIN}


@pytest.fixture
def accounts() -> AppAccounts:
    return AppAccounts()
