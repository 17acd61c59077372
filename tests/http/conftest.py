"""App fixtures: a started Tokenward over the real Redis, an SQLite file, and a client.

* ``make_tw(**settings)``  -- build and start a Tokenward with overrides; stopped at teardown.
* ``tw``                   -- one with the defaults.
* ``client``               -- an ``httpx.AsyncClient`` on ``tw``'s app at ``https://tokenward.test``.
* ``accounts``             -- helpers: ``register``, ``login_cookie``, ``login_bearer``.

Helpers live in ``http_support`` (import that, not this module: several conftests exist).
Time is a :class:`FrozenClock` starting at the real time, so tests move it instead of
sleeping; Redis TTLs are checked as values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from http_support import ORIGIN, Accounts, MakeTw, isolated_client

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
    async with isolated_client(tw) as c:
        yield c


@pytest.fixture
def accounts(client: httpx.AsyncClient) -> Accounts:
    return Accounts(client)
