"""``connect_redis``: the client every Redis-backed part of Tokenward goes through."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from private_redis import private_redis
from tokenward.stores.redis_client import POOL_SIZE, connect_redis

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


async def test_a_burst_past_the_pool_size_waits_for_a_connection(redis_url: str) -> None:
    """600 commands in flight at once on one client (a worker under a burst of requests,
    plus its background event writes): every one is answered. redis-py's default pool
    refuses the 101st at once ("Too many connections"), which a request would see as a
    503; the pool waits for a free connection instead, and stays at its size."""
    client = connect_redis(redis_url)
    try:
        replies = await asyncio.gather(*(client.eval("return ARGV[1]", 0, n) for n in range(600)))
        assert replies == [str(n) for n in range(600)]
        pool = client.connection_pool
        assert len(pool._in_use_connections) + len(pool._available_connections) <= POOL_SIZE  # type: ignore[attr-defined]
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "a" * 40, 2, "tw:{u:1}:s:x", "tw:{u:1}:idx", "1796641261", 0, -5, 2**62),
        ("SCRIPT LOAD", "return 1"),  # a command name of two words is split
        (b"CLIENT SETNAME", b"tokenward"),
        ("SET", "k", "ünïcode ✓", "EX", 30),
        ("ZADD", "z", 0.1, "a", 1796641261.123, "b", 1e20, "c", 2.5e-07, "d"),
        ("SET", "k", b"\x00\xff binary"),
    ],
)
async def test_commands_are_packed_as_redis_py_packs_them(
    redis_url: str, args: tuple[object, ...]
) -> None:
    """Our connections pack with hiredis; the bytes are redis-py's own, byte for byte."""
    client = connect_redis(redis_url)
    try:
        connection = client.connection_pool.make_connection()  # type: ignore[attr-defined]
        plain = Connection()
        assert b"".join(connection.pack_command(*args)) == b"".join(plain.pack_command(*args))
    finally:
        await client.aclose()


@pytest.mark.parametrize("bad", [None, True, object()])
async def test_an_argument_redis_cannot_take_gets_redis_pys_error(
    redis_url: str, bad: object
) -> None:
    """``None``, a bool or an object: redis-py's ``DataError`` (a client mistake that the
    callers map like any Redis error), not hiredis's ``TypeError``."""
    client = connect_redis(redis_url)
    try:
        with pytest.raises(DataError):
            await client.set("tw:test:bad", bad)  # type: ignore[arg-type]
    finally:
        await client.aclose()


async def test_sequential_commands_reuse_one_pooled_connection(redis_url: str) -> None:
    """Commands one after another take the free connection and give it back (the pool's
    quick path): one connection, none left marked in use, after a burst as before."""
    client = connect_redis(redis_url)
    try:
        pool = client.connection_pool
        for n in range(50):
            assert await client.eval("return ARGV[1]", 0, n) == str(n)
        assert (len(pool._available_connections), len(pool._in_use_connections)) == (1, 0)  # type: ignore[attr-defined]
        await asyncio.gather(*(client.eval("return ARGV[1]", 0, n) for n in range(300)))
        assert len(pool._in_use_connections) == 0  # type: ignore[attr-defined]
        for n in range(50):
            assert await client.eval("return ARGV[1]", 0, n) == str(n)
        assert len(pool._in_use_connections) == 0  # type: ignore[attr-defined]
    finally:
        await client.aclose()


async def test_a_command_larger_than_the_socket_buffer_arrives_whole(redis_url: str) -> None:
    """A write the kernel does not take at once (32 MiB: far past a loopback socket's
    buffer) is drained by redis-py's path after the direct write (``_PromptSend``)."""
    client = connect_redis(redis_url)
    try:
        value = "0123456789abcdef" * (2 * 1024 * 1024)
        await client.set("tw:test:big", value, ex=60)
        assert await client.strlen("tw:test:big") == len(value)
        assert await client.getrange("tw:test:big", len(value) - 16, -1) == "0123456789abcdef"
    finally:
        await client.delete("tw:test:big")
        await client.aclose()


async def test_a_send_to_a_frozen_server_times_out_and_the_client_recovers(
    tmp_path: Path,
) -> None:
    """Redis stopped (SIGSTOP) mid-write: a command bigger than the socket buffers cannot
    be sent; its send gives up after the client's timeout ("Timeout writing", the drain
    under redis-py's timer, not a read that would wait for an answer), the connection is
    dropped, and once Redis runs again the next command gets through."""
    with private_redis(tmp_path) as server:
        client = connect_redis(server.url, timeout=0.5)
        assert server.proc is not None
        pid = server.proc.pid
        try:
            assert await client.ping()
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(RedisTimeoutError, match="writing"):
                    await asyncio.wait_for(
                        client.set("tw:test:big", "x" * (64 * 1024 * 1024), ex=60), 30
                    )
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await client.set("tw:test:small", "1", ex=60)
            assert await client.get("tw:test:small") == "1"
        finally:
            await client.aclose()
