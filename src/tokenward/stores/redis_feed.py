"""The invalidation feed: Redis pub/sub driving a :class:`~tokenward.revocation.SessionCache`.

Runs as one background task per process. While subscribed, the cache may vouch for live
sessions; the moment the subscription fails (or a health ping goes unanswered) the cache is
marked unhealthy and emptied, and every request looks its session up in Redis until the
feed is back, when the cache starts again from empty (messages may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from tokenward.revocation import SessionCache
from tokenward.stores.redis_client import RedisClient
from tokenward.stores.redis_sessions import ENDED_CHANNEL

__all__ = ["RevocationFeed"]

log = logging.getLogger("tokenward.feed")


class RevocationFeed:
    """Subscribes to the ended-session channel and keeps a cache coherent.

    Args:
        redis: the client (a dedicated pub/sub connection is taken from its pool).
        cache: the cache to drive.
        channel: the channel the session store publishes ended session ids on.
        ping_interval: seconds between health pings; a silent connection for twice this
            long counts as down.
        retry_delay: seconds to wait before resubscribing after a failure.
    """

    def __init__(
        self,
        redis: RedisClient,
        cache: SessionCache,
        *,
        channel: str = ENDED_CHANNEL,
        ping_interval: float = 1.0,
        retry_delay: float = 0.5,
    ) -> None:
        self.redis = redis
        self.cache = cache
        self.channel = channel
        self.ping_interval = ping_interval
        self.retry_delay = retry_delay
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, wait: float | None = None) -> None:
        """Start the background task; optionally wait up to ``wait`` seconds for it to subscribe."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenward-revocation-feed")
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), wait)

    async def stop(self) -> None:
        """Stop the task; the cache is left unhealthy (empty)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.cache.set_healthy(False)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                log.warning("revocation feed down: %s", type(exc).__name__)
            except Exception as exc:
                # Anything else must not end the task for good: the cache would stay cold
                # (safe, since it fails closed) but never recover.
                log.exception("revocation feed failed: %s", type(exc).__name__)
            self._subscribed.clear()
            self.cache.set_healthy(False)
            await asyncio.sleep(self.retry_delay)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        initialize = getattr(self.redis, "initialize", None)
        if initialize is not None:
            # A cluster client must know the slot map before it can place a subscription.
            await initialize()
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(self.channel)
            last_seen = loop.time()
            next_ping = last_seen + self.ping_interval
            while True:
                message = await pubsub.get_message(timeout=self.ping_interval / 2)
                now = loop.time()
                if message is not None:
                    last_seen = now
                    kind = message.get("type")
                    if kind == "subscribe":
                        self.cache.set_healthy(True)
                        self.cache.reset()
                        self._subscribed.set()
                    elif kind == "message":
                        self.cache.forget([str(message["data"])])
                if now - last_seen > 2 * self.ping_interval:
                    raise ConnectionError("no answer to health pings")
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + self.ping_interval
