"""``connect_redis``: the client every Redis-backed part of Tokenward goes through."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from private_redis import private_redis
from tokenward.stores.redis_client import connect_redis

#: Commands in flight at once, so that the pool holds this many connections.
POOLED = 6


async def test_pooled_connections_survive_a_server_restart(tmp_path: Path) -> None:
    """After a crash and restart, no command fails on a connection the old server closed.

    redis-py's default ("auto" maintenance notifications) skipped the pool's check for a
    closed connection, so each idle connection failed one command after the restart.
    """
    with private_redis(tmp_path) as server:
        client = connect_redis(server.url, timeout=2.0)
        try:
            await asyncio.gather(*(client.blpop(["tw:test:none"], 0.1) for _ in range(POOLED)))
            server.kill()
            with pytest.raises(RedisConnectionError):
                await client.get("tw:test:k")
            server.start()
            replies = await asyncio.gather(
                *(client.get("tw:test:k") for _ in range(POOLED)), return_exceptions=True
            )
            assert replies == [None] * POOLED
        finally:
            await client.aclose()
