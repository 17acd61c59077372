"""The Redis :class:`~tokenward.sessions.SessionStore`: one Lua script per verb.

Key layout (every key of a user carries the hash tag ``{u:<user id>}``, so each script
touches one hash slot and works unchanged on Redis Cluster):

=================================  ======  ==================================================
key                                type    TTL
=================================  ======  ==================================================
``tw:{u:<uid>}:s:<sid>``           hash    session: min(idle timeout, absolute limit - now)
``tw:{u:<uid>}:idx``               zset    sid -> last use; ``TOKENWARD_SESSION_MAX_TTL``
``tw:{u:<uid>}:ended``             list    recently ended sessions and why; 30 days
=================================  ======  ==================================================

Session hash fields: ``uid email uca`` (user), ``created last abs exp`` (times: ``exp`` is
``min(last refresh + idle timeout, abs)``, the moment the key's TTL runs out), ``ip ua``,
``csrf`` (SHA-256 of the CSRF token), ``cur`` (SHA-256 of the current refresh secret),
``prev`` and ``rot`` (the just-replaced digest and when), ``salt`` (of the last rotation),
``old`` (the first 128 bits of older replaced digests, for theft detection), ``gch`` (the
grace chain: the tokens before ``prev`` replaced less than the grace window ago, each with
the salt that replaced it and when; usually absent), ``rlw rln`` (refresh rate window),
``rlx`` (the window whose first refusal was reported).
No field holds a usable token.

Expiry is enforced twice, by the same numbers: Redis drops the key when its TTL runs out (no
clean-up job), and every script treats a record whose ``exp`` has passed (by the caller's
clock) as gone, so application time and Redis time can never disagree about a live session.

Every script that ends a session also ``PUBLISH``es its id on the invalidation channel in
the same atomic step, so no process can keep trusting it.
"""

from __future__ import annotations

import builtins
import hmac
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from redis.exceptions import RedisError, ResponseError

from tokenward.errors import Unavailable
from tokenward.sessions import (
    EndReason,
    RotateOutcome,
    RotateResult,
    SessionRecord,
    SessionState,
)
from tokenward.stores.redis_client import RedisClient

__all__ = ["ENDED_CHANNEL", "ENDED_TTL", "RedisSessionStore"]

ENDED_CHANNEL = "tw:ended"
#: How long the owner can see that (and why) a session ended.
ENDED_TTL = 30 * 86_400
ENDED_KEEP = 50
#: Older replaced refresh digests kept for theft detection (besides ``prev``).
ANCESTORS_KEPT = 16
#: Hex characters kept of each ancestor digest: 128 bits, as unguessable as the whole
#: digest for this purpose, half the memory (the ancestors are most of a session's bytes).
ANCESTOR_CHARS = 32
#: Tokens before ``prev`` still inside their grace window that keep the grace (see
#: ``gch``); past this many rotations within one grace window the oldest become theft.
GRACE_CHAIN_MAX = 8
#: One grace-chain entry: the full digest (64 hex), the salt that replaced it (22
#: base64url characters) and when (10 digits).
_GRACE_ENTRY = 96

# Shared Lua: end one session (by sid) inside a script. KEYS[idx], KEYS[ended] are passed in.
_LUA_END = """
local function end_session(prefix, idx, ended, sid, reason, now, channel)
  if redis.call('DEL', prefix .. sid) == 1 then
    redis.call('ZREM', idx, sid)
    redis.call('PUBLISH', channel, sid)
    redis.call('LPUSH', ended, sid .. '|' .. reason .. '|' .. now)
    redis.call('LTRIM', ended, 0, $KEEP)
    redis.call('EXPIRE', ended, $TTL)
    return true
  end
  redis.call('ZREM', idx, sid)
  return false
end
""".replace("$KEEP", str(ENDED_KEEP - 1)).replace("$TTL", str(ENDED_TTL))

_CREATE = (
    _LUA_END
    + """
local sid, ttl, max, ittl, now, channel = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), ARGV[5], ARGV[6]
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #sid)
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, sid)
-- forget sessions that have expired: they must not count against the limit
for _, s in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local e = tonumber(redis.call('HGET', prefix .. s, 'exp'))
  if not e or e <= tonumber(now) then
    redis.call('DEL', prefix .. s)
    redis.call('ZREM', KEYS[2], s)
  end
end
local evicted = {}
local excess = redis.call('ZCARD', KEYS[2]) - max
if excess > 0 then
  for _, s in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if excess <= 0 then break end
    if s ~= sid then
      end_session(prefix, KEYS[2], KEYS[3], s, 'session-limit', now, channel)
      table.insert(evicted, s)
      excess = excess - 1
    end
  end
end
if redis.call('TTL', KEYS[2]) < ittl then redis.call('EXPIRE', KEYS[2], ittl) end
return evicted
"""
)

_ROTATE = (
    _LUA_END
    + """
local sid, presented, salt, successor, csrf = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, grace, idle = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local limit, window, channel = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #sid)
local f = redis.call('HMGET', KEYS[1], 'cur', 'prev', 'rot', 'salt', 'abs', 'csrf', 'rlw',
  'rln', 'old', 'uid', 'email', 'uca', 'created', 'exp', 'gch', 'rlx')
if not f[1] then return {'missing'} end
local exp = tonumber(f[14]) or 0
if exp <= now then return {'missing'} end
if csrf ~= '' and csrf ~= f[6] then return {'csrf'} end
if presented == f[1] then
  local ttl = math.min(idle, tonumber(f[5]) - now)
  if ttl <= 0 then return {'missing'} end
  local rlw, rln = tonumber(f[7]) or 0, tonumber(f[8]) or 0
  if now - rlw >= window then rlw, rln = now, 0 end
  if rln >= limit then
    -- 'rlx' remembers the window whose first refusal was reported (one event per burst)
    local first = f[16] ~= tostring(rlw)
    if first then redis.call('HSET', KEYS[1], 'rlx', rlw) end
    return {'limited', tostring(rlw + window - now), first and '1' or '0'}
  end
  local old = f[9] or ''
  if f[2] then old = string.sub(string.sub(f[2], 1, $CHARS) .. old, 1, $CHARS * $KEPT) end
  -- The grace chain: the token leaving 'prev' keeps its grace (with the salt that replaced
  -- it) if it was replaced less than the grace ago, and so do the entries after it that are
  -- still inside theirs. Newest first, so the first one too old ends the chain.
  local gch = ''
  if f[2] and grace > 0 and now - tonumber(f[3]) <= grace then
    gch = f[2] .. f[4] .. string.format('%010d', tonumber(f[3]))
    local rest = f[15] or ''
    for i = 1, #rest - $ENTRY + 1, $ENTRY do
      if #gch >= $ENTRY * $CHAIN then break end
      if now - tonumber(string.sub(rest, i + 86, i + 95)) > grace then break end
      gch = gch .. string.sub(rest, i, i + $ENTRY - 1)
    end
  end
  if gch == '' then
    redis.call('HDEL', KEYS[1], 'gch')
  else
    redis.call('HSET', KEYS[1], 'gch', gch)
  end
  redis.call('HSET', KEYS[1], 'cur', successor, 'prev', presented, 'salt', salt, 'rot', now,
    'last', now, 'exp', now + ttl, 'rlw', rlw, 'rln', rln + 1, 'old', old)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], now, sid)
  -- The index may have expired (its TTL is counted in whole seconds from the latest login,
  -- the session's from this refresh): the ZADD then made a new one, with no TTL.
  if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end
  return {'rotated', tostring(ttl), f[10], f[11], f[12], f[6], f[13]}
end
local reused = false
if presented == f[2] then
  if grace > 0 and now - tonumber(f[3]) <= grace then
    return {'grace', tostring(exp - now), f[10], f[11], f[12], f[6], f[13], f[4]}
  end
  reused = true
elseif f[15] and grace > 0 then
  -- An older token still inside its grace: it gets the current successor too, through the
  -- salts from it to the current token (two tabs, one of which refreshed twice meanwhile).
  local g = f[15]
  for i = 1, #g - $ENTRY + 1, $ENTRY do
    if string.sub(g, i, i + 63) == presented then
      if now - tonumber(string.sub(g, i + 86, i + 95)) <= grace then
        local out = {'grace', tostring(exp - now), f[10], f[11], f[12], f[6], f[13]}
        for j = i, 1, -$ENTRY do table.insert(out, string.sub(g, j + 64, j + 85)) end
        table.insert(out, f[4])
        return out
      end
      break
    end
  end
end
if not reused and f[9] then
  local at = string.find(f[9], string.sub(presented, 1, $CHARS), 1, true)
  reused = at ~= nil and (at - 1) % $CHARS == 0
end
if reused then
  end_session(prefix, KEYS[2], KEYS[3], sid, 'refresh-reused', now, channel)
  return {'reused'}
end
return {'unknown'}
""".replace("$KEPT", str(ANCESTORS_KEPT))
    .replace("$CHARS", str(ANCESTOR_CHARS))
    .replace("$ENTRY", str(_GRACE_ENTRY))
    .replace("$CHAIN", str(GRACE_CHAIN_MAX))
)

_GET = """
local f = redis.call('HMGET', KEYS[1], 'uid', 'email', 'uca', 'csrf', 'created', 'exp')
if not f[1] or (tonumber(f[6]) or 0) <= tonumber(ARGV[1]) then return false end
return f
"""

_END = (
    _LUA_END
    + """
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1])
if end_session(prefix, KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 1 end
return 0
"""
)

_END_ALL = (
    _LUA_END
    + """
local prefix, keep, reason, now, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ended = {}
for _, s in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if s ~= keep and end_session(prefix, KEYS[1], KEYS[2], s, reason, now, channel) then
    table.insert(ended, s)
  end
end
return ended
"""
)

_LIST = """
local prefix, now = ARGV[1], tonumber(ARGV[2])
local out = {}
for _, s in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', prefix .. s, 'created', 'last', 'abs', 'ip', 'ua', 'exp')
  if f[1] and (tonumber(f[6]) or 0) > now then
    table.insert(out, {s, f[1], f[2], f[3], f[4], f[5], f[6]})
  end
end
return out
"""


def _keys(uid: str) -> tuple[str, str, str]:
    tag = f"tw:{{u:{uid}}}"
    return f"{tag}:s:", f"{tag}:idx", f"{tag}:ended"


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    """Map any Redis failure to :class:`Unavailable` (503): fail closed, change nothing."""
    try:
        yield
    except ResponseError as exc:
        raise Unavailable(f"session store refused the operation ({type(exc).__name__})") from exc
    except (RedisError, OSError) as exc:
        raise Unavailable("session store unreachable") from exc


class RedisSessionStore:
    """Sessions in Redis (or Valkey), implementing :class:`~tokenward.sessions.SessionStore`.

    Args:
        redis: a client created with ``decode_responses=True``.
        channel: the invalidation channel that ending scripts publish to.
    """

    def __init__(self, redis: RedisClient, *, channel: str = ENDED_CHANNEL) -> None:
        self.redis = redis
        self.channel = channel
        self._create = redis.register_script(_CREATE)
        self._rotate = redis.register_script(_ROTATE)
        self._get = redis.register_script(_GET)
        self._end = redis.register_script(_END)
        self._end_all = redis.register_script(_END_ALL)
        self._list = redis.register_script(_LIST)

    async def create(
        self,
        record: SessionRecord,
        state: SessionState,
        *,
        refresh_digest: str,
        ttl: int,
        max_sessions: int,
        index_ttl: int,
    ) -> list[str]:
        """See :meth:`tokenward.sessions.SessionStore.create`."""
        prefix, idx, ended = _keys(record.uid)
        fields: list[str | int] = [
            "uid", record.uid, "email", state.email, "uca", state.user_created_at,
            "csrf", state.csrf_digest, "created", record.created_at, "last", record.last_used_at,
            "abs", record.absolute_expires_at, "ip", record.ip, "ua", record.user_agent,
            "cur", refresh_digest, "rot", 0, "exp", state.expires_at,
        ]  # fmt: skip
        args: list[str | int] = [
            record.sid, ttl, max_sessions, index_ttl, record.created_at, self.channel, *fields,
        ]  # fmt: skip
        async with _backend():
            evicted = await self._create(keys=[prefix + record.sid, idx, ended], args=args)
        return list(evicted)

    async def rotate(
        self,
        uid: str,
        sid: str,
        *,
        presented_digest: str,
        salt: str,
        successor_digest: str,
        csrf_digest: str | None,
        now: int,
        grace: int,
        idle_ttl: int,
        rate_limit: int,
        rate_window: int,
    ) -> RotateResult:
        """See :meth:`tokenward.sessions.SessionStore.rotate`."""
        prefix, idx, ended = _keys(uid)
        args: list[str | int] = [
            sid, presented_digest, salt, successor_digest, csrf_digest or "", now, grace,
            idle_ttl, rate_limit, rate_window, self.channel,
        ]  # fmt: skip
        async with _backend():
            reply = await self._rotate(keys=[prefix + sid, idx, ended], args=args)
        outcome = RotateOutcome(reply[0])
        if outcome is RotateOutcome.LIMITED:
            return RotateResult(outcome, retry_after=int(reply[1]), first_refusal=reply[2] == "1")
        if outcome in (RotateOutcome.ROTATED, RotateOutcome.GRACE):
            ttl = int(reply[1])
            state = _state(reply[2:7], now + ttl)
            return RotateResult(
                outcome, state=state, ttl=ttl, salts=tuple(str(x) for x in reply[7:])
            )
        return RotateResult(outcome)

    async def get(self, uid: str, sid: str, *, now: int) -> SessionState | None:
        """See :meth:`tokenward.sessions.SessionStore.get`."""
        prefix, _, _ = _keys(uid)
        async with _backend():
            reply = await self._get(keys=[prefix + sid], args=[now])
        if not reply:
            return None
        return _state(reply[:5], int(reply[5]))

    async def end(self, uid: str, sid: str, reason: EndReason, *, now: int) -> bool:
        """See :meth:`tokenward.sessions.SessionStore.end`."""
        prefix, idx, ended = _keys(uid)
        async with _backend():
            done = await self._end(
                keys=[prefix + sid, idx, ended], args=[sid, reason.value, now, self.channel]
            )
        return bool(done)

    async def end_all(
        self, uid: str, *, keep: str | None, reason: EndReason, now: int
    ) -> list[str]:
        """See :meth:`tokenward.sessions.SessionStore.end_all`."""
        prefix, idx, ended = _keys(uid)
        async with _backend():
            done = await self._end_all(
                keys=[idx, ended], args=[prefix, keep or "", reason.value, now, self.channel]
            )
        return list(done)

    async def list(self, uid: str, *, now: int) -> list[SessionRecord]:
        """See :meth:`tokenward.sessions.SessionStore.list`."""
        prefix, idx, _ = _keys(uid)
        async with _backend():
            rows = await self._list(keys=[idx], args=[prefix, now])
        return [_record(uid, row) for row in rows]

    async def matches_refresh(self, uid: str, sid: str, digest: str) -> bool:
        """See :meth:`tokenward.sessions.SessionStore.matches_refresh`."""
        prefix, _, _ = _keys(uid)
        async with _backend():
            found = await self.redis.hmget(prefix + sid, ["cur", "prev"])
        return any(isinstance(d, str) and hmac.compare_digest(d, digest) for d in found)

    async def ended(self, uid: str) -> builtins.list[tuple[str, str, int]]:
        """Recently ended sessions of ``uid`` as ``(sid, reason, ended_at)``, newest first."""
        _, _, ended = _keys(uid)
        async with _backend():
            rows = await self.redis.lrange(ended, 0, -1)
        out: list[tuple[str, str, int]] = []
        for row in rows:
            sid, reason, at = str(row).split("|")
            out.append((sid, reason, int(at)))
        return out


def _state(fields: Sequence[str], expires_at: int) -> SessionState:
    uid, email, uca, csrf, created = fields
    return SessionState(
        uid=uid,
        email=email,
        user_created_at=int(uca),
        csrf_digest=csrf,
        created_at=int(created),
        expires_at=expires_at,
    )


def _record(uid: str, row: Sequence[str]) -> SessionRecord:
    sid, created, last, absolute, ip, ua, expires = row
    return SessionRecord(
        sid=sid,
        uid=uid,
        created_at=int(created),
        last_used_at=int(last),
        expires_at=int(expires),
        absolute_expires_at=int(absolute),
        ip=ip,
        user_agent=ua,
    )
