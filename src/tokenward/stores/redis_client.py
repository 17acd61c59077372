"""Connecting to Redis from a ``TOKENWARD_REDIS_URL``, and making writes durable.

Accepted forms (``rediss`` instead of ``redis`` means TLS in every form):

* ``redis://[user:pass@]host:port/db``, ``rediss://...``, ``unix:///path/to/sock``
* ``redis+sentinel://[user:pass@]host1:port1,host2:port2/<service name>[/db]``; the user
  and password are the data nodes'; the sentinels' own are the query parameters
  ``sentinel_username`` and ``sentinel_password``
* ``redis+cluster://[user:pass@]host1:port1,host2:port2`` (seed nodes: one reachable seed
  is enough, the others are tried when it is not)

TLS options are query parameters of the ``rediss+...`` forms: ``ssl_ca_certs`` (a PEM
file of the CA to trust; the system's when absent), ``ssl_certfile`` and ``ssl_keyfile``
(a client certificate, when the servers ask for one). Certificates are always verified.

Every connection has connect and read timeouts, so a dead server costs a bounded wait and
a 503, never a hang.

**Failover.** A Sentinel client watches the sentinels' ``+switch-master`` announcements
and, when its service's master moves, drops every connection to the old one at once, idle
or busy (a command in flight fails over to the new master through redis-py's retry, or
answers 503): otherwise pooled connections would go on writing to the demoted master until
Sentinel converts it to a replica (about ten seconds), and its resynchronisation would
throw those writes away. A ``READONLY`` answer (a connection still on a master that has
since become a replica) has the master address checked at once too. What the announcement
cannot cover (the instant between the promotion and the announcement, and a crash of the
master) is covered by :class:`Durability`: ``WAIT`` after every session write.

Every (re)connection asks all the sentinels where the master is and believes the newest
configuration epoch. redis-py would reconnect a broken connection to the host it had, and
believe the first sentinel that answers: after a crash both can lead to the old master,
restarted empty, where every session looks ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - redis[hiredis] is a dependency; packing still works
    _hiredis = None  # type: ignore[assignment]

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.connection import Connection as ClusterConnection
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from tokenward.errors import ConfigError
from tokenward.stores.redis_mux import Multiplexer, multiplexer_for

__all__ = [
    "Durability",
    "NotDurable",
    "RedisClient",
    "RedisTarget",
    "RedisWait",
    "ScriptCall",
    "call_script",
    "connect_redis",
    "parse_redis_url",
    "parse_redis_wait",
    "probe_redis",
    "run_scripts",
    "send_batch",
]

log = logging.getLogger("tokenward.redis")

RedisClient = aioredis.Redis

#: The query parameters a URL may carry (anything else is a typo: refused).
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
#: Seconds between two attempts to (re)subscribe to a sentinel's announcements.
SENTINEL_RETRY = 0.5
#: Where Sentinel announces a new master: ``<service> <old ip> <old port> <ip> <port>``.
SWITCH_CHANNEL = "+switch-master"


# ------------------------------------------------------------------------- the URL


@dataclass(frozen=True)
class RedisTarget:
    """A parsed ``TOKENWARD_REDIS_URL`` (see the module docstring for the forms)."""

    kind: str  # "single", "sentinel" or "cluster"
    url: str
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls_options: dict[str, str] = field(default_factory=dict)


def _hosts(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    out = []
    for item in netloc.rsplit("@", 1)[-1].split(","):
        item = item.strip()
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError(f"empty host in {netloc.rsplit('@', 1)[-1]!r}")
        if port_text and not port_text.isdigit():
            raise ValueError(f"port {port_text!r} of {host} is not a number")
        port = int(port_text) if port_text else default_port
        if not 0 < port < 65536:
            raise ValueError(f"port {port} of {host} is out of range")
        out.append((host, port))
    return tuple(out)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``url``; :class:`ValueError` with one line saying what is wrong otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme
    base, _, topology = scheme.partition("+")
    if base not in ("redis", "rediss", "unix") or topology not in ("", "sentinel", "cluster"):
        raise ValueError(f"unknown scheme {scheme!r}")
    if base == "unix" and topology:
        raise ValueError(f"unknown scheme {scheme!r}")
    if not topology:
        return RedisTarget(kind="single", url=url, tls=base == "rediss")
    tls = base == "rediss"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    allowed = (_TLS_OPTIONS if tls else ()) + (_SENTINEL_OPTIONS if topology == "sentinel" else ())
    for key in query:
        if key not in allowed:
            hint = " (TLS options need rediss+...)" if key in _TLS_OPTIONS else ""
            raise ValueError(f"unknown query parameter {key!r}{hint}")
    common: dict[str, Any] = {
        "url": url,
        "tls": tls,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "tls_options": {k: v for k, v in query.items() if k in _TLS_OPTIONS},
    }
    if topology == "cluster":
        return RedisTarget(kind="cluster", hosts=_hosts(parts.netloc, 6379), **common)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a Sentinel URL needs a service name: redis+sentinel://host:port/name")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"path {parts.path!r}: expected /<service name>[/<db number>]")
    return RedisTarget(
        kind="sentinel",
        hosts=_hosts(parts.netloc, 26379),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) > 1 else 0,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
        **common,
    )


# ----------------------------------------------------------------------- the client


def _options(timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "retry_on_timeout": False,
        "decode_responses": True,
        **_without_maint_notifications(),
    }


def _without_maint_notifications() -> dict[str, Any]:
    """Turn off redis-py's maintenance notifications where it has them (redis-py 8).

    They are a Redis Cloud/Enterprise feature (RESP3 push messages). With redis-py's
    default of "auto" its pool skips the check that replaces a pooled connection the server
    has closed, so after a Redis restart every idle connection would fail one request with
    a 503. Off, the pool reconnects it. Older redis-py has neither the feature nor the flaw.
    """
    if "maint_notifications_config" not in inspect.signature(AbstractConnection).parameters:
        return {}
    from redis.maint_notifications import MaintNotificationsConfig

    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def _tls(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    return {"ssl": True, "ssl_cert_reqs": "required", **target.tls_options}


#: Connections a client keeps to one server at most. A command finding them all busy waits
#: for one (up to the client's timeout) rather than failing: redis-py's default pool
#: refuses the 101st concurrent command at once, so a burst of requests on one worker
#: answered 503 while Redis was idle.
POOL_SIZE = 128


def connect_redis(url: str, *, timeout: float = 2.0) -> aioredis.Redis:
    """A client for ``url``; no connection is made until the first command.

    Cluster URLs return a :class:`redis.asyncio.cluster.RedisCluster`, which offers the same
    commands and scripts for our single-slot operations.

    Raises:
        ValueError: ``url`` is malformed (one line saying how).
    """
    target = parse_redis_url(url)
    if target.kind == "sentinel":
        return _connect_sentinel(target, timeout)
    if target.kind == "cluster":
        opts = _options(timeout)
        opts.pop("health_check_interval")
        opts.pop("retry_on_timeout")
        cluster: Any = _Cluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            username=target.username,
            password=target.password,
            **_tls(target),
            **opts,
        )
        return cluster  # type: ignore[no-any-return]
    pool = _QuickPool.from_url(url, max_connections=POOL_SIZE, timeout=timeout, **_options(timeout))
    pool.connection_class = _prompt(pool.connection_class)
    return _SharingRedis(connection_pool=pool)


class _SharingRedis(aioredis.Redis):
    """redis-py's client, plus a :class:`~tokenward.stores.redis_mux.Multiplexer` to the
    same server for the session store's script calls (:func:`call_script`); closed with it."""

    def __init__(self, **kwargs: Any) -> None:  # as redis-py's own (its client() passes more)
        super().__init__(**kwargs)
        self.multiplexer = multiplexer_for(self.connection_pool)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self.multiplexer is not None:
            await self.multiplexer.aclose()
        await super().aclose(close_connection_pool)


class _QuickPool(aioredis.BlockingConnectionPool):
    """Hands out a free connection, and takes one back, without redis-py 8's per-call
    machinery when nobody waits: its ``get_connection`` takes two locks, a timer, argument
    inspection and observability hooks (about 90 µs a command on these machines; we use
    neither its observability nor its re-authentication events). The connection is still
    checked (:meth:`ensure_connection`: connected, nothing unread) exactly as redis-py
    does. While any caller waits for a connection, every call takes redis-py's own path,
    so a waiter is never passed over by a newcomer.
    """

    _waiting = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._waiting or args or kwargs or not self._available_connections:
            self._waiting += 1
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
            finally:
                self._waiting -= 1
        connection = self._available_connections.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        if self._waiting or connection not in self._in_use_connections:
            await super().release(connection)  # wakes a waiter; or redis-py's error
            return
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()
        self._available_connections.append(connection)


class _HiredisPack(AbstractConnection):
    """Packs commands with hiredis (every connection we make: standalone, Sentinel and
    Cluster)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        """The command in RESP, packed by hiredis (C) instead of redis-py's Python loop:
        about 4 against 35 µs for a rotation's script call. Same bytes: a first argument
        with spaces is split (``"SCRIPT LOAD"``), text is UTF-8, numbers as ``repr``; an
        argument hiredis does not take (``None``, a bool) gets redis-py's own packing and
        error."""
        if _hiredis is None:
            return super().pack_command(*args)
        head = args[0]
        if (isinstance(head, str) and " " in head) or (isinstance(head, bytes) and b" " in head):
            args = (*head.split(), *args[1:])
        try:
            return [_hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)


class _PromptSend(_HiredisPack):
    """Sends a command without a timer when the socket takes it at once.

    redis-py wraps every send in ``asyncio.wait_for(..., socket_timeout)``, which on Python
    3.11 creates a task per command: about 30 µs of a worker's CPU on these machines, for
    a write that almost always goes straight into the socket buffer. Here the bytes are
    written first; only if the kernel did not take them all is the rest drained under the
    timeout, through redis-py's own path (same errors, same disconnect). A due health check,
    a closed or backed-up socket also take redis-py's path.
    """

    async def send_packed_command(
        self, command: str | bytes | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer = self._writer
        due = (
            check_health
            and self.health_check_interval
            and (asyncio.get_running_loop().time() > self.next_health_check)
        )
        transport = writer.transport if writer is not None else None
        if (
            writer is None
            or transport is None
            or not self.is_connected
            or due
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            await super().send_packed_command(command, check_health)
            return
        if isinstance(command, str):
            command = command.encode()
        writer.writelines([command] if isinstance(command, bytes) else command)
        if transport.get_write_buffer_size():
            # The rest waits in the transport: redis-py's drain, timeout and error mapping.
            await super().send_packed_command([], check_health=False)


def _prompt(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (the connection class ``from_url`` chose: TCP, TLS or Unix socket) with
    :class:`_PromptSend`."""
    return type(f"Prompt{cls.__name__}", (_PromptSend, cls), {})


def _packed(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (a cluster node's connection class: TCP or TLS) with :class:`_HiredisPack`."""
    return type(f"Packed{cls.__name__}", (_HiredisPack, cls), {})


class _Cluster(RedisCluster):
    """A cluster client whose "no seed answers" is a connection error like any other.

    redis-py raises :class:`RedisClusterException`, which is not a :class:`RedisError`:
    every caller that answers 503 for a Redis failure would let it through as a 500. The
    next command tries the seeds again, so an instance started while they were down (or
    whose first seed stays dead) becomes ready as soon as one of them answers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # redis-py fixes the nodes' connection class; ours packs with hiredis. The same
        # two places redis-py itself updates for nodes made later and the seeds made now.
        manager = self.nodes_manager
        packed = _packed(manager.connection_kwargs.get("connection_class", ClusterConnection))
        manager.connection_kwargs["connection_class"] = packed
        for node in manager.startup_nodes.values():
            node.connection_class = packed  # type: ignore[assignment]

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(str(exc).splitlines()[0]) from exc


def _connect_sentinel(target: RedisTarget, timeout: float) -> aioredis.Redis:
    tls = _tls(target)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": True,
        **tls,
    }
    if target.sentinel_username:
        sentinel_kwargs["username"] = target.sentinel_username
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    auth: dict[str, Any] = {}
    if target.password:
        auth["password"] = target.password
    if target.username:
        auth["username"] = target.username
    sentinel = _EpochSentinel(
        list(target.hosts), sentinel_kwargs=sentinel_kwargs, **_options(timeout)
    )
    connection_class = _FailoverSSLConnection if tls else _FailoverConnection
    master: aioredis.Redis = sentinel.master_for(
        target.service,
        connection_pool_class=FailoverPool,
        connection_class=connection_class,
        max_connections=POOL_SIZE,
        timeout=timeout,
        db=target.db,
        **tls,
        **auth,
    )
    return master


class _EpochSentinel(Sentinel):
    """Asks the sentinels and believes the one with the newest configuration.

    redis-py takes the first sentinel whose answer looks healthy. A sentinel that has not
    yet heard of a failover still names the old master, and once that server is back (an
    empty master until Sentinel converts it, about ten seconds later) it looks healthy: a
    client believing it would read nothing there (sessions "ended") and write what will be
    thrown away. Each failover raises the configuration epoch, so the highest epoch among
    the answers names the current master.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._inflight: dict[str, asyncio.Task[tuple[str, int]]] = {}

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        # One question at a time: a burst of new connections (a pool filling up) shares the
        # answer instead of each asking every sentinel (and running out of connections).
        task = self._inflight.get(service_name)
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._discover(service_name))
            task.add_done_callback(_retrieved)
            self._inflight[service_name] = task
        return await asyncio.shield(task)

    async def _discover(self, service_name: str) -> tuple[str, int]:
        async def ask(sentinel: aioredis.Redis) -> tuple[bool, dict[str, Any] | None]:
            """(whether it answered, its state of the master if healthy)."""
            try:
                masters: Any = await sentinel.sentinel_masters()
            except (RedisError, OSError):
                return False, None
            state = masters.get(service_name)
            healthy = state and self.check_master_state(state, service_name)
            return True, state if healthy else None

        # Until a majority has answered (Sentinel's own rule for a failover), or all have
        # tried: one unreachable sentinel must not make every connection wait its timeout.
        pending = {asyncio.ensure_future(ask(s)) for s in self.sentinels}
        majority = len(pending) // 2 + 1
        answered = 0
        states: list[dict[str, Any]] = []
        try:
            while pending and answered < majority:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    reached, state = task.result()
                    answered += reached
                    if state is not None:
                        states.append(state)
        finally:
            for task in pending:
                task.cancel()
        if not states:
            raise MasterNotFoundError(f"No master found for {service_name!r}")
        newest = max(states, key=lambda state: int(state.get("config-epoch", 0)))
        return str(newest["ip"]), int(newest["port"])


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a shared task's error as seen (its waiters may all have been cancelled)."""
    if not task.cancelled():
        task.exception()


class _FailoverConnection(_PromptSend, SentinelManagedConnection):
    """A connection that asks for the master whenever it (re)connects, and reports a
    ``READONLY`` answer to its pool (a demoted master)."""

    _addressed = False

    async def connect_to(self, address: Any) -> None:
        self._addressed = True  # the pool has just asked the sentinels
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._addressed = False

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        # redis-py's command retry reconnects a broken connection here directly, to the
        # host it had: after a crash that is the old master, back as an empty master
        # before Sentinel converts it. Every (re)connection asks where the master is now.
        if not self.is_connected and not self._addressed:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health=check_health, retry_socket_connect=False)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except RedisConnectionError as exc:
            recheck = getattr(self.connection_pool, "recheck_master", None)
            if isinstance(exc.__context__, ReadOnlyError) and recheck is not None:
                recheck()
            raise


class _FailoverSSLConnection(_FailoverConnection, SentinelManagedSSLConnection):
    pass


class FailoverPool(_QuickPool, SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel pool that drops every connection to a master that is no longer one (and,
    like the standalone client's, waits for a free connection when all are busy).

    On its first use it subscribes to ``+switch-master`` on every sentinel (a background
    task per event loop, stopped by :meth:`aclose`); each time it (re)subscribes it also
    asks for the master's address, since an announcement may have been missed meanwhile.
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._watch: asyncio.Task[None] | None = None
        self._closing = False
        self._checks: set[asyncio.Task[None]] = set()
        #: times the pool dropped its connections because the master moved (for tests)
        self.switches = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self._start_watch()
        return await super().get_connection(*args, **kwargs)

    def _start_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._closing = False  # used again after a close
            self._watch = asyncio.get_running_loop().create_task(
                self._watch_sentinels(), name=f"tokenward-sentinel-watch-{self.service_name}"
            )

    async def aclose(self) -> None:
        self._closing = True
        tasks = [t for t in (self._watch, *self._checks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a close must not hang on a task stuck in a connection attempt.
            await asyncio.wait(tasks, timeout=4 * SENTINEL_RETRY)
        self._watch = None
        await super().aclose()
        with contextlib.suppress(RedisError, OSError):
            await self.sentinel_manager.aclose()

    def recheck_master(self) -> None:
        """Ask the sentinels for the master now (in the background), and switch if it moved."""
        task = asyncio.get_running_loop().create_task(self._recheck())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _recheck(self) -> None:
        try:
            address = await self.sentinel_manager.discover_master(self.service_name)
        except (RedisError, OSError):
            return  # no sentinel knows yet: the next connection asks again
        await self.switch_to(tuple(address))

    async def switch_to(self, address: tuple[str, int]) -> None:
        """The master is now at ``address``: drop every connection to another one."""
        old = self.master_address
        if old is None or tuple(old) == address:
            self.master_address = address
            return
        self.master_address = address
        self.switches += 1
        log.warning(
            "Redis master of %r moved from %s:%s to %s:%s: dropping the connections to the "
            "old one",
            self.service_name, old[0], old[1], address[0], address[1],
        )  # fmt: skip
        # Busy ones too: a command in flight on the old master must not be acknowledged.
        await super().disconnect(inuse_connections=True)

    async def _watch_sentinels(self) -> None:
        sentinels = list(self.sentinel_manager.sentinels)
        await asyncio.gather(*(self._watch_one(s) for s in sentinels))

    async def _watch_one(self, sentinel: aioredis.Redis) -> None:
        while not self._closing:
            try:
                async with sentinel.pubsub() as pubsub:
                    await pubsub.subscribe(SWITCH_CHANNEL)
                    await self._recheck()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None and message.get("type") == "message":
                            await self._announced(str(message["data"]))
            except (RedisError, OSError):
                # That sentinel is down: the others still announce. But a cancellation that
                # met a read timeout comes out as TimeoutError (an OSError): not swallowed,
                # or the task would never end and closing the client would hang.
                task = asyncio.current_task()
                if self._closing or (task is not None and task.cancelling()):
                    raise asyncio.CancelledError from None
            await asyncio.sleep(SENTINEL_RETRY)

    async def _announced(self, data: str) -> None:
        fields = data.split()
        if len(fields) == 5 and fields[0] == self.service_name and fields[4].isdigit():
            await self.switch_to((fields[3], int(fields[4])))


ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[str | int]]
"""``(script, keys, args)``: one call of a registered script."""


async def send_batch(redis: RedisClient, commands: Sequence[Sequence[str | int]]) -> list[Any]:
    """``commands`` in one round trip: over the client's shared connection where it has one
    (:class:`~tokenward.stores.redis_mux.Multiplexer`), else in one pipeline. Not for a
    Cluster (whose pipelines split by node). Replies in order, an error reply (``NOSCRIPT``
    too) in its place, not raised. Replies are Redis's own: for commands redis-py converts
    (a ``SET``'s OK to True) the two paths differ, so send scripts and plain counting
    commands (``DEL``, ``ZREM``).

    Raises:
        RedisError: the server could not be reached or did not answer in time.
    """
    multiplexer: Multiplexer | None = getattr(redis, "multiplexer", None)
    if multiplexer is not None:
        return await multiplexer.execute_many(commands)
    async with redis.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies


async def run_scripts(
    redis: RedisClient, calls: Sequence[ScriptCall], *, raise_on_error: bool = True
) -> list[Any]:
    """Run each ``(script, keys, args)`` in order, in one round trip (:func:`send_batch`).

    Returns the replies in order. ``EVALSHA`` itself is queued: a Script object would make
    the pipeline send ``SCRIPT EXISTS`` first, a second round trip every time; a call the
    server does not hold the script of (``NOSCRIPT``: Redis restarted or failed over) runs
    again on its own, as a script. On a Cluster, where the calls' keys can live on several
    nodes, one call after another. With ``raise_on_error=False`` every call runs and a
    failed one's reply is its :class:`RedisError`, in its place.

    Raises:
        RedisError: the first call that failed (in one round trip the others still ran; on
            a Cluster the later ones did not).
    """

    async def alone(call: ScriptCall) -> Any:
        script, keys, args = call
        try:
            return await script(keys=keys, args=args)
        except RedisError as exc:
            if raise_on_error:
                raise
            return exc

    if isinstance(redis, RedisCluster):
        return [await alone(call) for call in calls]
    replies = await send_batch(
        redis, [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
    )
    for i, (call, reply) in enumerate(zip(calls, replies, strict=True)):
        if isinstance(reply, NoScriptError):
            replies[i] = await alone(call)
        elif isinstance(reply, Exception) and raise_on_error:
            raise reply
    return replies


async def call_script(
    script: AsyncScript, *, keys: Sequence[str], args: Iterable[str | int]
) -> Any:
    """``script(keys, args)``, over its client's shared connection where it has one
    (:class:`~tokenward.stores.redis_mux.Multiplexer`: the commands of concurrent requests
    in one write). A server that does not hold the script (``NOSCRIPT``: Redis restarted)
    gets it through redis-py, which loads it."""
    multiplexer: Multiplexer | None = getattr(script.registered_client, "multiplexer", None)
    if multiplexer is None:
        return await script(keys=keys, args=args)
    keys, args = list(keys), list(args)
    try:
        return await multiplexer.execute("EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await script(keys=keys, args=args)


async def probe_redis(client: aioredis.Redis, url: str, *, wait: float) -> bool:
    """PING ``client`` once; when that fails, log one line naming ``url`` (its passwords
    masked) and why, and return False. For start-up: the service starts anyway and answers
    503 (``/readyz`` too) until Redis answers."""
    from tokenward.settings import mask_url_password

    try:
        await asyncio.wait_for(client.ping(), wait)
    except (RedisError, OSError, TimeoutError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error(  # noqa: TRY400 -- one line, no traceback: the reason says it all
            "Redis unreachable at start-up: %s (%s); answering 503 until it is",
            mask_url_password(url), reason[:200],
        )  # fmt: skip
        return False
    return True


# ------------------------------------------------------------------------ durability


@dataclass(frozen=True)
class RedisWait:
    """``WAIT replicas timeout_ms``, or with ``aof`` ``WAITAOF 1 replicas timeout_ms``."""

    replicas: int
    timeout_ms: int
    aof: bool = False

    def __str__(self) -> str:
        return f"{self.replicas}:{self.timeout_ms}" + (":aof" if self.aof else "")


_WAIT = re.compile(r"(\d{1,2}):(\d{1,6})(:aof)?")


def parse_redis_wait(text: str) -> RedisWait | str | None:
    """``off`` -> None, ``auto`` -> "auto", ``N:MS`` / ``N:MS:aof`` -> :class:`RedisWait`.

    Raises:
        ValueError: anything else (one line).
    """
    value = text.strip().lower()
    if value in ("off", "auto"):
        return None if value == "off" else "auto"
    match = _WAIT.fullmatch(value)
    if match is None:
        raise ValueError(
            "expected off, auto, <replicas>:<timeout ms> or <replicas>:<timeout ms>:aof"
        )
    replicas, timeout_ms, aof = int(match[1]), int(match[2]), bool(match[3])
    if not aof and replicas < 1:
        raise ValueError("WAIT needs at least 1 replica (0:<ms>:aof waits for the local fsync)")
    if timeout_ms < 1:
        raise ValueError("the timeout must be at least 1 ms (0 would wait forever)")
    return RedisWait(replicas, timeout_ms, aof)


#: ``auto`` on Sentinel: a write is acknowledged once the replica has it.
SENTINEL_WAIT = RedisWait(1, 500)


class NotDurable(RedisError):
    """A write was applied but not confirmed by enough replicas (or the fsync) in time.

    It may survive or be lost: the caller answers 503, so the client retries and nothing
    it was told is lost. ``reply`` is what the script answered (the write it made), for a
    caller that has to make the retry of an unconfirmed answer harmless."""

    def __init__(self, message: str, reply: Any = None) -> None:
        super().__init__(message)
        self.reply = reply


class Durability:
    """Runs the session store's write scripts followed by ``WAIT`` on the same connection.

    Args:
        wait: what to wait for; None runs the scripts alone.
    """

    def __init__(self, wait: RedisWait | None = None) -> None:
        self.wait = wait

    @classmethod
    def for_setting(cls, setting: str, url: str | None) -> Durability:
        """From ``TOKENWARD_REDIS_WAIT`` and the Redis URL in use (None: the embedded one).

        ``auto`` waits for one replica on Sentinel and nothing elsewhere.

        Raises:
            ConfigError: a wait on a cluster (a script and its WAIT must share a connection,
                which a cluster client does not offer: use ``min-replicas-to-write``).
        """
        parsed = parse_redis_wait(setting)
        kind = parse_redis_url(url).kind if url is not None else "single"
        if parsed == "auto":
            return cls(SENTINEL_WAIT if kind == "sentinel" else None)
        if parsed is not None and kind == "cluster":
            raise ConfigError(
                "TOKENWARD_REDIS_WAIT: not supported on redis+cluster; set it to off or auto "
                "and configure min-replicas-to-write on the nodes"
            )
        return cls(parsed if isinstance(parsed, RedisWait) else None)

    async def verify(self, client: aioredis.Redis) -> None:
        """Check, once at start-up, that the server can do what the setting asks.

        ``WAITAOF`` needs Redis 7.2+ or Valkey 8+ and ``appendonly yes``; without them
        every session write would answer 503, so this is a start-up error instead. An
        unreachable server passes (the start-up probe has said so; writes answer 503).

        Raises:
            ConfigError: the server refused ``WAITAOF`` (one line, with its reason).
        """
        wait = self.wait
        if wait is None or not wait.aof:
            return
        try:
            await client.execute_command("WAITAOF", 1, 0, 1)  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise ConfigError(
                f"TOKENWARD_REDIS_WAIT: {wait} needs WAITAOF (Redis 7.2+ or Valkey 8+, with "
                f"appendonly yes on every node); the server answered: {reason}"
            ) from exc
        except (RedisError, OSError):
            return

    async def run(
        self, script: AsyncScript, *, keys: Sequence[str], args: Iterable[str | int]
    ) -> Any:
        """``script(keys, args)``; with a wait, then ``WAIT``/``WAITAOF`` on its connection.

        Raises:
            NotDurable: fewer replicas (or no local fsync) confirmed it within the timeout.
        """
        wait = self.wait
        if wait is None:
            return await call_script(script, keys=keys, args=args)
        # The script and its WAIT must share one connection (WAIT counts the replicas that
        # have this connection's last write), hence one pipeline; closed so its connection
        # goes back to the pool even when the master just went away.
        pipe: Any = script.registered_client.pipeline(transaction=False)
        async with pipe:
            await script(keys=keys, args=args, client=pipe)  # queued: the pipeline loads it
            if wait.aof:
                pipe.execute_command("WAITAOF", 1, wait.replicas, wait.timeout_ms)
            else:
                pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
            reply, acked = await pipe.execute()
        local, replicas = (int(acked[0]), int(acked[1])) if wait.aof else (1, int(acked))
        if local < 1 or replicas < wait.replicas:
            raise NotDurable(
                f"write confirmed by {replicas} of {wait.replicas} replicas"
                + (" and not fsynced" if local < 1 else "")
                + f" within {wait.timeout_ms} ms",
                reply,
            )
        return reply
