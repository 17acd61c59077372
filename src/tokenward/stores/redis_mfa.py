"""Redis back end of :mod:`tokenward.mfa` and :mod:`tokenward.authn`.

=====================================  ======  ==============================================
key                                    type    content and TTL
=====================================  ======  ==============================================
``tw:{mfa:c:<digest>}``                hash    a login challenge (user, deadline, binding,
                                               attempts, sealed enrolment secret); TTL the
                                               challenge lifetime + 60 s
``tw:{u:<uid>}:mfa:step``              string  last accepted TOTP time step; TTL 120 s
``tw:{u:<uid>}:al:<sid>``              string  ``amr|auth_time|kind`` of a session opened
                                               with a second factor or stepped up (kind:
                                               ``totp``, ``recovery``; absent in older
                                               values); TTL the session's absolute lifetime
=====================================  ======  ==============================================

Every script touches one key, so all of it works on Redis Cluster; the user's keys share
the sessions' ``{u:<uid>}`` hash tag. The challenge key holds the SHA-256 digest of the
challenge, never the challenge itself. Deadlines are checked in app time by the caller;
TTLs only collect garbage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from tokenward.authn import AuthLevel
from tokenward.errors import Unavailable
from tokenward.stores.redis_client import RedisClient
from tokenward.stores.redis_sessions import level_key

__all__ = ["RedisMfaStore"]

# KEYS: the challenge. ARGV: the binding. Remove and return it, only to its own client.
_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('HGET', KEYS[1], 'bind') ~= ARGV[1] then return {'client'} end
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
table.insert(all, 1, 'ok')
return all
"""

# KEYS: the challenge. ARGV: binding, sealed secret (base64), now.
_PENDING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local f = redis.call('HMGET', KEYS[1], 'bind', 'mode', 'exp', 'uid', 'email')
if f[1] ~= ARGV[1] then return {'client'} end
if tonumber(f[3]) <= tonumber(ARGV[3]) then return {'expired'} end
if f[2] ~= 'enroll' then return {'mode'} end
-- A second call (another tab, a reload) gets the secret already shown, never a new one.
local shown = redis.call('HGET', KEYS[1], 'pending')
if shown then return {'ok', f[4], f[5], shown} end
redis.call('HSET', KEYS[1], 'pending', ARGV[2])
return {'ok', f[4], f[5], ARGV[2]}
"""

# KEYS: the step marker. ARGV: step, ttl. A step not later than the last accepted is a replay.
_ACCEPT = """
local last = tonumber(redis.call('GET', KEYS[1]))
local step = tonumber(ARGV[1])
if last and last >= step then return 0 end
redis.call('SET', KEYS[1], step, 'EX', tonumber(ARGV[2]))
return 1
"""

# KEYS: the challenge. ARGV: ttl, then field, value pairs. Replaces the record whole.
_PUT = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable("session store unreachable") from exc


def _challenge_key(digest: str) -> str:
    return f"tw:{{mfa:c:{digest}}}"


class RedisMfaStore:
    """Challenges, TOTP steps and session auth levels in Redis.

    Args:
        redis: a client created with ``decode_responses=True``.
    """

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)
        self._pending = redis.register_script(_PENDING)
        self._accept = redis.register_script(_ACCEPT)
        self._put = redis.register_script(_PUT)

    async def put_challenge(self, digest: str, fields: Mapping[str, str], *, ttl: int) -> None:
        """See :meth:`tokenward.mfa.MfaStateStore.put_challenge`."""
        args: list[str | int] = [ttl]
        for name, value in fields.items():
            args += [name, value]
        async with _backend():
            await self._put(keys=[_challenge_key(digest)], args=args)

    async def take_challenge(self, digest: str, *, binding: str) -> dict[str, str] | str:
        """See :meth:`tokenward.mfa.MfaStateStore.take_challenge`."""
        async with _backend():
            reply = await self._take(keys=[_challenge_key(digest)], args=[binding])
        if reply[0] != "ok":
            return str(reply[0])
        flat = reply[1:]
        return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}

    async def set_pending(
        self, digest: str, *, binding: str, pending: str, now: int
    ) -> tuple[str, str, str, str]:
        """See :meth:`tokenward.mfa.MfaStateStore.set_pending`."""
        async with _backend():
            reply = await self._pending(keys=[_challenge_key(digest)], args=[binding, pending, now])
        if reply[0] != "ok":
            return str(reply[0]), "", "", ""
        return "ok", str(reply[1]), str(reply[2]), str(reply[3])

    async def accept_step(self, uid: str, step: int, *, ttl: int) -> bool:
        """See :meth:`tokenward.mfa.MfaStateStore.accept_step`."""
        async with _backend():
            return bool(await self._accept(keys=[f"tw:{{u:{uid}}}:mfa:step"], args=[step, ttl]))

    async def forget_steps(self, uid: str) -> None:
        """See :meth:`tokenward.mfa.MfaStateStore.forget_steps`."""
        async with _backend():
            await self.redis.delete(f"tw:{{u:{uid}}}:mfa:step")

    async def get_level(self, uid: str, sid: str) -> AuthLevel | None:
        """See :meth:`tokenward.authn.AuthLevelStore.get_level`."""
        async with _backend():
            text = await self.redis.get(level_key(uid, sid))
        return None if text is None else AuthLevel.decode(str(text))

    async def put_level(self, uid: str, sid: str, level: AuthLevel, *, ttl: int) -> None:
        """See :meth:`tokenward.authn.AuthLevelStore.put_level`."""
        async with _backend():
            await self.redis.set(level_key(uid, sid), level.encode(), ex=ttl)
