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
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sessions_support import ORIGIN, Accounts, MakeTw, Server, client_for, run_server

from tokenward.clock import Clock, FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings


@pytest.fixture
async def make_tw(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeTw]:
    started: list[Tokenward] = []

    async def make(clock: Clock | None = None, **overrides: Any) -> Tokenward:
        env = {
            "TOKENWARD_REDIS_URL": redis_url,
            "TOKENWARD_DATA_DIR": str(tmp_path / f"data{len(started)}"),
            "TOKENWARD_ISSUER": ORIGIN,
        }
        env.update({f"TOKENWARD_{k.upper()}": str(v) for k, v in overrides.items()})
        settings = load_settings(env, env_file=tmp_path / "no.env")
        tw = Tokenward(
            settings, clock=clock or FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS
        )
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
