"""Fixtures for the operations tests: started Tokenwards, an HTTP client, the CLI in-process.

* ``make_ops_tw(data_dir=None, **settings)`` -- build and start a Tokenward on the real Redis
  (FrozenClock, cheap hashing); stopped at teardown. Instances given the same ``data_dir``
  share the SQLite database and the generated key file, as instances of one deployment do.
* ``run_cli(*args, env=..., stdin=...)`` -- ``tokenward.cli.main`` in a worker thread (its own
  event loop) with exactly the given ``TOKENWARD_*`` variables; returns exit code, stdout
  and stderr. Much faster than a subprocess; the console script itself is covered by
  ``test_admin_cli.py`` and ``test_packaging.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from tokenward.clock import FrozenClock
from tokenward.http.app import create_app
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

OPS_ORIGIN = "https://ops.test"
OPS_PASSWORD = "correct horse battery staple"

MakeOpsTw = Callable[..., Awaitable[Tokenward]]


def ops_env(redis_url: str | None, data_dir: Path, **overrides: Any) -> dict[str, str]:
    """The ``TOKENWARD_*`` variables of a test deployment."""
    env = {"TOKENWARD_DATA_DIR": str(data_dir), "TOKENWARD_ISSUER": OPS_ORIGIN}
    if redis_url is not None:
        env["TOKENWARD_REDIS_URL"] = redis_url
    env.update({f"TOKENWARD_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
async def make_ops_tw(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeOpsTw]:
    started: list[Tokenward] = []

    async def make(data_dir: Path | None = None, **overrides: Any) -> Tokenward:
        where = data_dir or tmp_path / f"ops{len(started)}"
        env = ops_env(overrides.pop("redis_url", redis_url), where, **overrides)
        settings = load_settings(env, env_file=tmp_path / "no.env")
        tw = Tokenward(settings, clock=FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS)
        await tw.start()
        started.append(tw)
        return tw

    yield make
    for tw in started:
        await tw.stop()


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
    code: int
    out: str
    err: str


RunCli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    async def run(*args: str, env: dict[str, str], stdin: str = "") -> CliResult:
        from tokenward.cli import main

        clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOKENWARD_")}
        out, err = io.StringIO(), io.StringIO()

        def call() -> int:
            # The main thread only awaits this thread, so swapping process-wide state is safe.
            with (
                mock.patch.dict(os.environ, {**clean, **env}, clear=True),
                mock.patch.object(sys, "stdin", io.StringIO(stdin)),
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                contextlib.chdir(tmp_path),  # no stray ./.env
            ):
                return main(list(args))

        code = await asyncio.to_thread(call)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run
