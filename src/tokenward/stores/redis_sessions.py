"""The Redis :class:`~tokenward.sessions.SessionStore`: one Lua script per verb.

Key layout (every key of a user carries the hash tag ``{u:<user id>}``, so each script
touches one hash slot and works unchanged on Redis Cluster):

=================================  ======  ==================================================
key                                type    TTL
=================================  ======  ==================================================
``tw:{u:<uid>}:s:<sid>``           hash    session: min(idle timeout, absolute limit - now)
``tw:{u:<uid>}:idx``               zset    sid -> last use; ``TOKENWARD_SESSION_MAX_TTL``
``tw:{u:<uid>}:ua``                hash    agent digest -> user agent; as the index
``tw:{u:<uid>}:ended``             list    recently ended sessions and why; 30 days
=================================  ======  ==================================================

Session hash fields: ``uca`` (when the user was created; no user id, since the key names the
user, and never the e-mail address: a record written before may still carry a ``uid``
field, which must match the key's, and one written by 0.1 an ``email`` field, which nothing
reads; the next rotation or re-key deletes both), ``created last abs exp`` (times: ``exp`` is
``min(last refresh + idle timeout, abs)``, the moment the key's TTL runs out), ``ip``,
``uk`` (64 bits of SHA-256 of the user agent, stored once per user in ``:ua``; a record
written by 0.1 holds the agent itself in ``ua``), ``csrf`` (the CSRF token's digest),
``cur`` (the current refresh secret's digest: a digest is the first 128 bits of SHA-256,
base64url, :func:`tokenward.refresh.stored_digest`), ``prev`` and ``rot`` (the
just-replaced digest and when), ``salt`` (of the last rotation), ``anc anc2`` (the first 60
bits of up to 12 older replaced digests, for theft detection, at most 60 characters a field
so the hash stays a listpack; records written before kept whole hex digests, 64-bit
ancestors up to ``anc3`` and, by 0.1, 128-bit ones in ``old``: every script reads them as
today's form and the next rotation or re-key rewrites them), ``gch`` (the grace chain: the
tokens before ``prev`` replaced less than the grace window ago, each with the salt that
replaced it and when; usually absent), ``rlw rln`` (refresh rate window), ``rlx`` (the
window whose first refusal was reported), ``fp`` (a digest of the user agent and address
prefix of the client that made the last rotation), ``gn`` (grace replays since that
rotation), ``gev`` (when a grace replay was last reported).
No field holds a usable token.

A record that cannot be read as a session (the key holds another type, or a field that
must be a number is not one) is *corrupt*: every script that meets one deletes it (and
announces it, like an ending, so no cache vouches for it) and answers ``corrupt``; the
caller treats the session as ended (401), never as a back-end failure (503).

Expiry is enforced twice, by the same numbers: Redis drops the key when its TTL runs out (no
clean-up job), and every script treats a record whose ``exp`` has passed (by the caller's
clock) as gone, so application time and Redis time can never disagree about a live session.

Every script that ends a session also ``PUBLISH``es its id on the invalidation channel in
the same atomic step, so no process can keep trusting it (a re-key publishes too: cached
states hold the CSRF digest it replaces). On a Cluster it ``SPUBLISH``es on the shard
channel of the user's slot instead (:mod:`tokenward.stores.redis_channels`).
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import functools
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.exceptions import RedisError, ResponseError

from tokenward.authn import AuthLevel
from tokenward.errors import Unavailable
from tokenward.sessions import (
    EndReason,
    RefreshUse,
    RotateOutcome,
    RotateResult,
    SessionRecord,
    SessionState,
)
from tokenward.stores.redis_channels import USER_PREFIX, channel_for_user, is_cluster
from tokenward.stores.redis_client import Durability, NotDurable, RedisClient, call_script

__all__ = ["ENDED_CHANNEL", "ENDED_TTL", "RedisSessionStore"]

log = logging.getLogger("tokenward.sessions")

ENDED_CHANNEL = "tw:ended"
#: How long the owner can see that (and why) a session ended.
ENDED_TTL = 30 * 86_400
ENDED_KEEP = 50
#: Older replaced refresh digests kept for theft detection (besides ``prev``).
ANCESTORS_KEPT = 12
#: Characters of a stored digest (``cur``, ``prev``, ``csrf``, a grace-chain entry's): the
#: first 128 bits of SHA-256 in base64url (:func:`tokenward.refresh.stored_digest`).
DIGEST_CHARS = 22
#: Characters kept of each ancestor digest: its first 60 bits. An ancestor is only
#: recognised, never accepted (presenting one ends the session), so a match by chance costs
#: an attacker about 2**56 tries against the refresh limits to end a session whose ids they
#: know. 12 x 10 characters fill two fields of 60; a field stays under 64 characters, the
#: longest value a small hash keeps in its compact listpack encoding
#: (``hash-max-listpack-value``): one value longer turns the whole record into a hash
#: table, about twice the memory.
ANCESTOR_CHARS = 10
_ANCESTORS_A_FIELD = 6
#: Tokens before ``prev`` still inside their grace window that keep the grace (see
#: ``gch``); past this many rotations within one grace window the oldest become theft.
GRACE_CHAIN_MAX = 8
#: One grace-chain entry: the digest (22 characters), the salt that replaced it (22
#: base64url characters) and when (10 digits).
_GRACE_ENTRY = DIGEST_CHARS + 22 + 10

#: Every field a well-formed record is checked on, in the order the Lua ``fields_ok`` reads
#: them (``f[1]`` ... ``f[18]``).
_WELL_FORMED_FIELDS = ", ".join(
    f"'{name}'"
    for name in (
        "uid", "csrf", "cur", "uca", "created", "last", "abs", "exp", "rot", "rlw", "rln",
        "gn", "gev", "prev", "salt", "gch", "ip", "ua", "uk",
    )
)  # fmt: skip

# Shared Lua: end one session (by sid) inside a script. KEYS[idx], KEYS[ended] are passed in.
_LUA_END = (
    """
-- A channel with a hash tag is a shard channel in this script's slot (Cluster: sharded
-- pub/sub stays on this shard); any other is classic pub/sub (stores/redis_channels.py).
local function announce(channel, sid)
  if string.find(channel, '{', 1, true) then
    redis.call('SPUBLISH', channel, sid)
  else
    redis.call('PUBLISH', channel, sid)
  end
end
local function end_session(prefix, idx, ended, sid, reason, now, channel)
  if redis.call('DEL', prefix .. sid) == 1 then
    -- pcall: a corrupt index (see index_fix) must not stop an ending
    redis.pcall('ZREM', idx, sid)
    announce(channel, sid)
    redis.call('LPUSH', ended, sid .. '|' .. reason .. '|' .. now)
    redis.call('LTRIM', ended, 0, $KEEP)
    redis.call('EXPIRE', ended, $TTL)
    return true
  end
  redis.pcall('ZREM', idx, sid)
  return false
end
-- A record that is not a session (another type, garbage fields): delete and announce it.
local function corrupt(key, idx, sid, channel)
  redis.call('DEL', key)
  redis.pcall('ZREM', idx, sid)
  announce(channel, sid)
  return {'corrupt'}
end
-- HMGET that answers nil (instead of failing the script) when the key is not a hash, and
-- 'corrupt' when it exists without its first field.
local function read(key, ...)
  local f = redis.pcall('HMGET', key, ...)
  if f.err then return nil end
  if not f[1] and redis.call('EXISTS', key) == 1 then return nil end
  return f
end
-- Digests were kept whole in hex before (64 characters; ancestors their first 16, 0.1's
-- 'old' its first 32, a grace-chain entry 96 with its 64): every script reads a record in
-- either form, as the form kept now (the first 128 bits in base64url, as Python's
-- urlsafe_b64encode without padding), and whatever rewrites a record writes it in that.
local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
local function b64_of_hex(h)
  local out, acc, bits = {}, 0, 0
  for i = 1, #h do
    local v = tonumber(string.sub(h, i, i), 16)
    if not v then return nil end
    acc, bits = acc * 16 + v, bits + 4
    if bits >= 6 then
      bits = bits - 6
      local c = math.floor(acc / 2 ^ bits)
      acc = acc - c * 2 ^ bits
      table.insert(out, string.sub(B64, c + 1, c + 1))
    end
  end
  if bits > 0 then
    local c = acc * 2 ^ (6 - bits)
    table.insert(out, string.sub(B64, c + 1, c + 1))
  end
  return table.concat(out)
end
-- A stored digest in today's form; a value that is neither form stays as it is (it
-- matches nothing a client can present).
local function digest(x)
  if x and #x == 64 then return b64_of_hex(string.sub(x, 1, 32)) or x end
  return x
end
-- The first $CHARS characters (60 bits) of the digest whose hex begins with 'h'; a run of
-- '?' (never a digest's) when 'h' is not hex.
local function head_of_hex(h)
  return string.sub(b64_of_hex(h) or string.rep('?', $CHARS), 1, $CHARS)
end
-- The grace chain in today's form. A chain written before has entries of 96 characters
-- (at most $CHAIN: no such length is a whole number of today's entries).
local function chain(g)
  if not g or #g == 0 or #g % 96 ~= 0 then return g end
  local out = {}
  for i = 1, #g, 96 do
    table.insert(out, digest(string.sub(g, i, i + 63)) .. string.sub(g, i + 64, i + 95))
  end
  return table.concat(out)
end
-- Every ancestor, newest first, $CHARS characters each: 'anc', 'anc2', 'anc3' as one
-- string (written before: 16 hex characters an entry, 64 a field, so a first field of a
-- length divisible by 16), then 0.1's 'old' (32 hex characters an entry).
local function lineage(anc, anc2, anc3, old)
  local all = (anc or '') .. (anc2 or '') .. (anc3 or '')
  local out = {all}
  if anc and #anc > 0 and #anc % 16 == 0 then
    out = {}
    for i = 1, #all - 15, 16 do table.insert(out, head_of_hex(string.sub(all, i, i + 15))) end
  end
  if old then
    for i = 1, #old - 31, 32 do table.insert(out, head_of_hex(string.sub(old, i, i + 15))) end
  end
  return table.concat(out)
end
local function numbers(f, ...)
  for _, i in ipairs({...}) do
    if f[i] and not tonumber(f[i]) then return false end
  end
  return true
end
-- The grace chain (in today's form) is whole entries, each ending in a 10-digit time.
local function chain_ok(g)
  if not g then return true end
  if #g % $ENTRY ~= 0 then return false end
  for i = 1, #g, $ENTRY do
    if not tonumber(string.sub(g, i + $ENTRY - 10, i + $ENTRY - 1)) then return false end
  end
  return true
end
-- Whether an existing key is a well-formed session of user 'uid': every field a script
-- reads is there and every number is a number. One definition for every script, so a
-- record is corrupt for all of them or for none.
-- The fields in the order fields_ok expects them (a script may read more after them).
local function fields_ok(f, uid)
  -- 'uid' (f[1]) is only in records written before it was dropped (the key names the user).
  if (f[1] and f[1] ~= uid) or not f[2] or not f[3] or not f[17] or not (f[18] or f[19]) then
    return false
  end
  for i = 4, 8 do
    if not tonumber(f[i]) then return false end
  end
  if not numbers(f, 9, 10, 11, 12, 13) then return false end
  if f[14] and not (f[9] and f[15]) then return false end
  return chain_ok(chain(f[16]))
end
local function well_formed(key, uid)
  local f = redis.pcall('HMGET', key, $WF)
  if f.err then return false end
  return fields_ok(f, uid)
end
-- The record in fields_ok's order plus the fields named, read once: the fields (the
-- digests 'csrf', 'cur', 'prev' and the grace chain in today's form), or nil when there is
-- no record, or false when it is corrupt.
local function load(key, uid, ...)
  local f = redis.pcall('HMGET', key, $WF, ...)
  if f.err then return false end
  if not f[3] then
    if redis.call('EXISTS', key) == 1 then return false end
    return nil
  end
  if not fields_ok(f, uid) then return false end
  f[2], f[3], f[14], f[16] = digest(f[2]), digest(f[3]), digest(f[14]), chain(f[16])
  return f
end
-- How a presented digest other than the current one relates to the session: 'prev' or
-- 'chain' (with its position in the grace chain) when inside its grace window, 'reused'
-- (a replaced token after its grace), or 'unknown'.
-- (All in today's form: 'anc' is the lineage.)
local function replaced(presented, prev, rot, gch, anc, now, grace)
  if presented == prev then
    if grace > 0 and now - tonumber(rot) <= grace then return 'prev', 0 end
    return 'reused', 0
  end
  if gch and grace > 0 then
    for i = 1, #gch - $ENTRY + 1, $ENTRY do
      if string.sub(gch, i, i + $DIGEST - 1) == presented then
        local at = tonumber(string.sub(gch, i + $ENTRY - 10, i + $ENTRY - 1))
        if now - at <= grace then return 'chain', i end
        break
      end
    end
  end
  local head = string.sub(presented, 1, $CHARS)
  local at = string.find(anc, head, 1, true)
  while at do
    if (at - 1) % $CHARS == 0 then return 'reused', 0 end
    at = string.find(anc, head, at + 1, true)
  end
  return 'unknown', 0
end
-- The ancestors once 'head' (a digest, or nil) joins the lineage, newest first, at most
-- $KEPT: 'anc' and 'anc2' ($PER of $CHARS characters each at most, see ANCESTOR_CHARS).
local function ancestors(head, chain)
  if head then chain = string.sub(head, 1, $CHARS) .. chain end
  chain = string.sub(chain, 1, $CHARS * $KEPT)
  local n = $CHARS * $PER
  return {string.sub(chain, 1, n), string.sub(chain, n + 1, 2 * n)}
end
-- 'anc3': only in records written before (see lineage)
local ANCESTOR_FIELDS = {'anc', 'anc2', 'anc3'}
-- Adds the ancestor fields to write to 'set' and those to delete ('had' shows what the
-- record holds) to 'gone', for the script's one HSET and one HDEL.
local function store_ancestors(parts, had, set, gone)
  for i, name in ipairs(ANCESTOR_FIELDS) do
    local part = parts[i] or ''
    if part ~= '' then
      table.insert(set, name)
      table.insert(set, part)
    elseif had[i] then
      table.insert(gone, name)
    end
  end
end
""".replace("$KEEP", str(ENDED_KEEP - 1))
    .replace("$WF", _WELL_FORMED_FIELDS)
    .replace("$TTL", str(ENDED_TTL))
    .replace("$ENTRY", str(_GRACE_ENTRY))
    .replace("$CHARS", str(ANCESTOR_CHARS))
    .replace("$KEPT", str(ANCESTORS_KEPT))
    .replace("$PER", str(_ANCESTORS_A_FIELD))
    .replace("$DIGEST", str(DIGEST_CHARS))
    .replace("$CHAIN", str(GRACE_CHAIN_MAX))
)

_CREATE = (
    _LUA_END
    + """
local sid, ttl, max, ittl, now, channel = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), ARGV[5], ARGV[6]
local uid, uk, agent, vttl = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #sid)
redis.call('HSET', KEYS[1], unpack(ARGV, 11))
redis.call('EXPIRE', KEYS[1], ttl)
-- The user's "e-mail verified" marker, which refreshes read for the claim, renewed so
-- that it outlives this session (in this script: a login is one round trip fewer).
if vttl > 0 then redis.call('SET', KEYS[5], '1', 'EX', vttl) end
redis.call('ZADD', KEYS[2], now, sid)
-- forget sessions that have expired: they must not count against the limit
local agents = {[uk] = true}
for _, s in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local r = redis.pcall('HMGET', prefix .. s, 'exp', 'uk')
  local e = (not r.err) and r[1]
  if r.err or (e and not well_formed(prefix .. s, uid)) then
    corrupt(prefix .. s, KEYS[2], s, channel)
  elseif not e or tonumber(e) <= tonumber(now) then
    redis.call('DEL', prefix .. s)
    redis.call('ZREM', KEYS[2], s)
  elseif r[2] then
    agents[r[2]] = true
  end
end
-- The user's agents, each stored once, under the digest its sessions hold ('uk'), in
-- pieces of at most 64 characters ('<uk>', '<uk>.1' ...: the table stays a listpack): kept
-- as long as the index (past every session's absolute limit), pruned of agents no live
-- session names. Anything but a hash there is replaced.
if uk ~= '' then
  local pieces = {uk, string.sub(agent, 1, 64)}
  for i = 1, math.floor((#agent - 1) / 64) do
    table.insert(pieces, uk .. '.' .. i)
    table.insert(pieces, string.sub(agent, 64 * i + 1, 64 * i + 64))
  end
  local r = redis.pcall('HSET', KEYS[4], unpack(pieces))
  if type(r) == 'table' and r.err then
    redis.call('DEL', KEYS[4])
    redis.call('HSET', KEYS[4], unpack(pieces))
  end
  for _, name in ipairs(redis.call('HKEYS', KEYS[4])) do
    if not agents[string.sub(name, 1, 16)] then redis.call('HDEL', KEYS[4], name) end
  end
  if redis.call('TTL', KEYS[4]) < ittl then redis.call('EXPIRE', KEYS[4], ittl) end
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
local uid, fp, replays, every = ARGV[12], ARGV[13], tonumber(ARGV[14]), tonumber(ARGV[15])
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #sid)
-- One read of every field (fields_ok's 19, then old rlx fp email anc anc2 anc3), checked.
local f = load(KEYS[1], uid, 'old', 'rlx', 'fp', 'email', 'anc', 'anc2', 'anc3')
if f == false then return corrupt(KEYS[1], KEYS[2], sid, channel) end
if not f then return {'missing'} end
local lineage_now = lineage(f[24], f[25], f[26], f[20])
local exp = tonumber(f[8])
if exp <= now then return {'missing'} end
if csrf ~= '' and csrf ~= f[2] then return {'csrf'} end
local state = {uid, f[4], f[2], f[5]}
-- What the access token needs besides the record (the user's verified address, the
-- session's second-factor level): read here, so a refresh stays one round trip.
for i = 4, #KEYS do table.insert(state, redis.call('GET', KEYS[i]) or '') end
if presented == f[3] then
  local ttl = math.min(idle, tonumber(f[7]) - now)
  if ttl <= 0 then return {'missing'} end
  local rlw, rln = tonumber(f[10]) or 0, tonumber(f[11]) or 0
  if now - rlw >= window then rlw, rln = now, 0 end
  if rln >= limit then
    -- 'rlx' remembers the window whose first refusal was reported (one event per burst)
    local first = f[21] ~= tostring(rlw)
    if first then redis.call('HSET', KEYS[1], 'rlx', rlw) end
    return {'limited', tostring(rlw + window - now), first and '1' or '0'}
  end
  local parts = ancestors(f[14], lineage_now)
  -- The grace chain: the token leaving 'prev' keeps its grace (with the salt that replaced
  -- it) if it was replaced less than the grace ago, and so do the entries after it that are
  -- still inside theirs. Newest first, so the first one too old ends the chain.
  local gch = ''
  if f[14] and grace > 0 and now - tonumber(f[9]) <= grace then
    gch = f[14] .. f[15] .. string.format('%010d', tonumber(f[9]))
    local rest = f[16] or ''
    for i = 1, #rest - $ENTRY + 1, $ENTRY do
      if #gch >= $ENTRY * $CHAIN then break end
      if now - tonumber(string.sub(rest, i + $ENTRY - 10, i + $ENTRY - 1)) > grace then break end
      gch = gch .. string.sub(rest, i, i + $ENTRY - 1)
    end
  end
  -- 'email' and 'old': written by 0.1 ('email' is personal data no script reads; 'old' is
  -- now in 'anc'); 'uid': written before the key alone named the user
  local gone = {}
  if f[23] then table.insert(gone, 'email') end
  if f[1] then table.insert(gone, 'uid') end
  if f[20] then table.insert(gone, 'old') end
  if f[16] and gch == '' then table.insert(gone, 'gch') end
  local set = {'cur', successor, 'prev', presented, 'salt', salt, 'rot', now, 'last', now,
    'exp', now + ttl, 'rlw', rlw, 'rln', rln + 1, 'fp', fp, 'gn', 0, 'csrf', f[2]}
  if gch ~= '' then table.insert(set, 'gch'); table.insert(set, gch) end
  store_ancestors(parts, {f[24], f[25], f[26]}, set, gone)
  if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
  redis.call('HSET', KEYS[1], unpack(set))
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], now, sid)
  -- The index may have expired (its TTL is counted in whole seconds from the latest login,
  -- the session's from this refresh): the ZADD then made a new one, with no TTL.
  if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end
  return {'rotated', tostring(ttl), '0', state}
end
local kind, at = replaced(presented, f[14], f[9], f[16], lineage_now, now, grace)
if kind == 'prev' or kind == 'chain' then
  -- A grace replay hands out the current token: only to the client that rotated (a tab of
  -- the same browser, a retry), and only a few times per rotation. Anything else means a
  -- second holder of the session's tokens, which is theft.
  local gn = tonumber(f[12]) or 0
  local why = nil
  if f[22] and f[22] ~= '' and fp ~= '' and f[22] ~= fp then
    why = 'client'
  elseif gn >= replays then
    why = 'replays'
  end
  if why then
    end_session(prefix, KEYS[2], KEYS[3], sid, 'refresh-reused', now, channel)
    return {'reused', why}
  end
  local report = now - (tonumber(f[13]) or 0) >= every
  if report then
    redis.call('HSET', KEYS[1], 'gn', gn + 1, 'gev', now)
  else
    redis.call('HSET', KEYS[1], 'gn', gn + 1)
  end
  local out = {'grace', tostring(exp - now), report and '1' or '0', state}
  if kind == 'chain' then
    -- Through the salts from the presented token to the current one.
    for j = at, 1, -$ENTRY do
      table.insert(out, string.sub(f[16], j + $DIGEST, j + $DIGEST + 21))
    end
  end
  table.insert(out, f[15])
  return out
end
if kind == 'reused' then
  end_session(prefix, KEYS[2], KEYS[3], sid, 'refresh-reused', now, channel)
  return {'reused', 'late'}
end
return {'unknown'}
""".replace("$ENTRY", str(_GRACE_ENTRY))
    .replace("$CHAIN", str(GRACE_CHAIN_MAX))
    .replace("$DIGEST", str(DIGEST_CHARS))
)

_GET = (
    _LUA_END
    + """
local now, uid, sid, channel = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local f = load(KEYS[1], uid)
if f == false then return corrupt(KEYS[1], KEYS[2], sid, channel) end
if not f then return false end
if tonumber(f[8]) <= now then return false end
return {uid, f[4], f[2], f[5], f[8]}
"""
)

# Judge a refresh token presented to end its session (logout, a re-login replacing it). The
# current token, or a replaced one inside its grace, is 'valid' (and ends the session with
# the reason given, if any); a replaced one after its grace is theft, as for a refresh.
_END_BY_REFRESH = (
    _LUA_END
    + """
local sid, presented, csrf, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local grace, reason, channel, uid = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #sid)
local f = read(KEYS[1], 'cur', 'prev', 'rot', 'csrf', 'exp', 'old', 'gch', 'uid', 'anc', 'anc2',
  'anc3')
if not f or (f[1] and not well_formed(KEYS[1], uid)) then
  return corrupt(KEYS[1], KEYS[2], sid, channel)
end
if not f[1] then return {'missing'} end
if tonumber(f[5]) <= now then return {'missing'} end
if csrf ~= '' and csrf ~= digest(f[4]) then return {'csrf'} end
local kind = 'current'
if presented ~= digest(f[1]) then
  local anc = lineage(f[9], f[10], f[11], f[6])
  kind = replaced(presented, digest(f[2]), f[3], chain(f[7]), anc, now, grace)
end
if kind == 'unknown' then return {'unknown'} end
if kind == 'reused' then
  end_session(prefix, KEYS[2], KEYS[3], sid, 'refresh-reused', now, channel)
  return {'reused'}
end
if reason ~= '' then end_session(prefix, KEYS[2], KEYS[3], sid, reason, now, channel) end
return {'valid'}
"""
)

# Give a live session new credentials: a fresh refresh token and CSRF token. Every token
# it had joins the ancestors (presented again: theft); no grace is left to any of them.
_REKEY = (
    _LUA_END
    + """
local sid, uid, cur, csrf, now, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  tonumber(ARGV[5]), ARGV[6]
local f = read(KEYS[1], 'cur', 'prev', 'old', 'exp', 'uid', 'uca', 'csrf', 'created', 'anc',
  'anc2', 'anc3')
if not f or (f[1] and not well_formed(KEYS[1], uid)) then
  return corrupt(KEYS[1], KEYS[2], sid, channel)
end
if not f[1] then return {'missing'} end
local exp = tonumber(f[4])
if exp <= now then return {'missing'} end
local parts = ancestors(digest(f[2]), lineage(f[9], f[10], f[11], f[3]))
parts = ancestors(digest(f[1]), table.concat(parts))
local set, gone = {'cur', cur, 'csrf', csrf, 'rot', 0}, {'prev', 'salt', 'gch', 'gn', 'fp',
  'email', 'old', 'uid'}
store_ancestors(parts, {f[9], f[10], f[11]}, set, gone)
redis.call('HDEL', KEYS[1], unpack(gone))
redis.call('HSET', KEYS[1], unpack(set))
announce(channel, sid)
local state = {uid, f[6], csrf, f[8]}
-- As a rotation does: the user's verified marker and the session's level (KEYS[3], [4]).
for i = 3, #KEYS do table.insert(state, redis.call('GET', KEYS[i]) or '') end
return {'rekeyed', tostring(exp - now), '0', state}
"""
)

# 1: ended now; 2: it had already ended for this reason (a retry); 0: not live. A retry
# rewrites the ended list's TTL: a write, so the WAIT after the script confirms that the
# first ending (before it in the replication stream) reached the replicas.
_END = (
    _LUA_END
    + """
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1])
if end_session(prefix, KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 1 end
local mark = ARGV[1] .. '|' .. ARGV[2] .. '|'
local rows = redis.pcall('LRANGE', KEYS[3], 0, -1)
if rows.err then return 0 end
for _, row in ipairs(rows) do
  if string.sub(row, 1, #mark) == mark then
    redis.call('EXPIRE', KEYS[3], $TTL)
    return 2
  end
end
return 0
""".replace("$TTL", str(ENDED_TTL))
)

# Takes back the count of a grace replay whose answer never reached the client (its WAIT
# was not confirmed: 503), so that a client retrying through a failover does not use up
# the replays its rotation allows. Only while the rotation it counted against (named by
# its salt) is still the latest.
_UNCOUNT = """
local f = redis.pcall('HMGET', KEYS[1], 'salt', 'gn')
if f.err or f[1] ~= ARGV[1] then return 0 end
local gn = tonumber(f[2])
if not gn or gn < 1 then return 0 end
redis.call('HSET', KEYS[1], 'gn', gn - 1)
return 1
"""

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

_LIST = (
    _LUA_END
    + """
local prefix, now, channel, uid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local agents = string.sub(prefix, 1, #prefix - 2) .. 'ua'
-- how each session authenticated (level_key), in the same slot: read here, one round trip
local levels = string.sub(prefix, 1, #prefix - 2) .. 'al:'
local out, bad = {}, {}
if index_fix(KEYS[1]) then table.insert(bad, '$REBUILT') end
for _, s in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  local f = read(prefix .. s, 'created', 'last', 'abs', 'ip', 'ua', 'exp', 'uk')
  if f and f[1] and not well_formed(prefix .. s, uid) then f = nil end
  if not f then
    corrupt(prefix .. s, KEYS[1], s, channel)
    table.insert(bad, s)
  elseif f[1] and tonumber(f[6]) > now then
    -- 'ua': the agent itself, in a record written by 0.1
    local agent = f[5]
    if not agent then
      local pieces = redis.pcall('HMGET', agents, f[7], f[7] .. '.1', f[7] .. '.2', f[7] .. '.3')
      agent = ''
      if not pieces.err then
        for _, piece in ipairs(pieces) do
          if not piece then break end
          agent = agent .. piece
        end
      end
    end
    local level = redis.pcall('GET', levels .. s)
    if type(level) ~= 'string' then level = '' end
    table.insert(out, {s, f[1], f[2], f[3], f[4], agent, f[6], level})
  end
end
return {out, bad}
"""
)


# The user's index must be a sorted set (or absent). Anything else was written over it:
# every script that reads or grows it first deletes it and rebuilds it from the user's
# session keys, found by a SCAN of the node (they all share the index's hash slot, so on a
# cluster they are all on the node running the script). The SCAN walks the node's whole
# keyspace inside the script, once per corruption: a pause proportional to the database,
# instead of 503 on every login, listing and logout-all for the life of the key. Sessions
# are put back with their last use, corrupt ones too (the next listing or login deletes
# them), and the index gets the longest TTL among them.
_INDEX_FIX = """
local function index_fix(idx)
  local t = redis.call('TYPE', idx)['ok']
  if t == 'zset' or t == 'none' then return false end
  redis.call('DEL', idx)
  local prefix = string.sub(idx, 1, #idx - 3) .. 's:'
  local pattern = string.gsub(prefix, '[%*%?%[%]\\\\]', '\\\\%0') .. '*'
  local cursor, ttl = '0', 0
  repeat
    local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = page[1]
    for _, key in ipairs(page[2]) do
      local last = redis.pcall('HGET', key, 'last')
      if type(last) ~= 'string' or not tonumber(last) then last = 0 end
      redis.call('ZADD', idx, last, string.sub(key, #prefix + 1))
      ttl = math.max(ttl, redis.call('TTL', key))
    end
  until cursor == '0'
  if redis.call('EXISTS', idx) == 1 then redis.call('EXPIRE', idx, ttl > 0 and ttl or $TTL) end
  return true
end
""".replace("$TTL", str(ENDED_TTL))
#: First element of a script's reply (or an entry of the listing's "bad" list) when it
#: rebuilt the user's index; :func:`_rebuilt` logs it and unwraps the reply.
INDEX_REBUILT = "index-rebuilt"


def _indexed(script: str, idx: int) -> str:
    """``script`` (``_LUA_END`` + a body) with the body run after ``index_fix(KEYS[idx])``;
    a rebuild wraps the reply as ``{INDEX_REBUILT, reply}``."""
    assert script.startswith(_LUA_END)  # noqa: S101 - how every script here is built
    body = script[len(_LUA_END) :]
    return (
        _LUA_END
        + _INDEX_FIX
        + "local function main()\n"
        + body
        + "\nend\n"
        + f"local fixed = index_fix(KEYS[{idx}])\n"
        + "local reply = main()\n"
        + f"if fixed then return {{'{INDEX_REBUILT}', reply}} end\n"
        + "return reply\n"
    )


_CREATE = _indexed(_CREATE, 2)
_ROTATE = _indexed(_ROTATE, 2)
_GET = _indexed(_GET, 2)
_END_BY_REFRESH = _indexed(_END_BY_REFRESH, 2)
_REKEY = _indexed(_REKEY, 2)
_END_ALL = _indexed(_END_ALL, 1)
_LIST = _LUA_END + _INDEX_FIX + _LIST[len(_LUA_END) :].replace("$REBUILT", INDEX_REBUILT)


def _rebuilt(uid: str, reply: Any) -> Any:
    """A script's reply, unwrapped (and the rebuild logged) if it rebuilt the index."""
    if isinstance(reply, list) and reply[:1] == [INDEX_REBUILT]:
        _index_rebuilt(uid)
        return reply[1] if len(reply) > 1 else None
    return reply


def _index_rebuilt(uid: str) -> None:
    # Once per corruption: the script that met it has rebuilt it.
    log.warning("corrupt session index deleted and rebuilt from the user's sessions (user %s)", uid)


def verified_key(uid: str) -> str:
    """The user's "address verified" marker (:mod:`tokenward.stores.redis_links`), in the
    user's slot so that a rotation reads it in its own script."""
    return f"tw:{{u:{uid}}}:verified"


def level_key(uid: str, sid: str) -> str:
    """How session ``sid`` authenticated, when not by a password alone
    (:mod:`tokenward.stores.redis_mfa`), in the user's slot for the same reason."""
    return f"tw:{{u:{uid}}}:al:{sid}"


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
        durability: what every writing script waits for before it counts as done
            (``TOKENWARD_REDIS_WAIT``); nothing by default.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        channel: str = ENDED_CHANNEL,
        durability: Durability | None = None,
    ) -> None:
        self.redis = redis
        self.channel = channel
        self._sharded = is_cluster(redis)
        self.durable = durability or Durability()
        self._create = redis.register_script(_CREATE)
        self._rotate = redis.register_script(_ROTATE)
        self._get = redis.register_script(_GET)
        self._end_by_refresh = redis.register_script(_END_BY_REFRESH)
        self._rekey = redis.register_script(_REKEY)
        self._end = redis.register_script(_END)
        self._end_all = redis.register_script(_END_ALL)
        self._uncount = redis.register_script(_UNCOUNT)
        self._list = redis.register_script(_LIST)

    async def announce_user(self, uid: str) -> None:
        """Tell every process that user ``uid``'s profile changed (their profile caches
        drop it), on the channel of the user's slot, as endings are announced.

        Raises:
            Unavailable: Redis did not answer.
        """
        command = "SPUBLISH" if self._sharded else "PUBLISH"
        try:
            await self.redis.execute_command(command, self._channel(uid), USER_PREFIX + uid)  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            raise Unavailable("session store unreachable") from exc

    def _channel(self, uid: str) -> str:
        # On a Cluster the script may only publish in its own slot: the user's shard channel.
        return channel_for_user(self.channel, uid) if self._sharded else self.channel

    async def create(
        self,
        record: SessionRecord,
        state: SessionState,
        *,
        refresh_digest: str,
        ttl: int,
        max_sessions: int,
        index_ttl: int,
        verified_ttl: int = 0,
    ) -> list[str]:
        """See :meth:`tokenward.sessions.SessionStore.create`."""
        prefix, idx, ended = _keys(record.uid)
        agent = _agent_digest(record.user_agent)
        fields: list[str | int] = [
            "uca", state.user_created_at,
            "csrf", state.csrf_digest, "created", record.created_at, "last", record.last_used_at,
            "abs", record.absolute_expires_at, "ip", record.ip, "uk", agent,
            "cur", refresh_digest, "rot", 0, "exp", state.expires_at,
        ]  # fmt: skip
        args: list[str | int] = [
            record.sid, ttl, max_sessions, index_ttl, record.created_at, self._channel(record.uid),
            record.uid, agent, record.user_agent, verified_ttl, *fields,
        ]  # fmt: skip
        keys = [prefix + record.sid, idx, ended, idx[:-3] + "ua", verified_key(record.uid)]
        async with _backend():
            evicted = await self.durable.run(self._create, keys=keys, args=args)
        return list(_rebuilt(record.uid, evicted))

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
        client: str = "",
        grace_replays: int = 32,
        report_every: int = 3600,
    ) -> RotateResult:
        """See :meth:`tokenward.sessions.SessionStore.rotate`."""
        prefix, idx, ended = _keys(uid)
        args: list[str | int] = [
            sid, presented_digest, salt, successor_digest, csrf_digest or "", now, grace,
            idle_ttl, rate_limit, rate_window, self._channel(uid), uid, client, grace_replays,
            report_every,
        ]  # fmt: skip
        async with _backend():
            try:
                reply = await self.durable.run(
                    self._rotate,
                    keys=[prefix + sid, idx, ended, verified_key(uid), level_key(uid, sid)],
                    args=args,
                )
            except NotDurable as exc:
                if isinstance(exc.reply, list) and exc.reply[:1] == ["grace"]:
                    with contextlib.suppress(RedisError, OSError):
                        await self._uncount(keys=[prefix + sid], args=[exc.reply[-1]])
                raise
        reply = _rebuilt(uid, reply)
        outcome = RotateOutcome(reply[0])
        if outcome is RotateOutcome.LIMITED:
            return RotateResult(outcome, retry_after=int(reply[1]), first_refusal=reply[2] == "1")
        if outcome is RotateOutcome.REUSED:
            return RotateResult(outcome, why=str(reply[1]))
        if outcome is RotateOutcome.CORRUPT:
            _corrupt(uid, sid)
        if outcome in (RotateOutcome.ROTATED, RotateOutcome.GRACE):
            return _carried(outcome, reply, now)
        return RotateResult(outcome)

    async def get(self, uid: str, sid: str, *, now: int) -> SessionState | None:
        """See :meth:`tokenward.sessions.SessionStore.get`."""
        prefix, idx, _ = _keys(uid)
        async with _backend():
            reply = await call_script(
                self._get, keys=[prefix + sid, idx], args=[now, uid, sid, self._channel(uid)]
            )
        reply = _rebuilt(uid, reply)
        if not reply:
            return None
        if reply == ["corrupt"]:
            _corrupt(uid, sid)
            return None
        return _state(reply[:4], int(reply[4]))

    async def end_by_refresh(
        self,
        uid: str,
        sid: str,
        *,
        presented_digest: str,
        csrf_digest: str | None,
        reason: EndReason | None,
        now: int,
        grace: int,
    ) -> RefreshUse:
        """See :meth:`tokenward.sessions.SessionStore.end_by_refresh`."""
        prefix, idx, ended = _keys(uid)
        args: list[str | int] = [
            sid, presented_digest, csrf_digest or "", now, grace,
            "" if reason is None else reason.value, self._channel(uid), uid,
        ]  # fmt: skip
        async with _backend():
            reply = await self.durable.run(
                self._end_by_refresh, keys=[prefix + sid, idx, ended], args=args
            )
        reply = _rebuilt(uid, reply)
        outcome = RefreshUse(reply[0])
        if outcome is RefreshUse.CORRUPT:
            _corrupt(uid, sid)
        return outcome

    async def rekey(
        self, uid: str, sid: str, *, refresh_digest: str, csrf_digest: str, now: int
    ) -> RotateResult:
        """See :meth:`tokenward.sessions.SessionStore.rekey`."""
        prefix, idx, _ = _keys(uid)
        args: list[str | int] = [sid, uid, refresh_digest, csrf_digest, now, self._channel(uid)]
        async with _backend():
            reply = await self.durable.run(
                self._rekey,
                keys=[prefix + sid, idx, verified_key(uid), level_key(uid, sid)],
                args=args,
            )
        reply = _rebuilt(uid, reply)
        if reply[0] == "corrupt":
            _corrupt(uid, sid)
            return RotateResult(RotateOutcome.CORRUPT)
        if reply[0] != "rekeyed":
            return RotateResult(RotateOutcome.MISSING)
        return _carried(RotateOutcome.ROTATED, reply, now)

    async def end(self, uid: str, sid: str, reason: EndReason, *, now: int) -> bool | None:
        """See :meth:`tokenward.sessions.SessionStore.end`."""
        prefix, idx, ended = _keys(uid)
        async with _backend():
            done = await self.durable.run(
                self._end,
                keys=[prefix + sid, idx, ended],
                args=[sid, reason.value, now, self._channel(uid)],
            )
        return None if int(done) == 2 else bool(done)

    async def end_all(
        self, uid: str, *, keep: str | None, reason: EndReason, now: int
    ) -> list[str]:
        """See :meth:`tokenward.sessions.SessionStore.end_all`."""
        prefix, idx, ended = _keys(uid)
        async with _backend():
            done = await self.durable.run(
                self._end_all,
                keys=[idx, ended],
                args=[prefix, keep or "", reason.value, now, self._channel(uid)],
            )
        return list(_rebuilt(uid, done))

    async def list(self, uid: str, *, now: int) -> list[SessionRecord]:
        """See :meth:`tokenward.sessions.SessionStore.list`."""
        prefix, idx, _ = _keys(uid)
        async with _backend():
            rows, bad = await self._list(keys=[idx], args=[prefix, now, self._channel(uid), uid])
        for sid in bad:
            if sid == INDEX_REBUILT:
                _index_rebuilt(uid)
            else:
                _corrupt(uid, str(sid))
        return [_record(uid, row) for row in rows]

    async def matches_refresh(self, uid: str, sid: str, digest: str) -> bool:
        """See :meth:`tokenward.sessions.SessionStore.matches_refresh`."""
        prefix, _, _ = _keys(uid)
        try:
            async with _backend():
                found = await self.redis.hmget(prefix + sid, ["cur", "prev"])
        except Unavailable as exc:
            if _wrong_type(exc):
                return False  # not a session record: nothing matches it
            raise
        return any(isinstance(d, str) and hmac.compare_digest(_today(d), digest) for d in found)

    async def ended(self, uid: str) -> builtins.list[tuple[str, str, int]]:
        """Recently ended sessions of ``uid`` as ``(sid, reason, ended_at)``, newest first."""
        _, _, ended = _keys(uid)
        try:
            async with _backend():
                rows = await self.redis.lrange(ended, 0, -1)
        except Unavailable as exc:
            if _wrong_type(exc):
                return []  # overwritten with something else: nothing to show, not a 503
            raise
        out: list[tuple[str, str, int]] = []
        for row in rows:
            sid, reason, at = [*str(row).split("|"), "", "", ""][:3]
            if sid and reason and at.isdigit():
                out.append((sid, reason, int(at)))
        return out


@functools.lru_cache(maxsize=1024)
def _agent_digest(user_agent: str) -> str:
    """Names a user agent in the user's table of agents: 64 bits of SHA-256 (collisions
    among one user's few agents would only show a session under the other's name)."""
    if not user_agent:
        return ""
    return hashlib.sha256(user_agent.encode()).hexdigest()[:16]


def _today(stored: str) -> str:
    """A stored digest in the form kept now: one written before is the whole SHA-256 in hex,
    of which the first 128 bits are kept now (as the scripts' ``digest`` reads it)."""
    if len(stored) == 64:
        try:
            return base64.urlsafe_b64encode(bytes.fromhex(stored[:32])).rstrip(b"=").decode()
        except ValueError:
            return stored
    return stored


def _corrupt(uid: str, sid: str) -> None:
    # Once per record: the script that found it has deleted it.
    log.warning(
        "corrupt session record deleted (user %s, session %s); the session is ended", uid, sid
    )


def _wrong_type(exc: Unavailable) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ResponseError) and str(cause).startswith("WRONGTYPE")


def _carried(outcome: RotateOutcome, reply: Sequence[Any], now: int) -> RotateResult:
    """A rotation's or re-key's ``{outcome, ttl, report, state, salts...}`` reply, its state
    followed by the user's verified marker and the session's level (read in the script)."""
    ttl = int(reply[1])
    fields = reply[3]
    return RotateResult(
        outcome,
        state=_state(fields[:4], now + ttl),
        ttl=ttl,
        salts=tuple(str(x) for x in reply[4:]),
        report=reply[2] == "1",
        email_verified=fields[4] == "1",
        level=str(fields[5]),
    )


def _state(fields: Sequence[str], expires_at: int) -> SessionState:
    uid, uca, csrf, created = fields
    return SessionState(
        uid=uid,
        user_created_at=int(uca),
        csrf_digest=csrf,
        created_at=int(created),
        expires_at=expires_at,
    )


def _record(uid: str, row: Sequence[str]) -> SessionRecord:
    sid, created, last, absolute, ip, ua, expires, level = row
    return SessionRecord(
        sid=sid,
        uid=uid,
        created_at=int(created),
        last_used_at=int(last),
        expires_at=int(expires),
        absolute_expires_at=int(absolute),
        ip=ip,
        user_agent=ua,
        level=AuthLevel.decode(level) if level else None,
    )
