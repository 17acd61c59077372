"""The Redis rate limiter behaves exactly like the reference model, atomically, with TTLs."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis
from abuse_support import all_keys
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenward.ratelimit import KeyState, Limit, acquire, release
from tokenward.stores.redis_ratelimit import RedisRateLimiter

A = Limit("a", 2, 20, 80)  # locks of 20, 40, 80, 80 s; forgotten 80 s after one ends
B = Limit("b", 4, 30)
T0 = 1_800_000_000

# An operation: (seconds to wait, which keys to acquire or None for a release, which event)
_op = st.tuples(
    st.sampled_from([0, 0, 1, 5, 19, 20, 21, 40, 79, 80, 120]),
    st.sampled_from([(0,), (1,), (0, 1), None]),
    st.integers(min_value=0, max_value=50),
)


async def _compare(redis_url: str, ops: list[tuple[int, tuple[int, ...] | None, int]]) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        limiter = RedisRateLimiter(client)
        scope = f"tw:{{rl:test:{uuid.uuid4().hex}}}"
        keys, limits = [f"{scope}:a", f"{scope}:b"], [A, B]
        model = [KeyState(), KeyState()]
        now, events = T0, []
        for n, (wait, which, pick) in enumerate(ops):
            now += wait
            if which is None:
                if events:
                    event = events[pick % len(events)]
                    model = [release(s, event) for s in model]
                    await limiter.release(keys, event=event)
                continue
            event = f"e{n}"
            events.append(event)
            expected, new = acquire(
                [model[i] for i in which], [limits[i] for i in which], now=now, event=event
            )
            for i, state in zip(which, new, strict=True):
                model[i] = state
            got = await limiter.acquire([(keys[i], limits[i]) for i in which], now=now, event=event)
            assert got == expected, (n, now, which)
        for key in await all_keys(client, f"{scope}*"):
            assert await client.ttl(key) > 0, key
    finally:
        await client.aclose()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(_op, st.integers(1, 4)), min_size=1, max_size=40))
def test_lua_script_matches_the_reference_model(
    redis_url: str, ops: list[tuple[tuple[int, tuple[int, ...] | None, int], int]]
) -> None:
    """Random histories of bursts, refunds and waits: Redis and the model agree."""
    flat = [op if i == 0 else (0, *op[1:]) for op, times in ops for i in range(times)]
    asyncio.run(_compare(redis_url, flat))


def _locks(waits: list[int]) -> list[tuple[int, tuple[int, ...] | None, int]]:
    """Fill key A and get refused, then wait each of ``waits`` in turn, and again."""
    ops: list[tuple[int, tuple[int, ...] | None, int]] = []
    for wait in [0, *waits]:
        ops += [(wait, (0,), 0), (0, (0,), 0), (0, (0,), 0)]
    return ops


def test_lua_script_matches_the_model_at_every_boundary(redis_url: str) -> None:
    """Crafted histories: locks growing to the cap, retries at the exact second a lock ends,
    and just before and at the second a back-off is forgotten."""
    scenarios = [
        _locks([20, 40, 80, 80, 80]),  # each retry exactly when the lock ends: growth and cap
        _locks([19, 1, 39, 1]),  # one second early, then on time
        _locks([20 + 79, 20]),  # remembered: the second lock is 40
        _locks([20 + 80, 20]),  # forgotten at until + max_block exactly: 20 again
        _locks([20, 40 + 80, 20]),
    ]
    for ops in scenarios:
        asyncio.run(_compare(redis_url, ops))


async def test_concurrent_acquisitions_never_exceed_the_limit(redis: aioredis.Redis) -> None:
    """Fifty concurrent callers on a key with room for ten: exactly ten get through."""
    limiter = RedisRateLimiter(redis)
    key = f"tw:{{rl:test:{uuid.uuid4().hex}}}:k"
    lim = Limit("k", 10, 900)
    results = await asyncio.gather(
        *(limiter.acquire([(key, lim)], now=T0, event=f"e{i}") for i in range(50))
    )
    assert sum(d.allowed for d in results) == 10
    assert sum(bool(d.locked) for d in results) == 1  # one lock, one event


async def test_reset_and_known_addresses(redis: aioredis.Redis) -> None:
    """reset forgets a key entirely; remembered members expire by the caller's clock."""
    limiter = RedisRateLimiter(redis)
    key = f"tw:{{rl:test:{uuid.uuid4().hex}}}"
    lim = Limit("k", 1, 900)
    await limiter.acquire([(key, lim)], now=T0, event="a")
    assert not (await limiter.acquire([(key, lim)], now=T0, event="b")).allowed
    await limiter.reset([key])
    assert (await limiter.acquire([(key, lim)], now=T0, event="c")).allowed
    await limiter.remember(f"{key}:known", "addr", now=T0, ttl=100, keep=2)
    assert await limiter.remembers(f"{key}:known", "addr", now=T0 + 99, ttl=100)
    assert not await limiter.remembers(f"{key}:known", "addr", now=T0 + 100, ttl=100)
    assert not await limiter.remembers(f"{key}:known", "other", now=T0, ttl=100)
    for k in await all_keys(redis, f"{key}*"):
        assert await redis.ttl(k) > 0


async def test_settle_resets_releases_and_remembers(redis: aioredis.Redis) -> None:
    """settle (the end of a good login) is reset + release + remember, even when Redis has
    forgotten the remember script (NOSCRIPT: loaded and run again)."""
    limiter = RedisRateLimiter(redis)
    lim = Limit("k", 1, 900)
    for flush in (False, True):
        tag = uuid.uuid4().hex
        pair, account, by_ip = (f"tw:{{rl:{tag}}}:{n}" for n in ("pair", "account", "ip"))
        checks = [(pair, lim), (account, lim), (by_ip, lim)]
        assert (await limiter.acquire(checks, now=T0, event="e1")).allowed
        assert not (await limiter.acquire([(pair, lim)], now=T0, event="e2")).allowed  # locked
        if flush:
            await redis.script_flush()
        known = f"tw:{{rl:{tag}}}:known"
        await limiter.settle(
            reset=[pair], release=[account, by_ip], event="e1",
            remember=(known, "addr", T0, 100, 2),
        )  # fmt: skip
        assert await redis.exists(f"{pair}:z", f"{pair}:l") == 0
        assert await redis.zcard(f"{account}:z") == 0
        assert await redis.zcard(f"{by_ip}:z") == 0
        assert await limiter.remembers(known, "addr", now=T0 + 1, ttl=100)
        assert (await limiter.acquire(checks, now=T0, event="e3")).allowed


async def test_acquire_each_judges_each_group_alone_in_one_pipeline(
    redis: aioredis.Redis,
) -> None:
    """acquire_each is acquire per group: a refused group reserves nothing and does not
    stop another from reserving; it survives Redis forgetting the script (NOSCRIPT)."""
    limiter = RedisRateLimiter(redis)
    lim = Limit("k", 1, 900)
    for flush in (False, True):
        tag = uuid.uuid4().hex
        full, a, b = (f"tw:{{rl:{tag}:{n}}}:k" for n in ("full", "a", "b"))
        assert (await limiter.acquire([(full, lim)], now=T0, event="e0")).allowed
        if flush:
            await redis.script_flush()
        refused, allowed = await limiter.acquire_each(
            [[(full, lim)], [(a, lim), (b, lim)]], now=T0, event="e1"
        )
        assert not refused.allowed
        assert refused.locked == ("k",)
        assert allowed.allowed
        assert allowed.remaining == 0
        assert await redis.zrange(f"{a}:z", 0, -1) == ["e1"]
        assert await redis.zrange(f"{b}:z", 0, -1) == ["e1"]
        for k in await all_keys(redis, f"tw:{{rl:{tag}*"):
            assert await redis.ttl(k) > 0
