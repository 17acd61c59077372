"""Connecting to Redis from a ``TOKENWARD_REDIS_URL``.

Accepted forms:

* ``redis://[user:pass@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path/to/sock``
* ``redis+sentinel://[user:pass@]host1:port1,host2:port2/<service name>[/db]``
* ``redis+cluster://[user:pass@]host:port`` (one seed node is enough)

Every connection has connect and read timeouts, so a dead server costs a bounded wait and
a 503, never a hang.
"""

from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel

__all__ = ["RedisClient", "connect_redis"]

RedisClient = aioredis.Redis


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


def connect_redis(url: str, *, timeout: float = 2.0) -> aioredis.Redis:
    """A client for ``url``; no connection is made until the first command.

    Cluster URLs return a :class:`redis.asyncio.cluster.RedisCluster`, which offers the same
    commands and scripts for our single-slot operations.
    """
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":
        hosts = []
        for item in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = item.partition(":")
            hosts.append((host, int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError(
                "redis+sentinel URL needs a service name: redis+sentinel://host:port/name"
            )
        db = int(path[1]) if len(path) > 1 else 0
        auth: dict[str, Any] = {}
        if parts.password:
            auth["password"] = unquote(parts.password)
        if parts.username:
            auth["username"] = unquote(parts.username)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs={"socket_timeout": timeout}, **_options(timeout)
        )
        master: aioredis.Redis = sentinel.master_for(path[0], db=db, **auth)
        return master
    if parts.scheme == "redis+cluster":
        plain = "redis://" + url.split("://", 1)[1]
        opts = _options(timeout)
        opts.pop("health_check_interval")
        opts.pop("retry_on_timeout")
        cluster: Any = RedisCluster.from_url(plain, **opts)
        return cluster  # type: ignore[no-any-return]
    return aioredis.from_url(url, **_options(timeout))
