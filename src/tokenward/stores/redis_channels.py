"""Where ended sessions are announced: one channel, or one shard channel per hash slot.

Standalone Redis and Sentinel use one classic channel (``tw:ended``, ``PUBLISH`` /
``SUBSCRIBE``). On a Redis Cluster a classic ``PUBLISH`` is broadcast over the cluster bus
to every node, so every ending costs every shard; Redis 7 *sharded* pub/sub
(``SPUBLISH`` / ``SSUBSCRIBE``) keeps a message on the shard that owns its channel's slot.

Why one channel per slot: the ending is published by the Lua script that deletes the
session, in the same atomic step, and a script may only reach keys -- a shard channel counts
as one -- on its own node (Redis 7.0 answers "Script attempted to access a non local key";
Redis 7.2 and Valkey also require the script's own slot unless the script declares
``allow-cross-slot-keys``). So the channel of an ending must hash to the slot of the user's
keys (``{u:<uid>}``), and a subscriber that must hear every ending subscribes to one
channel per slot: 16,384 subscriptions per process, spread over the masters by slot
ownership (measured cost in docs/sessions.md). The channel of slot ``s`` is
``tw:ended:{<tag>}``, ``<tag>`` the first base-36 number whose CRC16 lands in ``s``: names
that follow the slot wherever it moves (resharding, failover), so the publisher needs no
knowledge of the topology.

A script tells the two apart by the hash tag: a channel name containing ``{`` is a shard
channel (``SPUBLISH``), any other a classic one (``PUBLISH``).
"""

from __future__ import annotations

import functools

from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

__all__ = ["USER_PREFIX", "channel_for_user", "is_cluster", "slot_channels"]

#: Besides session ids, a channel carries ``~user <uid>``: that user's profile changed (a
#: session id never starts with ``~``).
USER_PREFIX = "~user "

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def is_cluster(redis: object) -> bool:
    """Whether ``redis`` is a Redis Cluster client (sharded pub/sub applies)."""
    return isinstance(redis, RedisCluster)


def _base36(n: int) -> str:
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = _DIGITS[d] + out
        if n == 0:
            return out


@functools.cache
def slot_channels(base: str) -> tuple[str, ...]:
    """The shard channel of every slot (index = slot), named ``<base>:{<tag>}``.

    Computed once per process (about 170,000 CRC16s, ~0.1 s), only on a Cluster.
    """
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing = REDIS_CLUSTER_HASH_SLOTS
    n = 0
    while missing:
        tag = _base36(n)
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        n += 1
    return tuple(f"{base}:{{{tag}}}" for tag in tags)


def channel_for_user(base: str, uid: str) -> str:
    """The shard channel in the slot of user ``uid``'s keys (hash tag ``{u:<uid>}``)."""
    return slot_channels(base)[key_slot(f"u:{uid}".encode())]
