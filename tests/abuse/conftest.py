"""Fixtures of the abuse tests.

* ``make_tw(argon2=CHEAP_FOR_TESTS, clock=None, **settings)`` -- a started Tokenward on the
  session Redis (FrozenClock at the real time unless given); stopped at teardown.
  ``argon2=None`` hashes with the configured (OWASP) cost.
* ``tw``, ``client`` (from a fresh address), ``accounts``.
* ``redis`` -- a plain client on the session Redis, to read keys and TTLs.

Helpers live in ``abuse_support`` (import that, not this module: several conftests exist).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from abuse_support import (
    GENEROUS_LIMITS,
    ORIGIN,
    Accounts,
    LiveServer,
    MakeTw,
    client_for,
    fresh_ip,
    live_server,
)

from tokenward.runtime import Tokenward
from tw_factory import TokenwardFactory


@pytest.fixture
async def make_tw(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeTw]:
    factory = TokenwardFactory(redis_url, tmp_path, issuer=ORIGIN)
    yield factory.make
    await factory.stop_all()


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
