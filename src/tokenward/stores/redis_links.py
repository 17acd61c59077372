"""The Redis :class:`~tokenward.email_flows.LinkStore`: the tokens of e-mailed links.

Only the SHA-256 digest of a token is stored, never the token. Per kind of link
(``verify``, ``reset``, ``change``) there are two keys per user, in one hash slot per kind
(``{lk:<kind>}``: these links are rare, so one slot per kind costs nothing and makes every
script single-slot on Redis Cluster):

=============================  ======  ===================================================
key                            type    content and TTL
=============================  ======  ===================================================
``tw:{lk:<kind>}:t:<digest>``  hash    the link's payload (``uid``, a digest of the
                                       address, ...: never an address in the clear);
                                       TTL the link's lifetime
``tw:{lk:<kind>}:u:<uid>``     string  the digest of the user's newest link of this kind;
                                       same TTL
``tw:verified:{<uid>}``        string  ``1``: the user's address is verified (read when a
                                       refresh issues an access token); TTL the longest
                                       session lifetime, renewed by every login
=============================  ======  ===================================================

A link is valid only while it is the user's newest of its kind (issuing one supersedes the
previous), and :meth:`RedisLinkStore.consume` takes it in one script: of two concurrent
uses, exactly one gets the payload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from tokenward.errors import Unavailable
from tokenward.stores.redis_client import RedisClient

__all__ = ["RedisLinkStore"]

# KEYS: user key, new token key, previous token key (or the new one again)
# ARGV: digest, ttl, then field, value pairs
_ISSUE = """
if KEYS[3] ~= KEYS[2] then redis.call('DEL', KEYS[3]) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: token key, user key   ARGV: digest
# Returns the payload as a flat list, or nothing when the token is not the user's newest.
_CONSUME = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {}
end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return fields
"""


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable("link store unreachable") from exc


def _keys(kind: str) -> tuple[str, str]:
    tag = f"tw:{{lk:{kind}}}"
    return f"{tag}:t:", f"{tag}:u:"


def _verified_key(uid: str) -> str:
    return f"tw:verified:{{{uid}}}"


class RedisLinkStore:
    """Link tokens in Redis (see the module docstring for the keys)."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._issue = redis.register_script(_ISSUE)
        self._consume = redis.register_script(_CONSUME)

    async def issue(
        self, kind: str, uid: str, digest: str, payload: Mapping[str, str], *, ttl: int
    ) -> None:
        """See :meth:`tokenward.email_flows.LinkStore.issue`."""
        tokens, users = _keys(kind)
        user_key = users + uid
        async with _backend():
            previous = str(await self.redis.get(user_key) or "")
            old_key = tokens + (previous if previous and previous != digest else digest)
            args: list[str | int] = [digest, ttl]
            for name, value in {**payload, "uid": uid}.items():
                args += [name, value]
            await self._issue(keys=[user_key, tokens + digest, old_key], args=args)

    async def peek(self, kind: str, digest: str) -> dict[str, str] | None:
        """See :meth:`tokenward.email_flows.LinkStore.peek`."""
        tokens, users = _keys(kind)
        async with _backend():
            raw = await self.redis.hgetall(tokens + digest)
            fields = {str(k): str(v) for k, v in raw.items()}
            if "uid" not in fields:
                return None
            if await self.redis.get(users + fields["uid"]) != digest:
                return None
        return fields

    async def consume(self, kind: str, uid: str, digest: str) -> dict[str, str] | None:
        """See :meth:`tokenward.email_flows.LinkStore.consume`."""
        tokens, users = _keys(kind)
        async with _backend():
            flat = await self._consume(keys=[tokens + digest, users + uid], args=[digest])
        if not flat:
            return None
        return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def mark_verified(self, uid: str, *, ttl: int) -> None:
        """See :meth:`tokenward.email_flows.LinkStore.mark_verified`."""
        async with _backend():
            await self.redis.set(_verified_key(uid), "1", ex=ttl)

    async def is_verified(self, uid: str) -> bool:
        """See :meth:`tokenward.email_flows.LinkStore.is_verified`."""
        async with _backend():
            return await self.redis.get(_verified_key(uid)) == "1"
