"""The Redis :class:`~tokenward.ratelimit.RateLimiter`: one Lua script per acquisition.

A limit key ``K`` (chosen by :class:`~tokenward.throttle.Throttle`, with a hash tag so
that every key of one scope lives in one slot) is stored as two Redis keys:

=================  ======  ===========================================================
key                type    content and TTL
=================  ======  ===========================================================
``K:z``            zset    event id -> time, the sliding window; TTL ``window``
``K:l``            hash    ``until`` (lock end), ``strikes``; TTL ``lock + max_block``
``...:known``      zset    address digest -> last good login; TTL 30 days
=================  ======  ===========================================================

Key names hold SHA-256 digests (``tw:{rl:a:<account>}:ip:<address>``,
``tw:{rl:ip:<address>}:login``), never an email or an address. Time comes from the caller
(``now``), not from the Redis clock, so the script matches the reference model in
:mod:`tokenward.ratelimit` to the second; the TTLs only collect garbage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from tokenward.errors import Unavailable
from tokenward.ratelimit import Decision, Limit
from tokenward.stores.redis_client import RedisClient, run_scripts, send_batch

__all__ = ["RedisRateLimiter"]

# KEYS: z1, l1, z2, l2, ...   ARGV: now, event, then limit, window, max_block per key.
# Mirrors tokenward.ratelimit.acquire line by line; keep them in step.
_ACQUIRE = """
local now, event = tonumber(ARGV[1]), ARGV[2]
local n = #KEYS / 2
local retry, blocked, locked, counts = 0, {}, {}, {}
for i = 1, n do
  local z, l = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, window, cap = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]),
    tonumber(ARGV[3 * i + 2])
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
  local st = redis.call('HMGET', l, 'until', 'strikes')
  local untl, strikes = tonumber(st[1]) or 0, tonumber(st[2]) or 0
  if now >= untl + cap then untl, strikes = 0, 0 end
  if untl > now then
    retry = math.max(retry, untl - now)
    table.insert(blocked, i)
  else
    local count = redis.call('ZCARD', z)
    if count >= limit then
      strikes = strikes + 1
      local block = window
      for _ = 2, strikes do
        if block >= cap then break end
        block = block * 2
      end
      block = math.min(block, cap)
      redis.call('HSET', l, 'until', now + block, 'strikes', strikes)
      redis.call('EXPIRE', l, block + cap)
      redis.call('DEL', z)
      retry = math.max(retry, block)
      table.insert(blocked, i)
      table.insert(locked, i)
    else
      counts[i] = count
    end
  end
end
if #blocked > 0 then
  return {0, retry, table.concat(blocked, ','), table.concat(locked, ',')}
end
local remaining = -1
for i = 1, n do
  local z, window = KEYS[2 * i - 1], tonumber(ARGV[3 * i + 1])
  redis.call('ZADD', z, now, event)
  redis.call('EXPIRE', z, window)
  local left = tonumber(ARGV[3 * i]) - counts[i] - 1
  if remaining < 0 or left < remaining then remaining = left end
end
return {1, remaining}
"""

# KEYS: the zset. ARGV: member, now, ttl, keep.
_REMEMBER = """
local now, ttl, keep = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -keep - 1)
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    """Any Redis failure is a 503: throttling fails closed, it never waves attempts through."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable("rate limiter unreachable") from exc


def _by_slot_tag(checks: Sequence[tuple[str, Limit]]) -> list[list[tuple[str, Limit]]]:
    groups: dict[str, list[tuple[str, Limit]]] = {}
    for key, limit in checks:
        start = key.find("{")
        end = key.find("}", start + 1)
        tag = key[start + 1 : end] if 0 <= start < end else key
        groups.setdefault(tag, []).append((key, limit))
    return list(groups.values())


def _acquire_call(
    checks: Sequence[tuple[str, Limit]], now: int, event: str
) -> tuple[list[str], list[str | int]]:
    """The acquire script's keys and arguments for ``checks``."""
    keys: list[str] = []
    args: list[str | int] = [now, event]
    for key, limit in checks:
        keys += [f"{key}:z", f"{key}:l"]
        args += [limit.limit, limit.window, limit.max_block]
    return keys, args


def _decision(checks: Sequence[tuple[str, Limit]], reply: Any) -> Decision:
    """The acquire script's answer for ``checks``."""
    if int(reply[0]) == 1:
        return Decision(True, remaining=int(reply[1]))
    names = [limit.name for _, limit in checks]
    return Decision(
        False,
        retry_after=max(1, int(reply[1])),
        blocked=tuple(names[i] for i in _indexes(reply[2])),
        locked=tuple(names[i] for i in _indexes(reply[3])),
    )


def _indexes(value: object) -> list[int]:
    text = str(value or "")
    return [int(i) - 1 for i in text.split(",") if i]


class RedisRateLimiter:
    """Sliding windows in Redis (or Valkey, or a Redis Cluster).

    Args:
        redis: a client created with ``decode_responses=True``.
    """

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._remember = redis.register_script(_REMEMBER)

    async def acquire(
        self, checks: Sequence[tuple[str, Limit]], *, now: int, event: str
    ) -> Decision:
        """See :meth:`tokenward.ratelimit.RateLimiter.acquire`.

        On Redis Cluster, keys of different scopes live in different slots and one script
        may not touch them all. There the checks run one scope at a time, in order, and a
        refusal releases what the earlier scopes reserved: a concurrent attempt may then
        be refused a moment early (never let through late), and the scopes after the
        refusing one are not consulted.
        """
        groups = _by_slot_tag(checks) if isinstance(self.redis, RedisCluster) else [list(checks)]
        if len(groups) == 1:
            return await self._acquire_one(groups[0], now=now, event=event)
        reserved: list[str] = []
        remaining = -1
        for group in groups:
            decision = await self._acquire_one(group, now=now, event=event)
            if not decision.allowed:
                await self.release(reserved, event=event)
                return decision
            reserved += [key for key, _ in group]
            if remaining < 0 or decision.remaining < remaining:
                remaining = decision.remaining
        return Decision(True, remaining=remaining)

    async def acquire_each(
        self, groups: Sequence[Sequence[tuple[str, Limit]]], *, now: int, event: str
    ) -> list[Decision]:
        """See :meth:`tokenward.ratelimit.RateLimiter.acquire_each`: the groups' scripts in
        one pipeline (a login's address and account checks: one round trip, not two). On a
        Cluster, where the groups live on several nodes, one :meth:`acquire` after another."""
        if isinstance(self.redis, RedisCluster):
            return [await self.acquire(group, now=now, event=event) for group in groups]
        calls = [(self._acquire, *_acquire_call(group, now, event)) for group in groups]
        async with _backend():
            replies = await run_scripts(self.redis, calls)
        return [_decision(group, reply) for group, reply in zip(groups, replies, strict=True)]

    async def _acquire_one(
        self, checks: Sequence[tuple[str, Limit]], *, now: int, event: str
    ) -> Decision:
        keys, args = _acquire_call(checks, now, event)
        async with _backend():
            reply = await self._acquire(keys=keys, args=args)
        return _decision(checks, reply)

    async def release(self, keys: Sequence[str], *, event: str) -> None:
        """See :meth:`tokenward.ratelimit.RateLimiter.release`."""
        async with _backend():
            for key in keys:  # one command per key: keys of other scopes live in other slots
                await self.redis.zrem(f"{key}:z", event)

    async def reset(self, keys: Sequence[str]) -> None:
        """See :meth:`tokenward.ratelimit.RateLimiter.reset`."""
        async with _backend():
            for key in keys:
                await self.redis.delete(f"{key}:z", f"{key}:l")  # one key's pair: one slot

    async def settle(
        self,
        *,
        reset: Sequence[str],
        release: Sequence[str],
        event: str,
        remember: tuple[str, str, int, int, int] | None = None,
    ) -> None:
        """See :meth:`tokenward.ratelimit.RateLimiter.settle`: one round trip
        (:func:`~tokenward.stores.redis_client.send_batch`; on a Cluster, where the keys
        live on several nodes, one command after another)."""
        if isinstance(self.redis, RedisCluster):
            await self.reset(reset)
            await self.release(release, event=event)
            if remember is not None:
                key, member, now, ttl, keep = remember
                await self.remember(key, member, now=now, ttl=ttl, keep=keep)
            return
        commands: list[tuple[str | int, ...]] = [("DEL", f"{key}:z", f"{key}:l") for key in reset]
        commands += [("ZREM", f"{key}:z", event) for key in release]
        if remember is not None:
            key, member, now, ttl, keep = remember
            # EVALSHA itself: a Script object would make a pipeline send SCRIPT EXISTS
            # first, a second round trip every time.
            commands.append(("EVALSHA", self._remember.sha, 1, key, member, now, ttl, keep))
        async with _backend():
            replies = await send_batch(self.redis, commands)
            if remember is not None and isinstance(replies[-1], NoScriptError):
                await self._remember(keys=[remember[0]], args=list(remember[1:]))
            for reply in replies:
                if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                    raise reply

    async def remember(self, key: str, member: str, *, now: int, ttl: int, keep: int) -> None:
        """See :meth:`tokenward.ratelimit.RateLimiter.remember`."""
        async with _backend():
            await self._remember(keys=[key], args=[member, now, ttl, keep])

    async def remembers(self, key: str, member: str, *, now: int, ttl: int) -> bool:
        """See :meth:`tokenward.ratelimit.RateLimiter.remembers`."""
        async with _backend():
            score = await self.redis.zscore(key, member)
        return score is not None and now - int(score) < ttl
