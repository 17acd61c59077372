"""Fixtures of the session tests.

* ``make_tw(clock=None, **settings)`` -- a started in-process Tokenward on the session Redis
  (FrozenClock unless a clock is given); stopped at teardown. ``data_dir`` may be passed to
  make two "instances" share signing keys and the SQLite file.
* ``tw``, ``client``, ``accounts`` -- one default instance, an httpx client on its app.
* ``redis`` -- a plain client on the session Redis, to read keys, TTLs and memory.
* ``server`` -- ``server(workers=1, **settings)``: a real ``tokenward serve`` process group.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sessions_support import ORIGIN, Accounts, MakeTw, Server, client_for, run_server

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
    async with client_for(tw) as c:
        yield c


@pytest.fixture
def accounts(client: httpx.AsyncClient) -> Accounts:
    return Accounts(client)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real servers on demand; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(workers: int = 1, **settings: Any) -> Server:
            nonlocal count
            count += 1
            return stack.enter_context(
                run_server(redis_url, tmp_path / f"srv{count}", workers=workers, **settings)
            )

        yield start
