"""Where the Sentinel client connects after a failover, against real topologies.

Two ways to end up on a server that is not the master, both seen in CI as a logout that
answered 401 "session ended" during a crash test (a read on an empty server):

* redis-py's command retry reconnects a broken connection to the host it had, without
  asking the sentinels: after a crash that is the old master, which an operator has
  restarted and which is an empty master until Sentinel converts it (about ten seconds);
* redis-py believes the first sentinel whose answer looks healthy, however old its
  configuration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis
from sentinel_topology import SERVICE, SentinelTopology, Server, _binary, command

from ports import free_port
from tokenward.stores.redis_client import connect_redis
from waiting import wait_until


async def _port_of(client: aioredis.Redis) -> int:
    reply = await client.config_get("port")
    return int(reply["port"])


async def test_a_broken_connection_reconnects_to_the_master_the_sentinels_name(
    sentinel_topology: SentinelTopology,
) -> None:
    """A pooled connection of the killed master, reconnected by a retry after the old
    master came back empty, reaches the new master and reads what was written."""
    old = sentinel_topology.master_port()
    new = next(s.port for s in sentinel_topology.data if s.port != old)
    client = connect_redis(sentinel_topology.url)
    try:
        await client.set("tw:test:kept", "yes", ex=600)
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            assert conn.port == old
            sentinel_topology.server(old).kill()
            await asyncio.to_thread(sentinel_topology.wait_master, new)
            # Back as an empty master, as after a crash with no persistence.
            await asyncio.to_thread(sentinel_topology.server(old).start)
            assert sentinel_topology.role(old) == "master"
            await conn.disconnect()  # what the retry does with a broken connection
            await conn.send_command("GET", "tw:test:kept")  # ... and then it sends again
            assert await conn.read_response() == "yes"
            assert conn.port == new
        finally:
            await pool.release(conn)
        assert await client.get("tw:test:kept") == "yes"
    finally:
        await client.aclose()


async def test_the_sentinel_with_the_newest_configuration_is_believed(
    sentinel_topology: SentinelTopology, tmp_path: Path
) -> None:
    """A sentinel that names another healthy master under an older configuration epoch
    (one that missed the failover) is listed first; the client still uses the master of
    the newest configuration."""
    old = sentinel_topology.master_port()
    new = next(s.port for s in sentinel_topology.data if s.port != old)
    binary = _binary()
    stale_dir = tmp_path / "stale"
    stale_dir.mkdir()
    other = Server(
        stale_dir,
        "redis-stale",
        [binary, "--port", str(free_port()), "--bind", "127.0.0.1", "--save", ""],
    )
    port = free_port()
    conf = stale_dir / "sentinel-stale.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {stale_dir}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {other.port} 1\n"
    )
    stale = Server(
        stale_dir, "sentinel-stale", [binary, str(conf), "--sentinel", "--port", str(port)]
    )
    other.start()
    stale.start()
    try:
        assert command(sentinel_topology.sentinels[0].port, "SENTINEL", "FAILOVER", SERVICE) == (
            "+OK\r\n"
        )
        await asyncio.to_thread(sentinel_topology.wait_master, new)
        wait_until(
            lambda: (
                str(other.port) in command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            ),
            within=10,
            what="the stale sentinel names its own master",
        )
        url = sentinel_topology.url.replace("//", f"//127.0.0.1:{port},", 1)
        client = connect_redis(url)
        try:
            assert await _port_of(client) == new
        finally:
            await client.aclose()
    finally:
        stale.stop()
        other.stop()
