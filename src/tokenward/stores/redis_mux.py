"""One shared connection for the session store's script calls: every command made in one
turn of the event loop goes out in one write, and the replies that arrive together are
read in one go (auto-pipelining, as node-redis does).

Why: redis-py gives each command in flight a pooled connection of its own, so under load
every command is a system call to write it, a wake-up and a system call to read its reply,
and a trip through redis-py's stream reader and pool. On these virtual machines a system
call costs tens of microseconds; a rotation's one script call cost about a quarter of a
refresh's CPU. Here the commands of the requests a worker is serving at the same moment
share those costs (``bench/perf.py``, see docs/capacity.md).

What it keeps from redis-py: the replies, parsed by hiredis into the same values and the
same exception classes (``NOSCRIPT`` is :class:`~redis.exceptions.NoScriptError`); a
failure is a :class:`~redis.exceptions.RedisError`, which the stores map to 503 as before.

How it fails:

* a reply that is an error is raised to the command it answers, and to no other;
* a connection lost, or a reply not back within ``timeout``, fails every command in flight
  on it with :class:`~redis.exceptions.ConnectionError` (or ``TimeoutError``) and drops the
  connection; the next command connects anew (Redis restarted, a frozen server);
* a caller cancelled while waiting (its client went away) leaves its reply to be read and
  dropped, so the replies of the others stay in order.

Used only where it is safe (:func:`multiplexer_for`): plain ``redis://`` and ``unix://``
servers, not TLS, Sentinel or Cluster (whose clients find a new master or slot owner on a
failure), and only for single script calls without ``WAIT`` (a ``WAIT`` would hold every
command queued behind it on the shared connection).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import (
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Multiplexer", "multiplexer_for"]


class _Protocol(asyncio.Protocol):
    """One connection: commands queued in a turn of the loop, written together at its end;
    replies handed to the waiting commands in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error, encoding="utf-8"
        )
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.queued: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        #: why the connection is unusable; None while it works
        self.broken: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:
                    raise InvalidResponse("a reply no command asked for")
                future = waiting.popleft()
                if not future.done():  # a cancelled caller's reply is dropped
                    future.set_result(reply)
        except InvalidResponse as exc:
            self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("connection to Redis lost"))

    def fail(self, error: Exception) -> None:
        """Drop the connection and fail every command in flight with ``error``."""
        if self.broken is None:
            self.broken = error
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue ``packed``; the future gets its reply (an error reply as an exception
        instance, not raised)."""
        future = self.loop.create_future()
        if self.broken is not None:
            future.set_exception(self.broken)
            return future
        self.waiting.append(future)
        if not self.queued:
            self.loop.call_soon(self.write_queued)
        self.queued.append(packed)
        return future

    def write_queued(self) -> None:
        """Write what this turn of the loop queued, in one system call."""
        queued, self.queued = self.queued, []
        if self.broken is None and self.transport is not None and queued:
            self.transport.write(b"".join(queued))


class Multiplexer:
    """Commands to one Redis server over one shared connection (see the module's doc).

    Args:
        host, port: a TCP server; or ``path``: a unix socket.
        username, password: sent with ``AUTH`` on each new connection.
        db: the database, selected on each new connection.
        timeout: seconds to connect, and for a reply.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        timeout: float = 2.0,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.username, self.password, self.db = username, password, db
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def execute(self, *args: str | int) -> Any:
        """Send one command and return its reply.

        Raises:
            RedisError: its error reply (that command's only); ``ConnectionError`` or
                ``TimeoutError`` when the server could not be reached or did not answer in
                time (every command in flight then fails alike).
        """
        return await self._call(await self._usable(), args)

    async def execute_many(self, commands: Sequence[Sequence[str | int]]) -> list[Any]:
        """Send ``commands`` in one write, as a pipeline would; their replies in order, an
        error reply in its place (an exception instance, not raised).

        Raises:
            RedisError: ``ConnectionError`` or ``TimeoutError``, as :meth:`execute`.
        """
        protocol = await self._usable()
        futures = [protocol.send(_packed(command)) for command in commands]
        try:
            async with asyncio.timeout(self.timeout):
                return [await future for future in futures]
        except TimeoutError:
            raise self._timed_out(protocol) from None
        finally:
            for future in futures:  # after a failure, the rest failed alike: seen, not logged
                if future.done() and not future.cancelled():
                    future.exception()

    async def _call(self, protocol: _Protocol, args: Sequence[str | int]) -> Any:
        future = protocol.send(_packed(args))
        try:
            async with asyncio.timeout(self.timeout):
                reply = await future
        except TimeoutError:
            raise self._timed_out(protocol) from None
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _timed_out(self, protocol: _Protocol) -> RedisTimeoutError:
        # Its reply may still come: the connection goes, so that it cannot answer another.
        error = RedisTimeoutError(f"no reply from Redis within {self.timeout} s")
        protocol.fail(error)
        return error

    async def _usable(self) -> _Protocol:
        """The working connection, or a new one (none yet, broken, or a test's new loop)."""
        protocol = self._protocol
        if (
            protocol is None
            or protocol.broken is not None
            or protocol.loop is not asyncio.get_running_loop()
        ):
            protocol = await self._connected()
        return protocol

    async def _connected(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        task = self._connecting
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._connecting = loop.create_task(self._connect(loop))
            # read even when every caller went away, so it is never reported unread
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            # shielded: one caller going away must not cancel the others' connection
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        def factory() -> _Protocol:
            return _Protocol(loop)

        try:
            async with asyncio.timeout(self.timeout):
                if self.path is not None:
                    _, protocol = await loop.create_unix_connection(factory, self.path)
                else:
                    _, protocol = await loop.create_connection(factory, self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc or 'timed out'}") from exc
        try:
            if self.password is not None:
                credentials = (self.username, self.password) if self.username else (self.password,)
                await self._call(protocol, ("AUTH", *credentials))
            if self.db:
                await self._call(protocol, ("SELECT", self.db))
        except BaseException:
            protocol.fail(RedisConnectionError("Redis refused the connection's set-up"))
            raise
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        """Close the connection; commands in flight fail with ``ConnectionError``."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.loop is asyncio.get_running_loop():
            protocol.fail(RedisConnectionError("Redis client closed"))


def _packed(command: Sequence[str | int]) -> bytes:
    try:
        packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]  # stub: 1-tuples
    except TypeError as exc:
        raise DataError(f"cannot send {command[:1]!r}: {exc}") from None
    return packed


def multiplexer_for(pool: ConnectionPool) -> Multiplexer | None:
    """A :class:`Multiplexer` to the server of ``pool`` (same address, credentials,
    database and timeout), or None where it does not apply: TLS or a credential provider.
    A unix-socket pool gets one on its socket, any other on its host and port."""
    kwargs = pool.connection_kwargs
    kind = pool.connection_class
    if issubclass(kind, SSLConnection) or kwargs.get("credential_provider") is not None:
        return None
    common: dict[str, Any] = {
        "username": kwargs.get("username"),
        "password": kwargs.get("password"),
        "db": int(kwargs.get("db") or 0),
        "timeout": float(kwargs.get("socket_timeout") or 2.0),
    }
    if issubclass(kind, UnixDomainSocketConnection):
        return Multiplexer(path=str(kwargs["path"]), **common)
    return Multiplexer(
        host=str(kwargs.get("host", "127.0.0.1")), port=int(kwargs.get("port", 6379)), **common
    )
