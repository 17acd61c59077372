"""The cluster client's connections: ours, packing commands with hiredis, on every node."""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import Connection

from tokenward.stores.redis_client import connect_redis


async def test_every_node_connection_packs_as_redis_py_does(redis_cluster_url: str) -> None:
    """Keys on all three masters, a script, text and numbers: the replies are right, every
    connection opened (seed and discovered nodes) is our class, and it packs the same
    bytes as redis-py's own."""
    client: Any = connect_redis(redis_cluster_url)
    try:
        for n in range(30):
            await client.set(f"tw:test:pack:{n}", f"ü{n}", ex=60)
        assert [await client.get(f"tw:test:pack:{n}") for n in range(30)] == [
            f"ü{n}" for n in range(30)
        ]
        script = client.register_script("return {KEYS[1], ARGV[1], ARGV[2]}")
        assert await script(keys=["tw:test:{pack}"], args=["ünï", 2.5]) == [
            "tw:test:{pack}", "ünï", "2.5",
        ]  # fmt: skip
        connections = [c for node in client.get_nodes() for c in node._connections]
        assert len({c.port for c in connections}) == 3
        args = ("EVALSHA", "a" * 40, 1, "tw:{u:1}:s:x", "ünï", 1796641261, 0.1)
        for connection in connections:
            assert type(connection).__name__.startswith("Packed")
            assert connection.pack_command(*args) == [b"".join(Connection().pack_command(*args))]
    finally:
        await client.aclose()
