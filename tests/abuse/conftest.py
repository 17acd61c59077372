"""Fixtures of the abuse tests.

* ``make_tw(argon2=CHEAP_FOR_TESTS, clock=None, **settings)`` -- a started Tokenward on the
  session Redis (FrozenClock at the real time unless given); stopped at teardown.
  ``argon2=None`` hashes with the configured (OWASP) cost.
* ``tw``, ``client`` (from a fresh address), ``accounts``.
* ``redis`` -- a plain client on the session Redis, to read keys and TTLs.

Helpers live in ``abuse_support`` (import that, not this module: several conftests exist).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from abuse_support import (
    GENEROUS_LIMITS,
    ORIGIN,
    PASSWORD,
    Accounts,
    LiveServer,
    MakeTw,
    client_for,
    fresh_ip,
    live_server,
)

from tokenward.clock import Clock, FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS, Argon2Params
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

# Re-exported for test modules elsewhere that do ``from conftest import ...`` when several
# directories are collected in one run (the last conftest loaded answers that import).
__all__ = ["GENEROUS_LIMITS", "ORIGIN", "PASSWORD", "Accounts", "MakeTw", "client_for"]


@pytest.fixture
async def make_tw(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeTw]:
    started: list[Tokenward] = []

    async def make(
        *, argon2: Argon2Params | None = CHEAP_FOR_TESTS, clock: Clock | None = None,
        **overrides: Any,
    ) -> Tokenward:  # fmt: skip
        env = {
            "TOKENWARD_REDIS_URL": redis_url,
            "TOKENWARD_DATA_DIR": str(tmp_path / f"data{len(started)}"),
            "TOKENWARD_ISSUER": ORIGIN,
        }
        env.update({f"TOKENWARD_{k.upper()}": str(v) for k, v in overrides.items()})
        settings = load_settings(env, env_file=tmp_path / "no.env")
        tw = Tokenward(settings, clock=clock or FrozenClock(int(time.time())), argon2=argon2)
        await tw.start()
        started.append(tw)
        return tw

    yield make
    for tw in started:
        await tw.stop()


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    return await make_tw()


@pytest.fixture
async def client(tw: Tokenward) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(tw, fresh_ip()) as c:
        yield c


@pytest.fixture
def accounts(client: httpx.AsyncClient) -> Accounts:
    return Accounts(client)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(redis_url, decode_responses=True)
    yield r
    await r.aclose()


@pytest.fixture(scope="module")
def fuzz_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server (thread, own loop) with limits no fuzzer trips, for plain-HTTP fuzzing."""
    with live_server(redis_url, tmp_path_factory.mktemp("fuzz"), **GENEROUS_LIMITS) as server:
        yield server
