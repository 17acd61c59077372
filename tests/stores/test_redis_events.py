"""Security events in a real Redis: each user's history, agents and devices, the
operators' log, and the keys 0.1 wrote.

Every test uses fresh user ids, so tests never see each other's keys.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
import zlib
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.crc import key_slot

from redis_sends import count_sends
from tokenward.errors import Unavailable
from tokenward.events import EventKind, SecurityEvent
from tokenward.stores.redis_client import RedisClient, connect_redis
from tokenward.stores.redis_events import (
    GLOBAL_SHARDS,
    LEGACY_GLOBAL_STREAM,
    RedisEventLog,
    agent_key,
    agent_ref,
    global_key,
)

NOW = int(time.time())
TTL = 3600


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RedisClient]:
    client = connect_redis(redis_url)
    yield client
    await client.aclose()


def keys(uid: str) -> dict[str, str]:
    return {name: f"tw:{{ev:{uid}}}:{name}" for name in ("h", "a", "d")}


def legacy_keys(uid: str) -> dict[str, str]:
    return {name: f"tw:{{ev:{uid}}}:{name}" for name in ("log", "sec", "dev")}


def routine(uid: str, n: int = 0) -> SecurityEvent:
    return SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW, uid, f"s{n}", "192.0.2.1", "ua")


def critical(uid: str, n: int = 0) -> SecurityEvent:
    return SecurityEvent(EventKind.NEW_DEVICE, NOW, uid, f"s{n}", "192.0.2.9", "new")


async def agent_keys(redis: RedisClient, ref: str) -> list[str]:
    """Every agent table entry named ``ref``, in any shard."""
    return [key async for key in redis.scan_iter(match=f"tw:{{events:*}}:ua:{ref}")]


def order(event: SecurityEvent) -> tuple[int, int]:
    ms, _, seq = event.id.partition("-")
    return int(ms), int(seq)


async def test_critical_events_are_capped_apart_from_routine_ones(redis: RedisClient) -> None:
    """With a cap of 5, one critical event outlives 50 routine ones written after it; the
    history holds at most 5 of each class, every key expires, all of a user's keys share
    one hash slot."""
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
    assert await redis.llen(k["h"]) == 6
    for _ in range(9):
        await log.append(critical(uid))
    assert await redis.llen(k["h"]) == 10  # five of each class
    events = await log.for_user(uid, now=NOW)
    assert [e.kind for e in events].count(EventKind.NEW_DEVICE) == 5
    assert not await redis.exists(k["a"])  # the agents are in the shared table
    agents = [agent_key(shard_of(uid), agent_ref(ua)) for ua in ("ua", "new")]
    for key in (k["h"], k["d"], *agents):
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


async def test_ids_stay_above_the_01_keys_when_they_are_ahead(redis: RedisClient) -> None:
    """If the 0.1 critical list's newest id is ahead of the clock (written by a server whose
    clock ran fast, or before a failover), the first write to the history goes above it and
    the next ones above that: no error, no duplicate id, the merge stays in write order."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid = uuid.uuid4().hex
    old = legacy_keys(uid)
    ahead = (int(time.time()) + 3600) * 1000
    fields = orjson.dumps({"k": "login.new-device", "at": NOW, "uid": uid}).decode()
    await redis.lpush(old["sec"], f"{ahead}-7 {fields}")
    await redis.expire(old["sec"], TTL)
    await log.append(routine(uid, 1))
    await log.append(critical(uid, 2))
    await log.append(routine(uid, 3))
    events = await log.for_user(uid, now=NOW)
    assert [e.id for e in events] == [f"{ahead}-10", f"{ahead}-9", f"{ahead}-8", f"{ahead}-7"]
    assert [e.sid for e in events] == ["s3", "s2", "s1", None]
    assert [e.at for e in events[:3]] == [NOW] * 3  # its own time, not the id's


async def test_what_01_wrote_is_still_read(redis: RedisClient) -> None:
    """A user's 0.1 keys (every routine kind in a ``:log`` stream, critical ones in a
    ``:sec`` list, devices in a ``:dev`` sorted set) read as before next to new events, and
    a device the old set knows is not new."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid = uuid.uuid4().hex
    old = legacy_keys(uid)
    fields = {"k": "login.succeeded", "at": NOW, "uid": uid, "sid": "old-log", "ip": "",
              "ua": "Firefox", "d": "{}"}  # fmt: skip
    await redis.xadd(old["log"], fields)  # type: ignore[arg-type]
    listed = orjson.dumps({"k": "login.new-device", "at": NOW, "uid": uid, "sid": "old-sec"})
    await redis.lpush(old["sec"], f"{int(time.time() * 1000)}-5 {listed.decode()}")
    await redis.zadd(old["dev"], {"known-device": NOW - 60})
    for key in old.values():
        await redis.expire(key, TTL)
    assert await log.seen(uid, "known-device", now=NOW, memory=TTL)
    assert not await log.seen(uid, "other-device", now=NOW, memory=TTL)
    await log.append(critical(uid, 1))
    events = await log.for_user(uid, now=NOW)
    assert [e.sid for e in events] == ["s1", "old-sec", "old-log"]
    assert events[2].user_agent == "Firefox"


async def test_a_user_agent_is_stored_once(redis: RedisClient) -> None:
    """Ten events each of five users of one browser, all in one shard of the operators'
    log, store its user agent once, in that shard's agent table (same hash slot as the
    stream), with the events' TTL; every event reads back with it. A user with 40 browsers
    reads back each event with its own agent (none is evicted while its events live)."""
    log = RedisEventLog(redis, ttl=TTL, per_user=100)
    users: list[str] = []
    while len(users) < 5:  # five users of stream 3 (one in 16 is; ends in about 80 draws)
        uid = uuid.uuid4().hex
        if shard_of(uid) == 3:
            users.append(uid)
    browser = f"Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0 Safari/537.36 {uuid.uuid4()}"
    for uid in users:
        for n in range(10):
            await log.append(
                SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW, uid, f"s{n}", "192.0.2.1", browser)
            )
    assert await agent_keys(redis, agent_ref(browser)) == [agent_key(3, agent_ref(browser))]
    assert await redis.get(agent_key(3, agent_ref(browser))) == browser
    assert 0 < await redis.ttl(agent_key(3, agent_ref(browser))) <= TTL
    assert key_slot(agent_key(3, "x").encode()) == key_slot(global_key(3).encode())
    for uid in users:
        events = await log.for_user(uid, now=NOW)
        assert [e.user_agent for e in events] == [browser] * 10
        assert not await redis.exists(keys(uid)["a"])
    uid = users[0]
    for n in range(40):
        await log.append(
            SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW, uid, f"b{n}", "192.0.2.1", f"agent {n}")
        )
    by_sid = {e.sid: e.user_agent for e in await log.for_user(uid, now=NOW)}
    assert [by_sid[f"b{n}"] for n in range(40)] == [f"agent {n}" for n in range(40)]
    assert by_sid["s0"] == browser


async def test_an_agent_reference_clash_keeps_each_events_own_agent(redis: RedisClient) -> None:
    """If the table entry of an agent's reference already holds another agent (a hash
    clash, or someone's crafted one), the event's agent goes to the user's own list and
    reads back right; the entry of the first agent is untouched."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid, browser = uuid.uuid4().hex, "Mozilla/5.0 (Clashing) Firefox/133.0"
    key = agent_key(shard_of(uid), agent_ref(browser))
    await redis.set(key, "an older agent", ex=TTL)
    await log.append(SecurityEvent(EventKind.NEW_DEVICE, NOW, uid, "s1", "192.0.2.1", browser))
    (event,) = await log.for_user(uid, now=NOW)
    assert event.user_agent == browser
    assert await redis.get(key) == "an older agent"
    assert await redis.lrange(keys(uid)["a"], 0, -1) == [f"{agent_ref(browser)}|{browser}"]
    assert 0 < await redis.ttl(keys(uid)["a"]) <= TTL


async def test_an_event_is_one_round_trip_and_a_clash_one_more(
    redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operators' log and the user's history are written in one send (two scripts in one
    pipeline), also when Redis has forgotten the scripts (NOSCRIPT: each runs again as a
    script); an agent clash costs one more send, for the user's own agent list."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid, warm, browser = uuid.uuid4().hex, f"Warm/{uuid.uuid4()}", f"Clash/{uuid.uuid4()}"
    for agent in (warm, browser):
        await redis.set(agent_key(shard_of(uid), agent_ref(agent)), "another agent", ex=TTL)
    # Scripts loaded, a connection open: a clash of its own.
    await log.append(SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW, uid, "s0", "192.0.2.1", warm))
    sends = count_sends(redis, monkeypatch)
    await log.append(routine(uid, 1))
    assert len(sends) == 1, sends
    assert sends[0].count("EVALSHA") == 2
    assert f"tw:{{ev:{uid}}}:h" in sends[0]
    assert global_key(shard_of(uid)) in sends[0]
    sends.clear()
    await log.append(SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW, uid, "s2", "192.0.2.1", browser))
    assert len(sends) == 2, sends  # the pipeline, then the agent list
    assert f"tw:{{ev:{uid}}}:a" in sends[1]
    assert sends[1].count("EVALSHA") == 1
    await redis.script_flush()
    await log.append(routine(uid, 3))
    events = await log.for_user(uid, now=NOW)
    assert [(e.sid, e.user_agent) for e in events] == [
        ("s3", "ua"), ("s2", browser), ("s1", "ua"), ("s0", warm),
    ]  # fmt: skip
    mine = [f["sid"] for _, f in await redis.xrange(global_key(shard_of(uid))) if f["uid"] == uid]
    assert mine == ["s0", "s1", "s2", "s3"]


async def test_the_device_check_rides_with_the_event(
    redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event with a device records it in the same send as the event (a third script in
    the pipeline) and says whether the user was seen on it within the memory: not the first
    time, yes the second, not once the memory has passed; also after SCRIPT FLUSH. Without
    a device, or without a user, nothing is checked (None)."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid = uuid.uuid4().hex
    # Scripts loaded, a connection open.
    assert await log.append(routine(uid, 0), device="dev-0", memory=100) is False
    sends = count_sends(redis, monkeypatch)
    assert await log.append(routine(uid, 1), device="dev-a", memory=100) is False
    assert len(sends) == 1, sends
    assert sends[0].count("EVALSHA") == 3
    assert f"tw:{{ev:{uid}}}:d" in sends[0]
    assert "dev-a" in sends[0]
    assert await log.append(routine(uid, 2), device="dev-a", memory=100) is True
    assert await log.append(routine(uid, 3), device="dev-b", memory=100) is False
    later = SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW + 100, uid, "s4", "192.0.2.1", "ua")
    assert await log.append(later, device="dev-a", memory=100) is False  # forgotten
    await redis.script_flush()
    assert await log.append(routine(uid, 5), device="dev-b", memory=100) is True
    assert await log.append(routine(uid, 6)) is None
    anonymous = SecurityEvent(EventKind.LOGIN_FAILED, NOW, None, None, "192.0.2.1", "ua")
    assert await log.append(anonymous, device="dev-a", memory=100) is None
    assert await redis.hget(keys(uid)["d"], "dev-b") == str(NOW)
    assert 0 < await redis.ttl(keys(uid)["d"]) <= 100
    sids = [e.sid for e in await log.for_user(uid, now=NOW)]
    assert sids == ["s6", "s5", "s4", "s3", "s2", "s1", "s0"]


async def test_a_failed_history_write_is_an_outage_and_keeps_the_operators_entry(
    redis: RedisClient,
) -> None:
    """The two scripts share a round trip, not a fate: when the user's history cannot be
    written (here its key holds a string), the append fails as an outage (503 material,
    logged by the caller) and the operators' log still has the event."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid = uuid.uuid4().hex
    await redis.set(keys(uid)["h"], "not a list", ex=TTL)
    with pytest.raises(Unavailable):
        await log.append(routine(uid, 7))
    mine = [f["sid"] for _, f in await redis.xrange(global_key(shard_of(uid))) if f["uid"] == uid]
    assert mine == ["s7"]


async def test_a_lost_event_does_not_lose_its_new_device(redis: RedisClient) -> None:
    """The device check shares the event's round trip, not its fate the wrong way round:
    when the event cannot be written (its history key holds a string, then the operators'
    stream does), the append fails as an outage and a device the check found new is
    forgotten again, so the next login from it is still reported as new. A device already
    known stays known."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid = uuid.uuid4().hex
    assert await log.append(routine(uid, 0), device="known", memory=TTL) is False
    await redis.set(keys(uid)["h"], "not a list", ex=TTL)
    for device in ("new", "known"):
        with pytest.raises(Unavailable):
            await log.append(routine(uid, 1), device=device, memory=TTL)
    assert await redis.hget(keys(uid)["d"], "new") is None
    assert await redis.hget(keys(uid)["d"], "known") == str(NOW)
    await redis.delete(keys(uid)["h"])
    stream = global_key(shard_of(uid))
    saved = await redis.dump(stream)
    await redis.delete(stream)
    await redis.set(stream, "not a stream", ex=TTL)
    try:
        with pytest.raises(Unavailable):
            await log.append(routine(uid, 2), device="new", memory=TTL)
        assert await redis.hget(keys(uid)["d"], "new") is None
    finally:
        await redis.delete(stream)
        if saved is not None:
            await redis.restore(stream, 0, saved)
    assert await log.append(routine(uid, 3), device="new", memory=TTL) is False
    assert await log.append(routine(uid, 4), device="new", memory=TTL) is True


async def test_entries_in_the_decimal_id_format_are_still_read(redis: RedisClient) -> None:
    """History entries written before the ids were base 36 (``<ms>-<seq>|<class>|<kind>|``,
    their agents in the user's ``:a`` list) read back next to new ones, which go above them
    in the same id sequence and still count against their class's cap; the API sees
    decimal ids either way."""
    log = RedisEventLog(redis, ttl=TTL, per_user=2)
    uid, ahead = uuid.uuid4().hex, (int(time.time()) + 60) * 1000
    old = [f"{ahead}-1|r|L||old-2|192.0.2.1|0a1b2c3d|", f"{ahead}-0|c|N||old-1|192.0.2.1||"]
    await redis.rpush(keys(uid)["h"], *old)
    await redis.rpush(keys(uid)["a"], "0a1b2c3d|Old Browser/1.0")
    await redis.expire(keys(uid)["h"], TTL)
    await redis.expire(keys(uid)["a"], TTL)
    await log.append(routine(uid, 1))
    events = await log.for_user(uid, now=NOW)
    assert [e.id for e in events] == [f"{ahead}-2", f"{ahead}-1", f"{ahead}-0"]
    assert [e.sid for e in events] == ["s1", "old-2", "old-1"]
    assert [e.user_agent for e in events] == ["ua", "Old Browser/1.0", ""]
    newest = await redis.lindex(keys(uid)["h"], 0)
    assert newest is not None
    ms, seq = newest.split("|", 1)[0].split(".")
    assert (int(ms, 36), seq, newest.split("|")[1]) == (ahead, "2", "rL")  # base 36, 1 field
    await log.append(routine(uid, 2))  # a third routine entry: the decimal one leaves
    assert [e.sid for e in await log.for_user(uid, now=NOW)] == ["s2", "s1", "old-1"]


async def test_the_operators_log_names_agents_by_reference(redis: RedisClient) -> None:
    """The operators' streams hold an agent's reference, not the agent, for events with and
    without a user; ``recent`` reads each back with its agent, a clashing one (stored whole)
    and one whose table entry expired (empty) included."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    uid, ip = uuid.uuid4().hex, f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"
    browser, clashing, gone = (f"Mozilla/5.0 {name} {uuid.uuid4()}" for name in "abc")
    failed = SecurityEvent(EventKind.LOGIN_FAILED, NOW, None, None, ip, browser)
    await log.append(failed)
    await log.append(SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW, uid, "s1", ip, browser))
    await redis.set(agent_key(shard_of(uid), agent_ref(clashing)), "another agent", ex=TTL)
    await log.append(SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW, uid, "s2", ip, clashing))
    await log.append(SecurityEvent(EventKind.LOGIN_SUCCEEDED, NOW, uid, "s3", ip, gone))
    await redis.delete(agent_key(shard_of(uid), agent_ref(gone)))
    mine = [(f.get("ur"), f.get("ua")) for _, f in await redis.xrange(global_key(shard_of(uid)))
            if f.get("uid") == uid]  # fmt: skip
    assert mine == [(agent_ref(browser), None), (None, clashing), (agent_ref(gone), None)]
    (anonymous,) = [
        f for _, f in await redis.xrange(global_key(shard_of(ip))) if f["ip"] == ip and not f["uid"]
    ]
    assert (anonymous.get("ur"), anonymous.get("ua")) == (agent_ref(browser), None)
    recent = await log.recent(limit=10_000)
    assert [(e.sid, e.user_agent) for e in recent if e.uid == uid] == [
        ("s3", ""), ("s2", clashing), ("s1", browser),
    ]  # fmt: skip
    assert [e.user_agent for e in recent if e.ip == ip and e.uid is None] == [browser]


async def test_a_damaged_newest_entry_neither_blocks_writes_nor_reads(
    redis: RedisClient,
) -> None:
    """A history whose newest entry is in neither format (garbage, or written by a newer
    version) still takes new events, and reads skip the unreadable entry."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    for garbage in ("garbage", "-|", "!!|rL||s|ip|ref|"):
        uid = uuid.uuid4().hex
        await redis.lpush(keys(uid)["h"], garbage)
        await redis.expire(keys(uid)["h"], TTL)
        await log.append(routine(uid, 1))
        assert [e.sid for e in await log.for_user(uid, now=NOW)] == ["s1"], garbage


def shard_of(uid: str) -> int:
    return zlib.crc32(uid.encode()) % GLOBAL_SHARDS


async def test_details_and_clock_skew_round_trip(redis: RedisClient) -> None:
    """A detail holding the entry separator, an empty address and an event time an hour
    away from the server's clock all read back exactly."""
    log = RedisEventLog(redis, ttl=7200, per_user=10)
    uid = uuid.uuid4().hex
    detail = {"reason": "a|b|c", "count": 3}
    event = SecurityEvent(EventKind.SESSIONS_ENDED, NOW - 3600, uid, None, "", "ua|x", detail)
    await log.append(event)
    (back,) = await log.for_user(uid, now=NOW)
    assert (back.kind, back.at, back.sid, back.ip, back.user_agent, dict(back.detail)) == (
        event.kind, event.at, None, "", "ua|x", detail,
    )  # fmt: skip


async def test_the_operators_log_is_spread_over_shards(redis: RedisClient) -> None:
    """Events of 200 users land in at least 12 of the 16 streams (no hot key), each with a
    TTL; ``recent`` merges them newest first, pages back with ``before``, and still reads
    the single 0.1 stream."""
    log = RedisEventLog(redis, ttl=TTL, per_user=10)
    users = [uuid.uuid4().hex for _ in range(200)]
    await redis.xadd(
        LEGACY_GLOBAL_STREAM, {"k": "login.failed", "at": NOW, "uid": "", "ip": "legacy"}
    )
    await redis.expire(LEGACY_GLOBAL_STREAM, TTL)
    for n, uid in enumerate(users):
        await log.append(routine(uid, n))
    used = 0
    for shard in range(GLOBAL_SHARDS):
        if await redis.exists(global_key(shard)):
            used += 1
            assert 0 < await redis.ttl(global_key(shard)) <= TTL
    assert used >= 12
    assert len({key_slot(global_key(n).encode()) for n in range(GLOBAL_SHARDS)}) == GLOBAL_SHARDS
    mine, ours = {f"s{n}" for n in range(200)}, set(users)
    seen: list[SecurityEvent] = []
    before = None
    while page := await log.recent(limit=30, kinds=["login.succeeded"], before=before):
        seen += [e for e in page if e.uid in ours]
        before = page[-1].id
    assert sorted(e.sid or "" for e in seen) == sorted(mine)  # each once, none skipped
    assert [order(e) for e in seen] == sorted((order(e) for e in seen), reverse=True)
    written = [int((e.sid or "s0")[1:]) for e in seen]  # newest first, to the millisecond
    assert all(
        written[i] > written[i + 1] or order(a)[0] == order(b)[0]
        for i, (a, b) in enumerate(itertools.pairwise(seen))
    )
    assert any(e.ip == "legacy" for e in await log.recent(limit=10_000, kinds=["login.failed"]))


async def test_per_user_memory_stays_bounded(redis: RedisClient) -> None:
    """However many events a user gets, their history holds at most ``per_user`` entries of
    each class, and their memory stops growing: after 2,000 events of each kind it is well
    under twice what it was after 1,000 (uncapped, it would double). Not tighter: an entry's
    id carries a sequence suffix when several of the user's events fall in one millisecond,
    so entry sizes depend on how fast this loop runs (and the second round's session ids
    are a digit longer); with a 10 % bound it failed 1 run in 3 next to the security-event
    tests."""
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
    assert await redis.llen(keys(uid)["h"]) == 200
    assert second <= first * 1.5, (first, second)
