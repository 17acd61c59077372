"""Security events in Redis: each user's history and devices, and the operators' log.

==============================  ======  ===============================================
key                             type    content, cap and TTL
==============================  ======  ===============================================
``tw:{ev:<uid>}:h``             list    the user's events, newest first, one compact
                                        entry each (below); ``TOKENWARD_EVENTS_PER_USER``
                                        routine and as many critical ones kept; TTL
                                        ``TOKENWARD_EVENTS_TTL``
``tw:{ev:<uid>}:a``             list    user agents of the user's events that clashed in
                                        the agent table (below), ``<ref>|<ua>``, most
                                        recently used first; 32 kept; TTL as above
``tw:{ev:<uid>}:d``             hash    device digest -> last login; 64 newest; 90 days
``tw:{events:<n>}``             stream  every event, for operators, in
                                        :data:`GLOBAL_SHARDS` streams; about
                                        ``TOKENWARD_EVENTS_GLOBAL_MAX`` kept in all; TTL
                                        as above
``tw:{events:<n>}:ua:<ref>``    string  the agent table: a user agent the events of
                                        stream ``n`` (and its users' histories) name,
                                        stored once for all of them; TTL as above,
                                        renewed by every event naming it
==============================  ======  ===============================================

Memory is the reason for this shape (``bench/event_memory.py`` measures it):

* A user's history is a *list*, not a stream: Redis gives every new stream a listpack of
  ``stream-node-max-bytes`` (4 KiB) at once, so a stream holding one event took about
  4.7 KB, more than the user's sessions.
* An entry is ``<id>|<class><kind>|<at>|<sid>|<ip>|<ua ref>|<detail JSON>``: the id in
  base 36 (``<ms>`` or ``<ms>.<seq>``; read back as the decimal ``<ms>-<seq>``), the kind as
  a one-letter code (:data:`KIND_CODES`), ``at`` as its difference from the id's own time
  (empty when they agree, as they do unless the application's clock is not the server's),
  no user id (the key names the user), and the user agent as an 8-character reference
  (:func:`agent_ref`, 48 bits of SHA-256) into the agent table: a user agent is about 130
  bytes, and a few dozen of them serve all the users. The table lives in the slot of the
  user's operators' stream, so the script that writes the stream writes it too; an entry
  that already holds another agent (a clash) is left alone, and that event's agent goes to
  the user's own ``:a`` list, which reads take first.
* Critical events (:attr:`~tokenward.events.SecurityEvent.critical`, class ``c``) and
  routine ones (``r``) share the list but not the cap: when one class is over
  ``TOKENWARD_EVENTS_PER_USER``, its oldest entry leaves, so an intruder's hundred logins
  never push the owner's ``login.new-device`` out.

The operators' log used to be one stream, ``tw:events``: every event of every user wrote to
one key, a hot key on one shard of a Cluster. It is now :data:`GLOBAL_SHARDS` streams (hash
tags ``{events:0}`` ... ``{events:15}``, spread over the slots), an event going to the
stream of its user (or, naming no user, of its address); :meth:`RedisEventLog.recent`
merges them by id.

Each write is one Lua script per key's hash slot, so nothing is ever written without its
TTL. A user's events older than the TTL are also filtered out on read: an active user's
history never expires as a whole. Ids are the server's time in milliseconds and a sequence,
raised above the user's newest id, so they are unique and ordered per user.

Entries with decimal ids (``<ms>-<seq>|<class>|<kind>|...``, written before the agent
table; their agents in ``:a``) are still read, and count against the caps. Keys of 0.1 (a
user's ``:log`` stream and ``:sec`` list and ``:dev`` sorted set, and ``tw:events``) are
read, never written, until their TTL ends them (at most ``TOKENWARD_EVENTS_TTL``; 90 days
for ``:dev``): no history, no known device and no operator event is lost by upgrading.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
from redis.exceptions import RedisError

from tokenward.errors import Unavailable
from tokenward.events import DEVICE_MEMORY, EventKind, SecurityEvent
from tokenward.stores.redis_client import RedisClient, ScriptCall, run_scripts

__all__ = [
    "GLOBAL_SHARDS",
    "KIND_CODES",
    "LEGACY_GLOBAL_STREAM",
    "RedisEventLog",
    "agent_key",
    "agent_ref",
    "global_key",
]

#: Streams the operators' log is spread over (one hash tag each).
GLOBAL_SHARDS = 16
#: The single operators' stream of 0.1: read until it expires, never written.
LEGACY_GLOBAL_STREAM = "tw:events"
DEVICES_KEPT = 64
AGENTS_KEPT = 32

#: One-letter codes of the kinds in a user's history; a kind without one is stored whole.
KIND_CODES: dict[EventKind, str] = {
    EventKind.REGISTERED: "R",
    EventKind.LOGIN_SUCCEEDED: "L",
    EventKind.LOGIN_FAILED: "F",
    EventKind.NEW_DEVICE: "N",
    EventKind.THROTTLED: "T",
    EventKind.REFRESH_REUSED: "U",
    EventKind.REFRESH_REPLAYED: "G",
    EventKind.PASSWORD_CHANGED: "P",
    EventKind.SESSIONS_ENDED: "E",
    EventKind.PASSWORD_RESET: "W",
    EventKind.EMAIL_VERIFIED: "V",
    EventKind.EMAIL_CHANGED: "C",
    EventKind.MFA_ENABLED: "M",
    EventKind.MFA_REMOVED: "X",
    EventKind.MFA_RESET: "Z",
    EventKind.MFA_FAILED: "Y",
    EventKind.RECOVERY_CODE_USED: "K",
    EventKind.RECOVERY_CODES_REGENERATED: "Q",
    EventKind.REAUTHENTICATED: "A",
    EventKind.PASSKEY_ADDED: "B",
    EventKind.PASSKEY_REMOVED: "D",
    EventKind.PASSKEY_USED: "H",
    EventKind.PASSKEY_CLONE_SUSPECTED: "J",
}
_KINDS_BY_CODE = {code: kind for kind, code in KIND_CODES.items()}


def global_key(shard: int) -> str:
    """The operators' stream number ``shard`` (0 to :data:`GLOBAL_SHARDS` - 1)."""
    return f"tw:{{events:{shard}}}"


# KEYS[1]: one stream of the operators' log; KEYS[2], when the event has a user agent: that
# agent's entry in the stream's agent table. ARGV: cap, ttl, shard, user agent, its
# reference, then field/value pairs. The entry names the agent by its reference (``ur``), or
# holds it whole (``ua``) when KEYS[2] already holds another agent (a clash: the user's
# history then keeps it whole too). The id is the server time in ms (raised above the
# stream's newest) and a sequence whose remainder by the number of shards is the shard: ids
# are unique across the streams, so paging the merged log with an exclusive "before" id
# never skips an event. Returns 1 on a clash, else 0.
_APPEND = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local shard, n = tonumber(ARGV[3]), $SHARDS
local seq = shard
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  local tms, tseq = string.match(last[1], '^(%d+)-(%d+)')
  tms, tseq = tonumber(tms), tonumber(tseq)
  if tms >= ms then ms, seq = tms, (math.floor(tseq / n) + 1) * n + shard end
end
local clash, fields = 0, {unpack(ARGV, 6)}
if KEYS[2] then
  local held = redis.call('GET', KEYS[2])
  if held and held ~= ARGV[4] then
    clash = 1
    table.insert(fields, 'ua')
    table.insert(fields, ARGV[4])
  else
    redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[2])
    table.insert(fields, 'ur')
    table.insert(fields, ARGV[5])
  end
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%.0f-%.0f', ms, seq),
           unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return clash
""".replace("$SHARDS", str(GLOBAL_SHARDS))

# KEYS: the history, then the 0.1 stream and list (read for their newest id only while the
# history is empty). ARGV: cap, ttl, class ('c' or 'r'), kind, at, the rest of the entry
# ('<sid>|<ip>|<ua ref>|<detail>'). The id is the server time in ms, raised
# above the newest id the user has (of either entry format): one strictly increasing
# sequence, also across an upgrade from the 0.1 keys. It is written in base 36 (``ms`` or
# ``ms.seq``), 7 characters shorter than the decimal ``ms-seq`` it reads back as.
_APPEND_USER = """
local t = redis.call('TIME')
local ms, seq = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 0
local tops = {redis.call('LINDEX', KEYS[1], 0)}
if not tops[1] then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  if last then tops[1] = last[1] end
  tops[2] = redis.call('LINDEX', KEYS[3], 0)
end
for i = 1, 2 do
  if tops[i] then
    local tms, tseq = string.match(tops[i], '^(%d+)-(%d+)')
    if tms then
      tms, tseq = tonumber(tms), tonumber(tseq)
    else
      tms, tseq = string.match(tops[i], '^(%w+)%.?(%w*)|')
      if tms then tms, tseq = tonumber(tms, 36), tonumber(tseq, 36) or 0 end
    end
    -- An entry in neither format (damaged) does not hold the sequence back.
    if tms and (tms > ms or (tms == ms and tseq >= seq)) then ms, seq = tms, tseq + 1 end
  end
end
local function b36(v)
  local out = ''
  repeat
    local d = v % 36
    out = string.sub('0123456789abcdefghijklmnopqrstuvwxyz', d + 1, d + 1) .. out
    v = math.floor(v / 36)
  until v == 0
  return out
end
local id = b36(ms)
if seq > 0 then id = id .. '.' .. b36(seq) end
local cap, class = tonumber(ARGV[1]), ARGV[3]
local late = tonumber(ARGV[5]) - math.floor(ms / 1000)
if late == 0 then late = '' else late = string.format('%.0f', late) end
local n = redis.call('LPUSH', KEYS[1], table.concat({id, class .. ARGV[4], late, ARGV[6]}, '|'))
if n > cap then
  -- At most one class is over its cap, by one: drop that class's oldest entry.
  local entries, mine, oldest = redis.call('LRANGE', KEYS[1], 0, -1), 0, nil
  for i = #entries, 1, -1 do
    if string.match(entries[i], '^[^|]*|(.)') == class then
      mine = mine + 1
      oldest = oldest or entries[i]
    end
  end
  if mine > cap then redis.call('LREM', KEYS[1], -1, oldest) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return id
"""

# KEYS[1]: the user's agents. ARGV: '<ref>|<ua>' (an agent that clashed in the agent
# table), agents kept, ttl. Moves it to the front (most recently used first).
_AGENT = """
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1]: the device hash, KEYS[2]: the 0.1 device zset. ARGV: device, now, memory, keep.
# Returns 1 when seen within memory. Pruning (older than memory, then past the newest
# keep) only runs when the hash has grown past keep.
_SEEN = """
local now, memory, keep = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if last < 0 then last = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '-1') end
redis.call('HSET', KEYS[1], ARGV[1], now)
if redis.call('HLEN', KEYS[1]) > keep then
  local all, rows = redis.call('HGETALL', KEYS[1]), {}
  for i = 1, #all, 2 do table.insert(rows, {all[i], tonumber(all[i + 1]) or 0}) end
  table.sort(rows, function(a, b) return a[2] > b[2] end)
  for i, row in ipairs(rows) do
    if i > keep or now - row[2] >= memory then redis.call('HDEL', KEYS[1], row[1]) end
  end
end
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
    """The user's history, agents and devices (one hash slot)."""
    tag = f"tw:{{ev:{uid}}}"
    return f"{tag}:h", f"{tag}:a", f"{tag}:d"


def _legacy_keys(uid: str) -> tuple[str, str, str]:
    """The user's 0.1 routine stream, critical list and device zset (the same slot)."""
    tag = f"tw:{{ev:{uid}}}"
    return f"{tag}:log", f"{tag}:sec", f"{tag}:dev"


def _shard_of(event: SecurityEvent) -> int:
    return _shard_of_user(event.uid or event.ip)


def _shard_of_user(name: str) -> int:
    """The operators' stream (and agent table) of a user id, or of an address."""
    return zlib.crc32(name.encode()) % GLOBAL_SHARDS


def agent_ref(user_agent: str) -> str:
    """The 8-character (48-bit) name of a user agent in the agent tables."""
    return base64.urlsafe_b64encode(hashlib.sha256(user_agent.encode()).digest()[:6]).decode()


def agent_key(shard: int, ref: str) -> str:
    """The agent table entry ``ref`` of the operators' stream number ``shard`` (its slot)."""
    return f"{global_key(shard)}:ua:{ref}"


def _rest(event: SecurityEvent) -> str:
    """``<sid>|<ip>|<ua ref>|<detail>``: the end of the event's history entry."""
    detail = orjson.dumps(dict(event.detail)).decode() if event.detail else ""
    ref = agent_ref(event.user_agent) if event.user_agent else ""
    return f"{event.sid or ''}|{event.ip}|{ref}|{detail}"


def _split(entry: str) -> tuple[str, str, str, str, str, str, str] | None:
    """A history entry's ``(id, kind, late, sid, ip, ref, detail)``, its id as the API gives
    it (decimal ``ms-seq``); ``None`` if it is in neither format.

    Two formats: ``<ms>-<seq>|<class>|<kind>|...`` (written before the ids were base 36)
    and ``<ms36>[.<seq36>]|<class><kind>|...``.
    """
    head, _, tail = entry.partition("|")
    if "-" in head:
        parts = tail.split("|", 6)
        if len(parts) != 7:
            return None
        _, code, late, sid, ip, ref, detail = parts
        return head, code, late, sid, ip, ref, detail
    parts = tail.split("|", 5)
    if len(parts) != 6:
        return None
    ms, _, seq = head.partition(".")
    try:
        entry_id = f"{int(ms, 36)}-{int(seq or '0', 36)}"
    except ValueError:
        return None
    klass_kind, late, sid, ip, ref, detail = parts
    return entry_id, klass_kind[1:], late, sid, ip, ref, detail


def _parse(
    parts: tuple[str, str, str, str, str, str, str] | None, uid: str, agents: dict[str, str]
) -> SecurityEvent | None:
    """A history entry as an event; ``None`` if it cannot be read (written by a newer
    version, or damaged): skipped, never a failed read."""
    if parts is None:
        return None
    entry_id, code, late, sid, ip, ref, detail_text = parts
    try:
        kind = _KINDS_BY_CODE.get(code) or EventKind(code)
        at = int(entry_id.partition("-")[0]) // 1000 + int(late or "0")
        detail = orjson.loads(detail_text) if detail_text else {}
    except (ValueError, orjson.JSONDecodeError):
        return None
    return SecurityEvent(
        kind=kind,
        at=at,
        uid=uid,
        sid=sid or None,
        ip=ip,
        user_agent=agents.get(ref, ""),
        detail=detail if isinstance(detail, dict) else {},
        id=entry_id,
    )


def _listed(entry: str) -> tuple[str, dict[str, str]]:
    """An entry of a 0.1 critical list as ``(id, fields)``; fields empty if unreadable."""
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
    """A stream entry (the operators' log, or a 0.1 user stream) as an event."""
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
    """Implements :class:`~tokenward.events.EventSink` on Redis.

    Args:
        redis: a client created with ``decode_responses=True``.
        ttl: how long events are kept, seconds.
        per_user: events kept per user (exact cap), routine and critical ones each.
        global_max: events kept in the operators' log (approximate cap, cheaper), in all
            of its :data:`GLOBAL_SHARDS` streams together.
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
        self._agent = redis.register_script(_AGENT)
        self._seen = redis.register_script(_SEEN)

    async def append(
        self, event: SecurityEvent, *, device: str | None = None, memory: int = DEVICE_MEMORY
    ) -> bool | None:
        """See :meth:`tokenward.events.EventSink.append`: the operators' log, the user's
        history and the device check (see :meth:`seen`; two hash slots, so three scripts) in
        one round trip.

        The history names the agent by its reference. When the agent table already held
        another agent under it (a clash, which the first script reports), one more round
        trip puts the agent whole in the user's own list, which reads take first.

        When a script fails the append fails (:class:`Unavailable`), and a device the check
        found new is forgotten again (one more round trip), so that the event's loss does
        not lose the "new device" report: the next login from it makes it.
        """
        fields: list[str | int] = [
            "k", event.kind.value, "at", event.at, "uid", event.uid or "", "sid", event.sid or "",
            "ip", event.ip, "d", orjson.dumps(dict(event.detail)).decode(),
        ]  # fmt: skip
        cap, shard = max(1, self.global_max // GLOBAL_SHARDS), _shard_of(event)
        ua = event.user_agent
        ref = agent_ref(ua) if ua else ""
        keys = [global_key(shard)]
        if ua:
            keys.append(agent_key(shard, ref))
        calls: list[ScriptCall] = [(self._append, keys, [cap, self.ttl, shard, ua, ref, *fields])]
        if event.uid:
            history, agents, _ = _user_keys(event.uid)
            old_log, old_sec, _ = _legacy_keys(event.uid)
            args = [
                self.per_user, self.ttl, "c" if event.critical else "r",
                KIND_CODES.get(event.kind, event.kind.value), event.at, _rest(event),
            ]  # fmt: skip
            calls.append((self._append_user, [history, old_log, old_sec], args))
            if device is not None:
                calls.append(self._seen_call(event.uid, device, event.at, memory))
        async with _backend():
            replies = await run_scripts(self.redis, calls, raise_on_error=False)
            seen = replies[2] if len(replies) > 2 else None
            failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if failed is not None:
                if seen == 0 and event.uid and device is not None:
                    # A new device whose event was lost is forgotten again, so that the
                    # next login from it still reports it (and its owner hears of it).
                    await self.redis.hdel(_user_keys(event.uid)[2], device)
                raise failed
            if replies[0] and event.uid:  # an agent-table clash
                await self._agent(keys=[agents], args=[f"{ref}|{ua}", AGENTS_KEPT, self.ttl])
        return None if seen is None else bool(seen)

    async def for_user(self, uid: str, *, now: int, limit: int = 100) -> list[SecurityEvent]:
        """See :meth:`tokenward.events.EventSink.for_user`: the newest ``limit`` routine and
        the newest ``limit`` critical events, merged by id (with any the 0.1 keys still
        hold). Two round trips when the events name agents: the user's keys, then the
        agent table (another hash slot)."""
        history, agents_key, _ = _user_keys(uid)
        old_log, old_sec, _ = _legacy_keys(uid)
        count = max(1, min(limit, self.per_user))
        async with _backend(), self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(history, 0, -1)
            pipe.lrange(agents_key, 0, -1)
            pipe.xrevrange(old_log, count=count)
            pipe.lrange(old_sec, 0, count - 1)
            entries, agent_rows, old_rows, old_listed = await pipe.execute()
        # The user's own list first: it holds the agents of clashes and of older versions.
        agents = dict(row.split("|", 1) for row in agent_rows if "|" in row)
        kept = {"c": 0, "r": 0}
        chosen: list[str] = []
        for entry in entries:
            klass = entry.split("|", 2)[1:2]
            if klass and klass[0][:1] in kept and kept[klass[0][:1]] < count:
                kept[klass[0][:1]] += 1
                chosen.append(entry)
        split = [_split(entry) for entry in chosen]
        async with _backend():
            agents |= await self._agents(
                _shard_of_user(uid), (p[5] for p in split if p and p[5] not in agents)
            )
        events = [_parse(parts, uid, agents) for parts in split]
        old = [*old_rows, *(_listed(e) for e in old_listed)]
        events += [_decode(entry_id, f) for entry_id, f in old]
        mine = [e for e in events if e is not None and e.uid == uid and e.at > now - self.ttl]
        return sorted(mine, key=_id_order, reverse=True)

    async def recent(
        self, *, limit: int = 100, kinds: Sequence[str] = (), before: str | None = None
    ) -> list[SecurityEvent]:
        """See :meth:`tokenward.events.EventSink.recent`: every stream of the operators'
        log read newest first and merged by id (events of one millisecond in different
        streams are in no particular order among themselves).

        Args:
            limit: at most this many events.
            kinds: only these kinds (``login.failed``, ``refresh.reused`` ...); all if empty.
            before: page backwards: only events older than this id.
        """
        out: list[tuple[SecurityEvent, int | None, str]] = []
        async with _backend():
            for shard in [*range(GLOBAL_SHARDS), None]:
                out += await self._recent_of(shard, limit, kinds, before)
            out.sort(key=lambda row: _id_order(row[0]), reverse=True)
            del out[limit:]
            # Agents only for the events kept: one MGET per stream they came from.
            refs: dict[int, list[str]] = {}
            for _, shard, ref in out:
                if shard is not None and ref:
                    refs.setdefault(shard, []).append(ref)
            agents = {shard: await self._agents(shard, wanted) for shard, wanted in refs.items()}
        return [
            replace(e, user_agent=agents[shard].get(ref, "")) if shard is not None and ref else e
            for e, shard, ref in out
        ]

    async def _recent_of(
        self, shard: int | None, limit: int, kinds: Sequence[str], before: str | None
    ) -> list[tuple[SecurityEvent, int | None, str]]:
        """Up to ``limit`` matching events of one stream (``None``: the 0.1 one), newest
        first, each with its stream and the reference of its agent in the stream's agent
        table (empty: the entry holds its agent, or none)."""
        stream = LEGACY_GLOBAL_STREAM if shard is None else global_key(shard)
        out: list[tuple[SecurityEvent, int | None, str]] = []
        rows: list[Any]
        top = "+" if before is None else f"({before}"
        while len(out) < limit:
            rows = await self.redis.xrevrange(stream, max=top, count=500)  # type: ignore[assignment]
            if not rows:
                break
            for entry_id, f in rows:
                event = _decode(entry_id, f)
                if event is not None and (not kinds or event.kind.value in kinds):
                    out.append((event, shard, f.get("ur", "")))
                    if len(out) == limit:
                        break
            top = f"({rows[-1][0]}"
        return out

    async def _agents(self, shard: int, refs: Iterable[str]) -> dict[str, str]:
        """The agents that stream ``shard``'s table holds for ``refs`` (empty ones skipped):
        one ``MGET`` in one slot, none for no reference."""
        wanted = sorted({ref for ref in refs if ref})
        if not wanted:
            return {}
        found: list[str | None]
        found = await self.redis.mget([agent_key(shard, ref) for ref in wanted])  # type: ignore[assignment]
        return {ref: ua for ref, ua in zip(wanted, found, strict=True) if ua}

    async def seen(self, uid: str, device: str, *, now: int, memory: int) -> bool:
        """Record ``device`` for ``uid``; return whether it was seen within ``memory``
        seconds (a device the 0.1 set knows counts as seen). Atomic: of two concurrent first
        logins from one device, one is new. :meth:`append` runs the same check with an event."""
        script, keys, args = self._seen_call(uid, device, now, memory)
        async with _backend():
            return bool(await script(keys=keys, args=args))

    def _seen_call(self, uid: str, device: str, now: int, memory: int) -> ScriptCall:
        _, _, devices = _user_keys(uid)
        _, _, old_devices = _legacy_keys(uid)
        return self._seen, [devices, old_devices], [device, now, memory, DEVICES_KEPT]
