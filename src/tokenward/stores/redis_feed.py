"""The invalidation feed: Redis pub/sub driving a :class:`~tokenward.revocation.SessionCache`.

Runs as background tasks in each process. Standalone Redis and Sentinel: one connection
subscribed to ``tw:ended``. Redis Cluster: sharded pub/sub, one connection per master
subscribed (``SSUBSCRIBE``) to the shard channels of the slots it owns
(:mod:`tokenward.stores.redis_channels` says why one channel per slot), so an ending
travels only to the shard of its user instead of being broadcast to every node.

The feed's connections are its own, never borrowed from the client's pools: redis-py's
cluster client disconnects every connection of every node it knows (``aclose()``) when a
command meets ``CLUSTERDOWN``, an uncovered slot or repeated ``MOVED`` -- for instance
while another master fails over -- and a subscription on a borrowed connection went with
them (the feeds of both instances dropped at once although the channel's node stayed up;
``test_feed_survives_the_cluster_client_closing_its_connections``).

**The lease.** The cache may vouch for live sessions only while this feed holds a lease. Every
``ping_interval`` the feed publishes a ping of its own *on a channel it is subscribed to*,
on every connection's node, and when that ping comes back to it through the subscription it
renews the lease to the moment the ping was *sent* plus ``lease`` seconds: a node delivers
its messages in order, so every ending published on that node before the ping has been read
and applied by then, and the ping's arrival proves the subscription itself delivers, not
just that the link is alive. With several connections the lease runs from the oldest of
their last proofs. A message alone renews nothing (it says nothing about when it was sent).
Other processes' pings on the channel are ignored (they are recognisable: no session id
starts with ``~``).

The cache checks the lease deadline itself, inline, each time it would vouch (see
:meth:`~tokenward.revocation.SessionCache.get`): a Redis that goes silent (frozen, paused,
partitioned) is vouched for at most ``lease`` seconds after the last proved ping was sent,
however busy the event loop is. A separate watchdog task, on top of that, marks the cache
unhealthy and empties it once the deadline has passed, and the feed resubscribes from
scratch (a new subscription empties the cache again before it vouches for anything, since
messages may have been missed in between). Any sign that a subscription was lost or
replayed (an unsubscribe pushed by a node whose slot moved, redis-py resubscribing silently
after a reconnect) does the same. A stall of the whole event loop (CPU starvation) is not
forgiven: the cache stops vouching at the deadline, and after the stall it starts over from
an empty cache.

**Health.** :attr:`RevocationFeed.drops` counts the times the feed went down after being
up; one log line each is written on ``tokenward.feed`` when it goes down (with why), when it
starts resubscribing, and when it is back (with how long it was down). ``on_change`` (the
metrics' hook) is told every change of state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from tokenward.revocation import SessionCache
from tokenward.stores.redis_channels import USER_PREFIX, is_cluster, slot_channels
from tokenward.stores.redis_client import RedisClient
from tokenward.stores.redis_sessions import ENDED_CHANNEL

__all__ = ["PING_PREFIX", "RevocationFeed"]

log = logging.getLogger("tokenward.feed")

#: Lease pings published on the channel start with this; a session id never does.
PING_PREFIX = "~ping "


@dataclass
class _Link:
    """One subscribed connection: the server, or one Cluster master."""

    pubsub: PubSub
    channels: list[str]
    ping_channel: str
    sharded: bool
    close: Callable[[], Awaitable[None]]
    confirmed: int = 0
    ready: bool = False
    #: when the last ping proved this link (on the cache's clock)
    proven: float = 0.0
    #: pings in flight, oldest first: (label, when it was sent)
    pings: collections.deque[tuple[str, float]] = field(
        default_factory=lambda: collections.deque(maxlen=64)
    )


class RevocationFeed:
    """Subscribes to the ended-session channel(s) and keeps a cache coherent.

    Args:
        redis: the client (standalone, Sentinel or Cluster); pings are published with it.
        cache: the cache to drive.
        channel: the channel the session store publishes ended session ids on (on a
            Cluster, the base name of the per-slot shard channels).
        ping_interval: seconds between lease pings.
        lease: seconds after sending its last proved ping at which the cache stops
            vouching; twice ``ping_interval`` unless given. With the defaults an instance
            cut off from Redis stops trusting its cache within 0.8 s.
        retry_delay: seconds to wait before resubscribing after a failure.
        on_change: called with ``True`` when the feed comes up and ``False`` when it goes
            down after being up (a drop; not on :meth:`stop`): the metrics.
        on_user: called with a user id announced as changed (:data:`USER_PREFIX`: its
            address or its verification; :meth:`RedisSessionStore.announce_user
            <tokenward.stores.redis_sessions.RedisSessionStore.announce_user>`): the
            profile cache.
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
        on_change: Callable[[bool], None] | None = None,
        on_user: Callable[[str], None] | None = None,
    ) -> None:
        self.redis = redis
        self.cache = cache
        self.on_user = on_user
        self.channel = channel
        self.ping_interval = ping_interval
        self.lease = 2 * ping_interval if lease is None else lease
        self.retry_delay = retry_delay
        self.on_change = on_change
        self.sharded = is_cluster(redis)
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._stopping = False
        self._links: list[_Link] = []
        self._id = secrets.token_hex(6)
        self._sent = 0
        #: times the subscription was (re)established; for tests and metrics
        self.subscriptions = 0
        #: times the feed went down after being up
        self.drops = 0
        #: when it went down (cache clock), while it is down after having been up
        self.down_since: float | None = None
        self._resubscribe_logged = False

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
            if tasks:
                # A cancellation that coincides with redis-py's own read timeout can be
                # swallowed (asyncio.timeout); closing the sockets ends the reads for sure.
                for link in self._links:
                    if link.pubsub.connection is not None:
                        await link.pubsub.connection.disconnect(nowait=True)
        if tasks:
            log.warning("revocation feed did not stop cleanly")
        self._task = self._watchdog = None
        self._stopping = False
        # A stop is not a drop: on_change is not told (the process is going away).
        self._subscribed.clear()
        self.cache.set_healthy(False)

    @property
    def subscribed(self) -> bool:
        """Whether the feed is currently subscribed and holding its lease."""
        return self._subscribed.is_set() and self.cache.healthy

    def _lapse(self, why: str) -> None:
        if self._subscribed.is_set() or self.cache.healthy:
            self.drops += 1
            self.down_since = self.cache.clock()
            self._resubscribe_logged = False
            log.warning(
                "revocation feed down (%s): every session is checked in Redis until it is back",
                why,
            )
            if self.on_change is not None:
                self.on_change(False)
        self._subscribed.clear()
        self.cache.set_healthy(False)

    async def _watch(self) -> None:
        # Tidiness and the log line, not safety: the cache itself refuses to vouch past the
        # deadline, however late this task wakes up.
        period = self.ping_interval / 4
        while True:
            await asyncio.sleep(period)
            if self.cache.healthy and self.cache.clock() >= self.cache.lease_until:
                self._lapse("lease lapsed: no ping came back through the subscription")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self._lapse(f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                # Anything else must not end the task for good: the cache would stay cold
                # (safe, since it fails closed) but never recover.
                log.exception("revocation feed failed: %s", type(exc).__name__)
                self._lapse(type(exc).__name__)
            if not self._stopping:
                await asyncio.sleep(self.retry_delay)

    async def _listen(self) -> None:
        if self.down_since is not None and not self._resubscribe_logged:
            self._resubscribe_logged = True
            log.info("revocation feed resubscribing")
        links = await self._connect()
        self._links = links
        try:
            await self._subscribe(links)
            readers = [asyncio.create_task(self._read(link, links)) for link in links]
            pinger = asyncio.create_task(self._ping(links))
            tasks = [*readers, pinger]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            self._links = []
            for link in links:
                with contextlib.suppress(Exception):
                    await link.close()

    async def _connect(self) -> list[_Link]:
        """The connections to subscribe on: one per Cluster master, else the client's own."""
        if not self.sharded:
            pubsub = self.redis.pubsub()
            return [_Link(pubsub, [self.channel], self.channel, False, pubsub.aclose)]
        cluster: Any = self.redis
        await cluster.initialize()
        if self.subscriptions or self.drops:
            # A retry: the slot map may have changed; the subscriptions follow the owners.
            await cluster.nodes_manager.initialize()
        channels = slot_channels(self.channel)
        by_node: dict[str, list[str]] = {}
        nodes: dict[str, Any] = {}
        slots = cluster.nodes_manager.slots_cache
        covered = sum(1 for owners in slots.values() if owners)
        if covered < len(channels):
            # Coming up without some slots' channels would leave them unheard once they
            # are served again: stay down (every session checked in Redis) and retry.
            raise ConnectionError(f"{len(channels) - covered} hash slots have no master")
        for slot, owners in slots.items():
            node = owners[0]
            nodes[node.name] = node
            by_node.setdefault(node.name, []).append(channels[slot])
        links = []
        for name, chans in sorted(by_node.items()):
            node = nodes[name]
            # A pool of the feed's own: see the module docstring (the cluster client's
            # aclose() disconnects every connection of its node pools).
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
            pubsub = PubSub(pool)

            async def close(pubsub: PubSub = pubsub, pool: aioredis.ConnectionPool = pool) -> None:
                await cast(Any, pubsub).aclose()
                await pool.disconnect()

            links.append(_Link(pubsub, chans, chans[0], True, close))
        return links

    async def _subscribe(self, links: list[_Link]) -> None:
        for link in links:
            if not link.sharded:
                await link.pubsub.subscribe(*link.channels)
                continue
            # One SSUBSCRIBE per channel (several in one command must share a slot), some
            # 5,000 per master: sent as one write, since a command at a time takes seconds.
            first, *rest = link.channels
            await link.pubsub.ssubscribe(first)
            conn: Any = link.pubsub.connection
            await conn.send_packed_command(
                conn.pack_commands([("SSUBSCRIBE", chan) for chan in rest]), check_health=False
            )
            link.pubsub.shard_channels.update(dict.fromkeys(rest))

    def _up(self, links: list[_Link]) -> None:
        """Every link confirmed all its subscriptions: start vouching, from empty."""
        now = self.cache.clock()
        self.cache.set_healthy(True)
        self.cache.reset()
        for link in links:
            link.proven = now
        self.cache.renew(now + self.lease)
        self.subscriptions += 1
        self._subscribed.set()
        if self.down_since is not None:
            log.warning(
                "revocation feed recovered after %.2f s down (channels: %d, connections: %d)",
                now - self.down_since,
                sum(len(link.channels) for link in links),
                len(links),
            )
            self.down_since = None
        else:
            log.info(
                "revocation feed up (channels: %d, connections: %d)",
                sum(len(link.channels) for link in links),
                len(links),
            )
        if self.on_change is not None:
            self.on_change(True)

    async def _read(self, link: _Link, links: list[_Link]) -> None:
        own = f"{PING_PREFIX}{self._id} "
        while not self._stopping:
            lapsed = self.subscriptions and not self._subscribed.is_set()
            if lapsed and all(other.ready for other in links):
                # The lease lapsed on these connections: resubscribe from scratch.
                raise ConnectionError("lease lapsed; resubscribing")
            message = await link.pubsub.get_message(timeout=self.ping_interval / 2)
            if message is None:
                continue
            kind = message.get("type")
            if kind in ("subscribe", "ssubscribe"):
                if link.ready:
                    # redis-py reconnected and resubscribed on its own: messages may have
                    # been missed in between, so start over.
                    raise ConnectionError("subscription replayed after a reconnect")
                link.confirmed += 1
                if link.confirmed % 64 == 0:
                    # Thousands of confirmations arrive at once on a Cluster: let the
                    # requests (and other feeds' pings) run in between.
                    await asyncio.sleep(0)
                if link.confirmed >= len(link.channels):
                    link.ready = True
                    if all(other.ready for other in links):
                        self._up(links)
            elif kind in ("unsubscribe", "sunsubscribe"):
                # A node that lost a slot (resharding, demotion) unsubscribes its channel.
                raise ConnectionError(f"{kind} pushed by the server: slot moved")
            elif kind in ("message", "smessage"):
                data = _text(message["data"])
                if data.startswith(PING_PREFIX):
                    if data.startswith(own):
                        answered = _answered(link.pings, data)
                        if answered is not None:
                            link.proven = answered
                            self.cache.renew(min(x.proven for x in links) + self.lease)
                elif data.startswith(USER_PREFIX):
                    if self.on_user is not None:
                        self.on_user(data[len(USER_PREFIX) :])
                elif link.ready:
                    self.cache.forget([data])

    async def _ping(self, links: list[_Link]) -> None:
        clock = self.cache.clock
        while not self._stopping:
            await asyncio.sleep(self.ping_interval)
            if not all(link.ready for link in links):
                continue
            sends = []
            for link in links:
                self._sent += 1
                label = f"{PING_PREFIX}{self._id} {self._sent}"
                link.pings.append((label, clock()))
                if link.sharded:
                    sends.append(cast(Any, self.redis).spublish(link.ping_channel, label))
                else:
                    sends.append(self.redis.publish(link.ping_channel, label))
            # All masters at once: one slow node must not delay the others' proofs.
            results = await asyncio.gather(*sends, return_exceptions=True)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                # A ping that could not be sent proves nothing, so the lease is not renewed
                # (the cache stops vouching at its deadline on its own). Start over only
                # once the lease has run out: a send can fail once without the link being
                # down, e.g. when redis-py's cluster client closes every connection it
                # holds (aclose() on CLUSTERDOWN or repeated MOVED) under a publish.
                if clock() >= self.cache.lease_until:
                    raise failed[0]
                log.debug("revocation feed ping not sent: %s", type(failed[0]).__name__)


def _text(data: object) -> str:
    return data.decode() if isinstance(data, bytes) else str(data)


def _answered(pings: collections.deque[tuple[str, float]], data: str) -> float | None:
    """When the ping ``data`` was sent; drops it and any older one in flight (they come
    back in order: an older one still listed was lost with a dropped connection)."""
    if all(label != data for label, _ in pings):
        return None
    while pings:
        label, at = pings.popleft()
        if label == data:
            return at
    return None
