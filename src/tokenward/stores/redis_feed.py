"""The invalidation feed: Redis pub/sub driving a :class:`~tokenward.revocation.SessionCache`.

Runs as one background task per process. The cache may vouch for live sessions only while
this feed holds a *lease*: the feed pings Redis on its subscription every ``ping_interval``
and, when a ping is answered, renews the lease to the moment that ping was *sent* plus
``lease`` seconds. Replies come back in order, so by then every ending published before
Redis answered the ping has been read and applied: the cache is coherent as of the send
time at least. A message alone renews nothing (it says nothing about when it was sent).

The cache checks the lease deadline itself, inline, each time it would vouch (see
:meth:`~tokenward.revocation.SessionCache.get`): a Redis that goes silent (frozen, paused,
partitioned) is vouched for at most ``lease`` seconds after the last answered ping was
sent, however busy the event loop is. A separate watchdog task, on top of that, marks the
cache unhealthy and empties it once the deadline has passed, and the feed resubscribes
from scratch (a new subscription empties the cache again before it vouches for anything,
since messages may have been missed in between). A stall of the whole event loop (CPU
starvation) is not forgiven: the cache stops vouching at the deadline, and after the stall
it starts over from an empty cache.
"""

from __future__ import annotations

import asyncio
import collections
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
        lease: seconds after sending its last answered ping at which the cache stops
            vouching; twice ``ping_interval`` unless given. With the defaults an instance
            cut off from Redis stops trusting its cache within 0.8 s.
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
        # Tidiness and the log line, not safety: the cache itself refuses to vouch past the
        # deadline, however late this task wakes up.
        period = self.ping_interval / 4
        while True:
            await asyncio.sleep(period)
            if self.cache.healthy and self.cache.clock() >= self.cache.lease_until:
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
        clock = self.cache.clock
        initialize = getattr(self.redis, "initialize", None)
        if initialize is not None:
            # A cluster client must know the slot map before it can place a subscription.
            await initialize()
        async with self.redis.pubsub() as pubsub:
            self._pubsub = pubsub
            await pubsub.subscribe(self.channel)
            # Pings in flight, oldest first: (the message it carries, when it was sent).
            pings: collections.deque[tuple[str, float]] = collections.deque(maxlen=64)
            sent = 0
            next_ping = clock() + self.ping_interval
            while not self._stopping:
                message = await pubsub.get_message(timeout=self.ping_interval / 2)
                now = clock()
                if message is not None:
                    kind = message.get("type")
                    if kind == "subscribe":
                        # A first subscription, or redis-py's silent resubscription after
                        # a reconnect: anything may have been missed, so start empty.
                        self.cache.set_healthy(True)
                        self.cache.reset()
                        self.cache.renew(now + self.lease)
                        self.subscriptions += 1
                        self._subscribed.set()
                    elif not self._subscribed.is_set():
                        # The lease lapsed on this connection: resubscribe from scratch.
                        raise ConnectionError("lease lapsed; resubscribing")
                    elif kind == "message":
                        self.cache.forget([_text(message["data"])])
                    elif kind == "pong":
                        answered = _answered(pings, _text(message["data"]))
                        if answered is not None:
                            self.cache.renew(answered + self.lease)
                if now >= next_ping:
                    sent += 1
                    pings.append((f"tw-lease-{sent}", now))
                    await pubsub.ping(f"tw-lease-{sent}")
                    next_ping = now + self.ping_interval


def _text(data: object) -> str:
    return data.decode() if isinstance(data, bytes) else str(data)


def _answered(pings: collections.deque[tuple[str, float]], data: str) -> float | None:
    """When the ping answered by ``data`` was sent; drops it and any older one in flight
    (answers come in order: an older one still listed was lost with a dropped connection)."""
    if all(label != data for label, _ in pings):
        return None
    while pings:
        label, at = pings.popleft()
        if label == data:
            return at
    return None
