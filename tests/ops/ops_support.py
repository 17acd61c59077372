"""Helpers of the operations tests (imported by tests/ops/conftest.py and the tests).

A uniquely named module rather than ``conftest``: several test directories have a
conftest, and ``from conftest import ...`` would pick whichever was imported first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tokenward.http.app import create_app
from tokenward.runtime import Tokenward

OPS_ORIGIN = "https://ops.test"
OPS_PASSWORD = "violet tractor 42 umbrella"

MakeOpsTw = Callable[..., Awaitable[Tokenward]]


#: The scrape token of the test deployments (``TOKENWARD_METRICS_TOKEN``).
OPS_METRICS_TOKEN = "ops-metrics-scrape-token-0123456789abcdef"


def ops_env(redis_url: str | None, data_dir: Path, **overrides: Any) -> dict[str, str]:
    """The ``TOKENWARD_*`` variables of a test deployment."""
    env = {
        "TOKENWARD_DATA_DIR": str(data_dir),
        "TOKENWARD_ISSUER": OPS_ORIGIN,
        # The public app serves /metrics only to this bearer token (ops tests scrape it).
        "TOKENWARD_METRICS_TOKEN": OPS_METRICS_TOKEN,
    }
    if redis_url is not None:
        env["TOKENWARD_REDIS_URL"] = redis_url
    env.update({f"TOKENWARD_{k.upper()}": str(v) for k, v in overrides.items()})
    return {k: v for k, v in env.items() if v != ""}  # an empty override unsets a variable


def ops_client(tw: Tokenward) -> httpx.AsyncClient:
    """A client on ``tw``'s app (``tw`` is started by the fixture, not by the app)."""
    app = create_app(tw, manage_lifespan=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OPS_ORIGIN)


async def register_and_login(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    """Register ``email`` and log in in bearer mode; the login body (with tokens)."""
    r = await client.post("/auth/register", json={"email": email, "password": OPS_PASSWORD})
    assert r.status_code == 201, r.text
    r = await client.post(
        "/auth/login",
        json={"email": email, "password": OPS_PASSWORD},
        headers={"X-Auth-Transport": "bearer"},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@dataclass
class CliResult:
    """What one ``tokenward`` command did."""

    code: int
    out: str
    err: str


RunCli = Callable[..., Awaitable[CliResult]]
