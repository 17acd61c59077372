"""The shared connection of the session store's script calls (issue 11): concurrent calls
go out in one write, every reply reaches its own caller (errors included, a cancelled
caller's dropped), and a killed, frozen or restarted server fails what was in flight and
nothing after it. Real ``redis-server`` processes throughout."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from private_redis import PrivateRedis, private_redis, stop_process
from redis_sends import count_sends
from tokenward.stores import redis_mux
from tokenward.stores.redis_client import call_script, connect_redis, send_batch
from tokenward.stores.redis_mux import Multiplexer, multiplexer_for
from waiting import await_until, wait_until

#: Echoes its key and argument; an error reply when the argument is "bad".
ECHO = """
if ARGV[1] == 'bad' then return redis.error_reply('ERR refused ' .. KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', 60)
return KEYS[1] .. '=' .. ARGV[1]
"""


def _expected(i: int) -> str:
    return f"tw:mux:{i}=v{i}"


async def test_concurrent_calls_share_one_write(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty script calls made in one turn of the loop: one write on one connection, and
    each caller gets its own reply."""
    client = connect_redis(redis_url)
    try:
        assert isinstance(client.multiplexer, Multiplexer)
        echo = client.register_script(ECHO)
        assert await call_script(echo, keys=["tw:mux:warm"], args=["x"]) == "tw:mux:warm=x"
        sends = count_sends(client, monkeypatch)
        replies = await asyncio.gather(
            *(call_script(echo, keys=[f"tw:mux:{i}"], args=[f"v{i}"]) for i in range(50))
        )
        assert replies == [_expected(i) for i in range(50)]
        assert len(sends) == 1, sends
        assert sends[0].count("EVALSHA") == 50
        assert await client.get("tw:mux:49") == "v49"
        assert 0 < await client.ttl("tw:mux:49") <= 60
    finally:
        await client.aclose()


async def test_an_error_reply_fails_only_its_own_call(redis_url: str) -> None:
    """Error replies among good ones in one write: each raises to its own caller only; a
    flushed script is loaded again by :func:`call_script` and refused as ``NOSCRIPT`` by
    the bare connection."""
    client = connect_redis(redis_url)
    try:
        echo = client.register_script(ECHO)
        args = ["bad" if i % 3 == 0 else f"v{i}" for i in range(30)]
        replies = await asyncio.gather(
            *(call_script(echo, keys=[f"tw:mux:{i}"], args=[a]) for i, a in enumerate(args)),
            return_exceptions=True,
        )
        for i, reply in enumerate(replies):
            if i % 3 == 0:
                assert isinstance(reply, ResponseError), reply
                assert f"refused tw:mux:{i}" in str(reply)
            else:
                assert reply == _expected(i)
        await client.script_flush()
        assert client.multiplexer is not None
        with pytest.raises(NoScriptError):
            await client.multiplexer.execute("EVALSHA", echo.sha, 1, "tw:mux:x", "y")
        assert await call_script(echo, keys=["tw:mux:x"], args=["y"]) == "tw:mux:x=y"
    finally:
        await client.aclose()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path) as started:
        yield started


def _pid(server: PrivateRedis) -> int:
    assert server.proc is not None
    return server.proc.pid


async def _in_flight(mux: Multiplexer, count: int) -> None:
    async def sent() -> bool:
        protocol = mux._protocol
        return protocol is not None and len(protocol.waiting) == count and not protocol.queued

    await await_until(sent, within=10, what=f"{count} commands written, unanswered")


async def test_a_cancelled_caller_leaves_the_others_their_replies(server: PrivateRedis) -> None:
    """Twenty calls sent to a frozen server, every third caller cancelled while it waits:
    once the server thaws, every other caller gets its own reply, in order."""
    mux = Multiplexer(port=server.port, timeout=30)
    try:
        assert await mux.execute("PING") == "PONG"
        os.kill(_pid(server), signal.SIGSTOP)
        try:
            tasks = [asyncio.ensure_future(mux.execute("ECHO", f"reply {i}")) for i in range(20)]
            await _in_flight(mux, 20)
            for task in tasks[::3]:
                task.cancel()
        finally:
            os.kill(_pid(server), signal.SIGCONT)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            if i % 3 == 0:
                assert isinstance(result, asyncio.CancelledError), result
            else:
                assert result == f"reply {i}"
        assert await mux.execute("ECHO", "after") == "after"
    finally:
        await mux.aclose()


async def test_a_killed_server_fails_what_was_in_flight_then_reconnects(
    server: PrivateRedis,
) -> None:
    """SIGKILL with ten commands and a batch of five in flight: each fails with a
    connection error at once (not after the timeout); a call while the server is down fails
    too; once it is back, the next call connects anew and is answered."""
    mux = Multiplexer(port=server.port, timeout=30)
    try:
        assert await mux.execute("SET", "tw:mux:k", "1") == "OK"
        os.kill(_pid(server), signal.SIGSTOP)
        tasks = [asyncio.ensure_future(mux.execute("INCR", "tw:mux:k")) for _ in range(10)]
        batch = asyncio.ensure_future(mux.execute_many([("INCR", "tw:mux:k")] * 5))
        await _in_flight(mux, 15)
        server.kill()  # SIGKILL ends a stopped process too
        async with asyncio.timeout(10):  # far below the 30 s reply timeout
            results = await asyncio.gather(*tasks, batch, return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        with pytest.raises(RedisConnectionError):
            await mux.execute("PING")
        server.start()
        assert await mux.execute("INCR", "tw:mux:k") == 1  # not persisted: a new server
    finally:
        await mux.aclose()


async def test_a_frozen_server_times_out_and_its_late_reply_reaches_nobody(
    server: PrivateRedis,
) -> None:
    """A server frozen past the timeout: the call fails with a timeout and its connection
    is dropped (a connection that went silent, a half-open one, would otherwise time out
    every command for ever), so the next command goes on a new connection and the reply
    the server sends on thawing cannot answer it."""
    mux = Multiplexer(port=server.port, timeout=0.5)
    try:
        assert await mux.execute("SET", "tw:mux:n", "0") == "OK"
        first = await mux.execute("CLIENT", "ID")
        os.kill(_pid(server), signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeoutError):
                await mux.execute("INCRBY", "tw:mux:n", 100)
        finally:
            os.kill(_pid(server), signal.SIGCONT)
        assert await mux.execute("ECHO", "mine") == "mine"
        assert await mux.execute("CLIENT", "ID") != first
        watcher = aioredis.Redis(port=server.port, decode_responses=True)
        try:
            # the timed-out command may still have run: the caller was told 503, not "not done"
            assert await watcher.get("tw:mux:n") in ("0", "100")
        finally:
            await watcher.aclose()
    finally:
        await mux.aclose()


async def test_credentials_and_database_are_set_on_each_connection(
    server: PrivateRedis,
) -> None:
    """An ACL user's password and a database other than 0, from the URL: the shared
    connection authenticates and selects it, again after a reconnect; a wrong password
    fails the call with a connection error (a 503 in the stores)."""
    admin = aioredis.Redis(port=server.port, decode_responses=True)
    try:
        await admin.acl_setuser("tw", enabled=True, passwords=["+s3cret"], keys=["*"],
                                commands=["+@all"])  # fmt: skip
        await admin.acl_setuser("default", enabled=True, passwords=["+other"])
        client = connect_redis(f"redis://tw:s3cret@127.0.0.1:{server.port}/3")
        try:
            echo = client.register_script(ECHO)
            await client.script_load(ECHO)
            assert await call_script(echo, keys=["tw:mux:db"], args=["3"]) == "tw:mux:db=3"
            await admin.execute_command("AUTH", "default", "other")
            await admin.execute_command("SELECT", 3)
            assert await admin.get("tw:mux:db") == "3"
            await admin.execute_command("SELECT", 0)
            assert await admin.get("tw:mux:db") is None
            await admin.execute_command("CLIENT", "KILL", "USER", "tw")
            mux = client.multiplexer
            assert mux is not None
            assert mux._protocol is not None
            dropped = mux._protocol
            await await_until(lambda: dropped.broken is not None, within=10, what="dropped")
            assert await call_script(echo, keys=["tw:mux:db"], args=["4"]) == "tw:mux:db=4"
        finally:
            await client.aclose()
        wrong = connect_redis(f"redis://tw:wrong@127.0.0.1:{server.port}/3")
        try:
            assert wrong.multiplexer is not None
            with pytest.raises(RedisConnectionError):
                await wrong.multiplexer.execute("PING")
        finally:
            await wrong.aclose()
    finally:
        await admin.aclose()


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[Path]:
    """A redis-server listening on a unix socket only; its socket's path."""
    sock = tmp_path / "redis.sock"
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(sock.exists, within=30, what="the unix socket exists")
        yield sock
    finally:
        stop_process(proc)


async def test_a_unix_socket_server(unix_server: Path) -> None:
    """``unix://`` URLs (the embedded Redis of ``tokenward serve``) share a connection too."""
    client = connect_redis(f"unix://{unix_server}?db=2")
    try:
        mux = client.multiplexer
        assert mux is not None
        assert (mux.path, mux.db) == (str(unix_server), 2)
        echo = client.register_script(ECHO)
        await client.script_load(ECHO)
        assert await call_script(echo, keys=["tw:mux:u"], args=["1"]) == "tw:mux:u=1"
        assert await client.get("tw:mux:u") == "1"
    finally:
        await client.aclose()


def test_tls_and_credential_providers_keep_redis_py(tmp_path: Path) -> None:
    """Where the shared connection would not behave as redis-py's (TLS, credentials that
    change), there is none: calls go through redis-py's pool."""
    from redis.credentials import UsernamePasswordCredentialProvider

    tls = aioredis.ConnectionPool.from_url("rediss://127.0.0.1:6390/0")
    assert multiplexer_for(tls) is None
    provider = aioredis.ConnectionPool(
        host="127.0.0.1", credential_provider=UsernamePasswordCredentialProvider("u", "p")
    )
    assert multiplexer_for(provider) is None
    plain: Any = multiplexer_for(aioredis.ConnectionPool.from_url("redis://h:7/5"))
    assert (plain.host, plain.port, plain.db, plain.path) == ("h", 7, 5, None)
    assert redis_mux.__all__ == ["Multiplexer", "multiplexer_for"]


async def test_a_batch_answers_as_a_pipeline_does(redis_url: str) -> None:
    """:func:`send_batch` over the shared connection and over redis-py's pipeline (a client
    without one): the same replies, error replies in their places. (Raw replies: redis-py's
    reply callbacks, which turn a ``SET``'s OK into True, apply only to the pipeline.)"""
    shared = connect_redis(redis_url)
    piped = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        echo = shared.register_script(ECHO)
        await shared.script_load(ECHO)
        assert shared.multiplexer is not None
        assert getattr(piped, "multiplexer", None) is None

        def batch(tag: str) -> list[tuple[str | int, ...]]:
            key = f"tw:mux:batch:{tag}"
            return [
                ("DEL", key),
                ("ZADD", key, 1, "a"),
                ("EVALSHA", echo.sha, 1, key, "bad"),
                ("ZREM", key, "a", "b"),
                ("EVALSHA", "0" * 40, 0),
                ("HSET", key + ":s", "f", "v"),
                ("EXPIRE", key + ":s", 60),
                ("ZADD", key + ":s", 1, "a"),
                ("EVALSHA", echo.sha, 1, key + ":e", "ok"),
            ]

        replies = {tag: await send_batch(c, batch(tag)) for tag, c in (("s", shared), ("p", piped))}
        shown = {
            tag: [f"{type(r).__name__}: {r}" if isinstance(r, Exception) else r for r in rs]
            for tag, rs in replies.items()
        }
        assert shown["s"] == [
            s.replace("tw:mux:batch:p", "tw:mux:batch:s") if isinstance(s, str) else s
            for s in shown["p"]
        ]
        assert isinstance(replies["s"][4], NoScriptError)
        assert isinstance(replies["s"][7], ResponseError)
        assert replies["s"][8] == "tw:mux:batch:s:e=ok"
    finally:
        await shared.aclose()
        await piped.aclose()
