"""App fixtures: a started Tokenward over the real Redis, an SQLite file, and a client.

* ``make_tw(**settings)``  -- build and start a Tokenward with overrides; stopped at teardown.
* ``tw``                   -- one with the defaults below.
* ``client``               -- an ``httpx.AsyncClient`` on ``tw``'s app at ``https://tokenward.test``.
* ``accounts``             -- helpers: ``register``, ``login_cookie``, ``login_bearer``.

Time is a :class:`FrozenClock` starting at the real time, so tests move it instead of
sleeping; Redis TTLs are checked as values.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenward.http.app import create_app
from tokenward.runtime import Tokenward
from tw_factory import TokenwardFactory

ORIGIN = "https://tokenward.test"
PASSWORD = "correct horse battery staple"

MakeTw = Callable[..., Awaitable[Tokenward]]


@pytest.fixture
async def make_tw(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeTw]:
    factory = TokenwardFactory(redis_url, tmp_path, issuer=ORIGIN)
    yield factory.make
    await factory.stop_all()


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    return await make_tw()


def client_for(tw: Tokenward) -> httpx.AsyncClient:
    """A client on ``tw``'s app (the app's lifespan is not run: the fixture started ``tw``).

    It calls from a random address of its own, as :func:`isolated_client` does: rate limits
    are kept per address in the Redis the whole run shares.
    """
    return isolated_client(tw)


@pytest.fixture
async def client(tw: Tokenward) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(tw) as c:
        yield c


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


@pytest.fixture
def accounts(client: httpx.AsyncClient) -> Accounts:
    return Accounts(client)


# ---------------------------------------------------------------------------------------
# Appended helpers (they change none of the fixtures above).

from tokenward.settings import Settings as _Settings  # noqa: E402

#: Abuse limits high enough that tests which are not about throttling never trip them,
#: although the whole run shares one Redis and one client address. Pass as
#: ``make_tw(**GENEROUS_LIMITS, ...)``; names the settings do not (yet) have are left out.
GENEROUS_LIMITS: dict[str, int] = {
    name: 1_000_000
    for name in (
        "register_ip_limit",
        "login_pair_limit",
        "login_account_limit",
        "login_ip_limit",
        "refresh_ip_limit",
    )
    if name in _Settings.model_fields
}


def isolated_client(tw: Tokenward) -> httpx.AsyncClient:
    """Like :func:`client_for`, but calling from a random address of its own (in 10/8).

    Rate limits and locks are kept per client address in Redis, which the whole run
    shares; a test that is not about throttling should neither trip nor inherit them.
    """
    import secrets

    host = "10." + ".".join(str(secrets.randbelow(254) + 1) for _ in range(3))
    app = create_app(tw, manage_lifespan=False)
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN)
