"""The Sentinel client's connection pool under a burst, against a real topology."""

from __future__ import annotations

import asyncio

from sentinel_topology import SentinelTopology

from tokenward.stores.redis_client import POOL_SIZE, connect_redis


async def test_a_burst_past_the_pool_size_waits_for_a_connection(
    shared_sentinel: SentinelTopology,
) -> None:
    """600 commands in flight at once through Sentinel are all answered by the master, on
    at most POOL_SIZE connections (redis-py's Sentinel pool refuses the 101st at once)."""
    client = connect_redis(shared_sentinel.url)
    try:
        replies = await asyncio.gather(*(client.eval("return ARGV[1]", 0, n) for n in range(600)))
        assert replies == [str(n) for n in range(600)]
        pool = client.connection_pool
        assert len(pool._in_use_connections) + len(pool._available_connections) <= POOL_SIZE  # type: ignore[attr-defined]
    finally:
        await client.aclose()
