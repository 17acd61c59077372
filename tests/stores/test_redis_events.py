"""Security events in a real Redis: the per-user routine stream and critical list.

Every test uses fresh user ids, so tests never see each other's keys.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.crc import key_slot

from tokenward.events import EventKind, SecurityEvent
from tokenward.stores.redis_client import RedisClient, connect_redis
from tokenward.stores.redis_events import RedisEventLog

NOW = int(time.time())
TTL = 3600


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RedisClient]:
    client = connect_redis(redis_url)
    yield client
    await client.aclose()


def keys(uid: str) -> dict[str, str]:
    return {name: f"tw:{{ev:{uid}}}:{name}" for name in ("log", "sec", "dev")}


def routine(uid: str, n: int = 0) -> SecurityEvent:
    return SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW, uid, f"s{n}", "192.0.2.1", "ua")


def critical(uid: str, n: int = 0) -> SecurityEvent:
    return SecurityEvent(EventKind.NEW_DEVICE, NOW, uid, f"s{n}", "192.0.2.9", "new")


def order(event: SecurityEvent) -> tuple[int, int]:
    ms, _, seq = event.id.partition("-")
    return int(ms), int(seq)


async def test_critical_events_are_capped_apart_from_routine_ones(redis: RedisClient) -> None:
    """With a cap of 5, one critical event outlives 50 routine ones written after it; the
    stream and the list each hold at most 5, both expire, all of a user's keys share one
    hash slot."""
    log = RedisEventLog(redis, ttl=TTL, per_user=5)
    uid = uuid.uuid4().hex
    await log.append(critical(uid))
    for n in range(50):
        await log.append(routine(uid, n))
    await log.seen(uid, "device", now=NOW, memory=TTL)
    events = await log.for_user(uid, now=NOW)
    assert [e.kind for e in events] == [EventKind.LOGIN_SUCCEEDED] * 5 + [EventKind.NEW_DEVICE]
    assert [e.sid for e in events[:5]] == ["s49", "s48", "s47", "s46", "s45"]
    k = keys(uid)
    assert await redis.xlen(k["log"]) == 5
    assert await redis.llen(k["sec"]) == 1
    for _ in range(9):
        await log.append(critical(uid))
    assert await redis.llen(k["sec"]) == 5  # the critical list has its own cap
    for key in k.values():
        assert 0 < await redis.ttl(key) <= TTL, key
    assert len({key_slot(key.encode()) for key in k.values()}) == 1


async def test_a_users_stream_and_list_share_one_id_sequence(redis_url: str) -> None:
    """Concurrent writers on several connections, critical and routine events mixed, five
    rounds of 200: every id is unique, the merged read is strictly newest first, and each
    writer's own events come back in the order it wrote them."""
    clients = [connect_redis(redis_url) for _ in range(4)]
    try:
        for _ in range(5):
            uid = uuid.uuid4().hex
            logs = [RedisEventLog(c, ttl=TTL, per_user=1000) for c in clients]

            async def writer(w: int, uid: str = uid, logs: list[RedisEventLog] = logs) -> None:
                for n in range(50):
                    make = critical if random.random() < 0.5 else routine  # noqa: S311
                    await logs[w].append(make(uid, w * 1000 + n))

            await asyncio.gather(*(writer(w) for w in range(len(clients))))
            events = await logs[0].for_user(uid, now=NOW, limit=1000)
            assert len(events) == 200
            ids = [order(e) for e in events]
            assert ids == sorted(set(ids), reverse=True)
            written = [int((e.sid or "s0")[1:]) for e in reversed(events)]  # oldest first
            for w in range(len(clients)):
                mine = [n for n in written if n // 1000 == w]
                assert mine == sorted(mine)
    finally:
        for c in clients:
            await c.aclose()


async def test_ids_stay_above_the_stream_and_the_list_when_one_is_ahead(redis: RedisClient) -> None:
    """If the list's newest id is ahead of the clock (written by a server whose clock ran
    fast, or before a failover), the next write to the stream goes above it: no error, no
    duplicate id, the merge stays in write order."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid = uuid.uuid4().hex
    k = keys(uid)
    ahead = (int(time.time()) + 3600) * 1000
    fields = orjson.dumps({"k": "login.new-device", "at": NOW, "uid": uid}).decode()
    await redis.lpush(k["sec"], f"{ahead}-7 {fields}")
    await redis.expire(k["sec"], TTL)
    await log.append(routine(uid, 1))
    await log.append(critical(uid, 2))
    await log.append(routine(uid, 3))
    events = await log.for_user(uid, now=NOW)
    assert [e.id for e in events] == [f"{ahead}-10", f"{ahead}-9", f"{ahead}-8", f"{ahead}-7"]
    assert [e.sid for e in events] == ["s3", "s2", "s1", None]


async def test_events_written_before_the_split_are_still_read(redis: RedisClient) -> None:
    """A user stream written by the previous version (every kind in ``:log``, ids from
    ``XADD *``) reads as before, and new writes go above it."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid = uuid.uuid4().hex
    fields = {"k": "login.new-device", "at": NOW, "uid": uid, "sid": "old", "ip": "", "ua": "",
              "d": "{}"}  # fmt: skip
    await redis.xadd(keys(uid)["log"], fields)  # type: ignore[arg-type]
    await redis.expire(keys(uid)["log"], TTL)  # as the previous version wrote it
    await log.append(critical(uid, 1))
    events = await log.for_user(uid, now=NOW)
    assert [e.sid for e in events] == ["s1", "old"]


async def test_per_user_memory_stays_bounded(redis: RedisClient) -> None:
    """However many events a user gets, their keys hold at most ``per_user`` entries per
    stream, and their memory stops growing: after 2,000 events of each kind it is within
    25 % of what it was after 1,000 (an uncapped stream would double; the margin is the
    stream's listpack nodes filling unevenly: +12 % was seen)."""
    log = RedisEventLog(redis, ttl=TTL, per_user=100)
    uid = uuid.uuid4().hex

    async def write(n: int) -> int:
        for i in range(n):
            await log.append(routine(uid, i))
            await log.append(critical(uid, i))
        total = 0
        for key in keys(uid).values():
            total += int(await redis.memory_usage(key) or 0)
        return total

    first, second = await write(1000), await write(1000)
    assert await redis.xlen(keys(uid)["log"]) == await redis.llen(keys(uid)["sec"]) == 100
    assert second <= first * 1.25, (first, second)
