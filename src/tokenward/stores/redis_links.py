"""The Redis :class:`~tokenward.email_flows.LinkStore`: the tokens of e-mailed links.

Only the SHA-256 digest of a token is stored, never the token. A user has at most one link
of each kind (``verify``, ``reset``, ``change``), in one key in the user's own hash slot (a
token starts with its user's id, see :func:`tokenward.email_flows.new_link_token`): no slot
of a Redis Cluster holds every user's links, and every operation is one key.

=============================  ======  ===================================================
key                            type    content and TTL
=============================  ======  ===================================================
``tw:{lk:<uid>}:<kind>``       hash    ``d``: the digest of the user's newest link of this
                                       kind; ``uid`` and the link's payload (a digest of
                                       the address, ...: never an address in the clear);
                                       TTL the link's lifetime
``tw:{u:<uid>}:verified``      string  ``1``: the user's address is verified (read by the
                                       rotation script of a refresh, in the sessions'
                                       slot); TTL the longest session lifetime, renewed
                                       by every login
=============================  ======  ===================================================

Issuing a link replaces the user's previous one of its kind (so it stops working), and
:meth:`RedisLinkStore.consume` takes it in one script: of two concurrent uses, exactly one
gets the payload. A wrong digest leaves the user's link in place: guessing cannot cancel
the link in someone's mailbox.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from tokenward.errors import Unavailable
from tokenward.stores.redis_client import RedisClient
from tokenward.stores.redis_sessions import verified_key

__all__ = ["RedisLinkStore"]

# KEYS: the user's link of this kind. ARGV: digest, ttl, then field, value pairs.
_ISSUE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: the user's link of this kind. ARGV: digest. Returns the payload as a flat list
# (without the digest), or nothing when the digest is not the user's newest link's.
_CONSUME = """
if redis.call('HGET', KEYS[1], 'd') ~= ARGV[1] then return {} end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return fields
"""


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable("link store unreachable") from exc


def _key(kind: str, uid: str) -> str:
    return f"tw:{{lk:{uid}}}:{kind}"


def _payload(fields: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k != "d"}


_verified_key = verified_key


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
        args: list[str | int] = [digest, ttl]
        for name, value in {**payload, "uid": uid}.items():
            args += [name, value]
        async with _backend():
            await self._issue(keys=[_key(kind, uid)], args=args)

    async def peek(self, kind: str, uid: str, digest: str) -> dict[str, str] | None:
        """See :meth:`tokenward.email_flows.LinkStore.peek`."""
        async with _backend():
            raw = await self.redis.hgetall(_key(kind, uid))
        fields = {str(k): str(v) for k, v in raw.items()}
        if not hmac.compare_digest(fields.get("d", ""), digest) or "uid" not in fields:
            return None
        return _payload(fields)

    async def consume(self, kind: str, uid: str, digest: str) -> dict[str, str] | None:
        """See :meth:`tokenward.email_flows.LinkStore.consume`."""
        async with _backend():
            flat = await self._consume(keys=[_key(kind, uid)], args=[digest])
        if not flat:
            return None
        return _payload({str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)})

    async def mark_verified(self, uid: str, *, ttl: int) -> None:
        """See :meth:`tokenward.email_flows.LinkStore.mark_verified`."""
        async with _backend():
            await self.redis.set(_verified_key(uid), "1", ex=ttl)
