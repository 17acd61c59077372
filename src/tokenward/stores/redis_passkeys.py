"""Redis back end of :mod:`tokenward.passkeys`: the WebAuthn challenges.

=====================================  ======  ==============================================
key                                    type    content and TTL
=====================================  ======  ==============================================
``tw:{u:<uid>}:pk:reg``                hash    the registration ceremony in progress (one
                                               per user): challenge, deadline; TTL its life
                                               + 60 s
``tw:{pk:s:<digest>}``                 hash    a passkey sign-in: challenge, deadline, the
                                               client's binding; TTL its life + 60 s
``tw:{mfa:c:<digest>}`` field ``wa``   hash    a login's MFA challenge answered with a
                                               passkey: the WebAuthn challenge sent
=====================================  ======  ==============================================

Every script touches one key (Redis Cluster works). The sign-in key holds the SHA-256
digest of the handle the client got, never the handle. Taking a challenge deletes it in
the same script that reads it: a second use finds nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from tokenward.errors import Unavailable
from tokenward.stores.redis_client import RedisClient

__all__ = ["RedisPasskeyStore"]

# KEYS: the challenge. ARGV: the binding ('' = none). Remove and return it, only to its own
# client (another client's attempt leaves it for its owner).
_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'bind') ~= ARGV[1] then return {'client'} end
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
table.insert(all, 1, 'ok')
return all
"""

# KEYS: the challenge. ARGV: ttl, then field, value pairs. Replaces the record whole.
_PUT = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# KEYS: a login's MFA challenge. ARGV: binding, WebAuthn challenge, now.
_ASK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local f = redis.call('HMGET', KEYS[1], 'bind', 'mode', 'exp', 'uid')
if f[1] ~= ARGV[1] then return {'client'} end
if tonumber(f[3]) <= tonumber(ARGV[3]) then return {'expired'} end
if f[2] ~= 'verify' then return {'mode'} end
redis.call('HSET', KEYS[1], 'wa', ARGV[2])
return {'ok', f[4]}
"""


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable("session store unreachable") from exc


def _registration_key(uid: str) -> str:
    return f"tw:{{u:{uid}}}:pk:reg"


def _signin_key(digest: str) -> str:
    return f"tw:{{pk:s:{digest}}}"


def _flat(reply: list[object]) -> dict[str, str]:
    flat = reply[1:]
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


class RedisPasskeyStore:
    """WebAuthn challenges in Redis.

    Args:
        redis: a client created with ``decode_responses=True``.
    """

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)
        self._put = redis.register_script(_PUT)
        self._ask = redis.register_script(_ASK)

    async def _store(self, key: str, fields: Mapping[str, str], ttl: int) -> None:
        args: list[str | int] = [ttl]
        for name, value in fields.items():
            args += [name, value]
        async with _backend():
            await self._put(keys=[key], args=args)

    async def put_registration(self, uid: str, fields: Mapping[str, str], *, ttl: int) -> None:
        """See :meth:`tokenward.passkeys.PasskeyStateStore.put_registration`."""
        await self._store(_registration_key(uid), fields, ttl)

    async def take_registration(self, uid: str) -> dict[str, str] | None:
        """See :meth:`tokenward.passkeys.PasskeyStateStore.take_registration`."""
        async with _backend():
            reply = await self._take(keys=[_registration_key(uid)], args=[""])
        return _flat(reply) if reply[0] == "ok" else None

    async def put_signin(self, digest: str, fields: Mapping[str, str], *, ttl: int) -> None:
        """See :meth:`tokenward.passkeys.PasskeyStateStore.put_signin`."""
        await self._store(_signin_key(digest), fields, ttl)

    async def take_signin(self, digest: str, *, binding: str) -> dict[str, str] | str:
        """See :meth:`tokenward.passkeys.PasskeyStateStore.take_signin`."""
        async with _backend():
            reply = await self._take(keys=[_signin_key(digest)], args=[binding])
        return _flat(reply) if reply[0] == "ok" else str(reply[0])

    async def ask_on_challenge(
        self, digest: str, *, binding: str, challenge: str, now: int
    ) -> tuple[str, str]:
        """See :meth:`tokenward.passkeys.PasskeyStateStore.ask_on_challenge`."""
        async with _backend():
            reply = await self._ask(keys=[f"tw:{{mfa:c:{digest}}}"], args=[binding, challenge, now])
        return (str(reply[0]), str(reply[1])) if reply[0] == "ok" else (str(reply[0]), "")
