"""Helpers of the HTTP tests (imported by tests/http/conftest.py and the test modules).

A uniquely named module rather than ``conftest``: several test directories have a
conftest, and ``from conftest import ...`` would pick whichever was imported first.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import httpx

from tokenward.http.app import create_app
from tokenward.runtime import Tokenward
from tw_accounts import GENEROUS_LIMITS, ORIGIN, PASSWORD, Accounts  # noqa: F401 - re-exported

MakeTw = Callable[..., Awaitable[Tokenward]]


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
