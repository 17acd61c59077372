"""The invalidation feed: Redis pub/sub driving a :class:`~tokenward.revocation.SessionCache`.

Runs as one background task per process. The cache may vouch for live sessions only while
this feed holds a *lease*: it has heard from Redis (a message or the answer to its own
ping) within the last ``lease`` seconds. The moment the subscription fails, or the lease
lapses because Redis went silent (a partition, a stuck reconnect inside the client
library), the cache is marked unhealthy and emptied, and every request looks its session
up in Redis until the feed is back. A new subscription empties the cache again before it
vouches for anything, since messages may have been missed in between.

The lease is watched by a separate task, so it lapses on time even while the listening task
is blocked inside redis-py (whose pub/sub transparently reconnects and resubscribes). A
stall of the whole event loop (CPU starvation) does not count against the lease: the feed
could not ping or read during it, and no request was served during it either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio.client import PubSub
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
        ping_interval: seconds between health pings.
        lease: seconds without hearing from Redis after which the cache stops vouching;
            twice ``ping_interval`` unless given. With the defaults an instance cut off
            from Redis stops trusting its cache within 0.8 s.
        retry_delay: seconds to wait before resubscribing after a failure.
    """

    def __init__(
        self,
        redis: RedisClient,
        cache: SessionCache,
        *,
        channel: str = ENDED_CHANNEL,
        ping_interval: float = 0.4,
        lease: float | None = None,
        retry_delay: float = 0.5,
    ) -> None:
        self.redis = redis
        self.cache = cache
        self.channel = channel
        self.ping_interval = ping_interval
        self.lease = 2 * ping_interval if lease is None else lease
        self.retry_delay = retry_delay
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._stopping = False
        self._pubsub: PubSub | None = None
        self._last_seen = 0.0
        #: times the subscription was (re)established; for tests and metrics
        self.subscriptions = 0

    async def start(self, wait: float | None = None) -> None:
        """Start the background tasks; optionally wait up to ``wait`` s for the subscription."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenward-revocation-feed")
            self._watchdog = asyncio.create_task(self._watch(), name="tokenward-revocation-lease")
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), wait)

    async def stop(self) -> None:
        """Stop the tasks; the cache is left unhealthy (empty)."""
        self._stopping = True
        tasks = {t for t in (self._task, self._watchdog) if t is not None}
        for _ in range(3):
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=1.0)
            if tasks and self._pubsub is not None and self._pubsub.connection is not None:
                # A cancellation that coincides with redis-py's own read timeout can be
                # swallowed (asyncio.timeout); closing the socket ends the read for sure.
                await self._pubsub.connection.disconnect(nowait=True)
        if tasks:
            log.warning("revocation feed did not stop cleanly")
        self._task = self._watchdog = None
        self._stopping = False
        self._subscribed.clear()
        self.cache.set_healthy(False)

    @property
    def subscribed(self) -> bool:
        """Whether the feed is currently subscribed and holding its lease."""
        return self._subscribed.is_set() and self.cache.healthy

    def _lapse(self, why: str) -> None:
        if self.cache.healthy:
            log.warning("revocation feed down (%s): checking every session in Redis", why)
        self._subscribed.clear()
        self.cache.set_healthy(False)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.ping_interval / 4
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            stalled = loop.time() - due
            if stalled > period:
                # The whole event loop was stalled (CPU starvation): the feed could neither
                # ping nor read meanwhile, and no request was served either. The lease counts
                # the loop's running time only, so the stall is added back.
                self._last_seen += stalled
            if self.cache.healthy and loop.time() - self._last_seen > self.lease:
                self._lapse("lease lapsed")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self._lapse(type(exc).__name__)
            except Exception as exc:
                # Anything else must not end the task for good: the cache would stay cold
                # (safe, since it fails closed) but never recover.
                log.exception("revocation feed failed: %s", type(exc).__name__)
                self._lapse(type(exc).__name__)
            finally:
                self._pubsub = None
            if not self._stopping:
                await asyncio.sleep(self.retry_delay)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        initialize = getattr(self.redis, "initialize", None)
        if initialize is not None:
            # A cluster client must know the slot map before it can place a subscription.
            await initialize()
        async with self.redis.pubsub() as pubsub:
            self._pubsub = pubsub
            await pubsub.subscribe(self.channel)
            next_ping = loop.time() + self.ping_interval
            while not self._stopping:
                message = await pubsub.get_message(timeout=self.ping_interval / 2)
                now = loop.time()
                if message is not None:
                    kind = message.get("type")
                    if kind == "subscribe":
                        # A first subscription, or redis-py's silent resubscription after
                        # a reconnect: anything may have been missed, so start empty.
                        self._last_seen = now
                        self.cache.set_healthy(True)
                        self.cache.reset()
                        self.subscriptions += 1
                        self._subscribed.set()
                    elif not self._subscribed.is_set():
                        # The lease lapsed on this connection: resubscribe from scratch.
                        raise ConnectionError("lease lapsed; resubscribing")
                    else:
                        self._last_seen = now
                        if kind == "message":
                            self.cache.forget([str(message["data"])])
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + self.ping_interval
