"""The session fixtures in tests/conftest.py give servers that really answer."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

_loops: set[int] = set()


async def test_redis_answers_ping(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.ping() is True
        key = f"tokenward-test:{os.getpid()}:servers"
        await client.set(key, b"ok", ex=60)
        assert await client.get(key) == b"ok"
        await client.delete(key)
    finally:
        await client.aclose()


async def test_postgres_answers_select_1(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+asyncpg://")
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            database = (await conn.execute(text("SELECT current_database()"))).scalar_one()
    finally:
        await engine.dispose()
    if "TOKENWARD_TEST_POSTGRES_URL" not in os.environ:
        assert database == "tokenward_test"


@pytest.mark.parametrize("run", [1, 2])
async def test_all_tests_share_one_event_loop(run: int) -> None:
    _loops.add(id(asyncio.get_running_loop()))
    assert len(_loops) == 1, f"run {run}: tests ran on {len(_loops)} different event loops"
