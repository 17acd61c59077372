"""Security events in Redis Streams, and the devices each user logged in from.

==============================  ======  ===============================================
key                             type    content, cap and TTL
==============================  ======  ===============================================
``tw:{ev:<uid>}:log``           stream  the user's routine events;
                                        ``TOKENWARD_EVENTS_PER_USER`` newest kept; TTL
                                        ``TOKENWARD_EVENTS_TTL``
``tw:{ev:<uid>}:sec``           list    the user's security-critical events
                                        (:attr:`~tokenward.events.SecurityEvent.critical`),
                                        newest first, ``<id> <JSON fields>``; capped and
                                        expiring the same way, apart
``tw:{ev:<uid>}:dev``           zset    device digest -> last login; 64 newest; TTL 90 days
``tw:events``                   stream  every event, for operators; about
                                        ``TOKENWARD_EVENTS_GLOBAL_MAX`` kept; TTL as above
==============================  ======  ===============================================

Each write is one Lua script (``XADD`` with its cap, then ``EXPIRE``), so no stream ever
exists without a TTL. A user's events older than the TTL are also filtered out on read: an
active user's streams never expire as a whole.

The critical events are a list, not a second stream, for memory: Redis gives every new
stream a listpack of ``stream-node-max-bytes`` (4 KiB) at once, so a stream holding one
event takes about 4.7 KB, a list holding one takes a few hundred bytes, and almost every
user has one critical event (their first login is from a new device).

A user's stream and list share one id sequence: the script writing either (both keys in
one hash slot) gives the entry an id above the newest of *both*, so ids stay unique per
user and :meth:`RedisEventLog.for_user` merges the two by id into one newest-first history.

Entry fields: ``k`` kind, ``at``, ``uid``, ``sid``, ``ip``, ``ua``, ``d`` (JSON detail).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from redis.exceptions import RedisError

from tokenward.errors import Unavailable
from tokenward.events import EventKind, SecurityEvent
from tokenward.stores.redis_client import RedisClient

__all__ = ["GLOBAL_STREAM", "RedisEventLog"]

GLOBAL_STREAM = "tw:events"
DEVICES_KEPT = 64

# KEYS[1]: the stream. ARGV: cap, approximate ('~' or '='), ttl, then field/value pairs.
_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], ARGV[1], '*', unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return id
"""

# KEYS[1]: the user's routine stream, KEYS[2]: their critical list (same hash tag).
# ARGV: cap, ttl, critical ('1' or '0'), the JSON fields (for the list), then field/value
# pairs (for the stream). The id is the server time in ms, raised above the newest id of
# the stream and of the list (entries only ever leave from their oldest end, so the newest
# entry holds each one's last id): one strictly increasing sequence over both.
_APPEND_USER = """
local t = redis.call('TIME')
local ms, seq = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 0
local tops = {}
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then tops[1] = last[1] end
tops[2] = redis.call('LINDEX', KEYS[2], 0)
for i = 1, 2 do
  if tops[i] then
    local tms, tseq = string.match(tops[i], '^(%d+)-(%d+)')
    tms, tseq = tonumber(tms), tonumber(tseq)
    if tms > ms or (tms == ms and tseq >= seq) then ms, seq = tms, tseq + 1 end
  end
end
local id = string.format('%.0f-%.0f', ms, seq)
if ARGV[3] == '1' then
  redis.call('LPUSH', KEYS[2], id .. ' ' .. ARGV[4])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[1]) - 1)
  redis.call('EXPIRE', KEYS[2], ARGV[2])
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '=', ARGV[1], id, unpack(ARGV, 5))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return id
"""

# KEYS[1]: the device zset. ARGV: device, now, memory, keep. Returns 1 when seen recently.
_SEEN = """
local now, memory = tonumber(ARGV[2]), tonumber(ARGV[3])
local last = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '-1')
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - memory)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[4]) - 1)
redis.call('EXPIRE', KEYS[1], memory)
if last >= 0 and now - last < memory then return 1 end
return 0
"""


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable("event store unreachable") from exc


def _user_keys(uid: str) -> tuple[str, str, str]:
    """The user's routine stream, critical list and device set (one hash slot)."""
    tag = f"tw:{{ev:{uid}}}"
    return f"{tag}:log", f"{tag}:sec", f"{tag}:dev"


def _listed(entry: str) -> tuple[str, dict[str, str]]:
    """An entry of the critical list as ``(id, fields)``; fields empty if unreadable."""
    entry_id, _, payload = entry.partition(" ")
    try:
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return entry_id, {}
    return entry_id, fields if isinstance(fields, dict) else {}


def _id_order(event: SecurityEvent) -> tuple[int, int]:
    ms, _, seq = event.id.partition("-")
    return int(ms), int(seq or "0")


def _decode(entry_id: str, f: dict[str, str]) -> SecurityEvent | None:
    try:
        kind = EventKind(f.get("k", ""))
        detail = orjson.loads(f.get("d") or "{}")
        return SecurityEvent(
            kind=kind,
            at=int(f.get("at", "0")),
            uid=f.get("uid") or None,
            sid=f.get("sid") or None,
            ip=f.get("ip", ""),
            user_agent=f.get("ua", ""),
            detail=detail if isinstance(detail, dict) else {},
            id=entry_id,
        )
    except (ValueError, orjson.JSONDecodeError):
        return None  # an entry written by a newer version: skip it, do not fail the read


class RedisEventLog:
    """Implements :class:`~tokenward.events.EventSink` and
    :class:`~tokenward.events.DeviceRegistry` on Redis.

    Args:
        redis: a client created with ``decode_responses=True``.
        ttl: how long events are kept, seconds.
        per_user: events kept per user (exact cap), routine and critical ones each.
        global_max: events kept in the operators' stream (approximate cap, cheaper).
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        ttl: int = 30 * 86_400,
        per_user: int = 100,
        global_max: int = 100_000,
    ) -> None:
        self.redis = redis
        self.ttl = ttl
        self.per_user = per_user
        self.global_max = global_max
        self._append = redis.register_script(_APPEND)
        self._append_user = redis.register_script(_APPEND_USER)
        self._seen = redis.register_script(_SEEN)

    async def append(self, event: SecurityEvent) -> None:
        """See :meth:`tokenward.events.EventSink.append`."""
        fields: list[str | int] = [
            "k", event.kind.value, "at", event.at, "uid", event.uid or "", "sid", event.sid or "",
            "ip", event.ip, "ua", event.user_agent, "d", orjson.dumps(dict(event.detail)).decode(),
        ]  # fmt: skip
        async with _backend():
            await self._append(keys=[GLOBAL_STREAM], args=[self.global_max, "~", self.ttl, *fields])
            if event.uid:
                log_key, sec_key, _ = _user_keys(event.uid)
                listed = orjson.dumps(dict(zip(fields[::2], fields[1::2], strict=True))).decode()
                args = [self.per_user, self.ttl, "1" if event.critical else "0", listed, *fields]
                await self._append_user(keys=[log_key, sec_key], args=args)

    async def for_user(self, uid: str, *, now: int, limit: int = 100) -> list[SecurityEvent]:
        """See :meth:`tokenward.events.EventSink.for_user`: stream and list, merged by id."""
        log_key, sec_key, _ = _user_keys(uid)
        count = max(1, min(limit, self.per_user))
        async with _backend():
            rows: list[Any] = await self.redis.xrevrange(log_key, count=count)  # type: ignore[assignment]
            listed: list[str] = await self.redis.lrange(sec_key, 0, count - 1)  # type: ignore[assignment]
        rows += [_listed(entry) for entry in listed]
        events = [_decode(entry_id, f) for entry_id, f in rows]
        mine = [e for e in events if e is not None and e.uid == uid and e.at > now - self.ttl]
        return sorted(mine, key=_id_order, reverse=True)

    async def recent(
        self, *, limit: int = 100, kinds: Sequence[str] = (), before: str | None = None
    ) -> list[SecurityEvent]:
        """See :meth:`tokenward.events.EventSink.recent`.

        Args:
            limit: at most this many events.
            kinds: only these kinds (``login.failed``, ``refresh.reused`` ...); all if empty.
            before: page backwards: only events older than this id.
        """
        out: list[SecurityEvent] = []
        rows: list[Any]
        top = "+" if before is None else f"({before}"
        async with _backend():
            while len(out) < limit:
                rows = await self.redis.xrevrange(GLOBAL_STREAM, max=top, count=500)  # type: ignore[assignment]
                if not rows:
                    break
                for entry_id, f in rows:
                    event = _decode(entry_id, f)
                    if event is not None and (not kinds or event.kind.value in kinds):
                        out.append(event)
                        if len(out) == limit:
                            break
                top = f"({rows[-1][0]}"
        return out

    async def seen(self, uid: str, device: str, *, now: int, memory: int) -> bool:
        """See :meth:`tokenward.events.DeviceRegistry.seen`."""
        _, _, dev_key = _user_keys(uid)
        async with _backend():
            known = await self._seen(keys=[dev_key], args=[device, now, memory, DEVICES_KEPT])
        return bool(known)
