"""A corrupt session index is rebuilt on a real Redis Cluster too: the rebuild SCANs the
node running the script, which holds every key of the user's hash slot."""

from __future__ import annotations

import uuid

from tokenward.runtime import Tokenward
from tokenward.sessions import EndReason, UserRef

USERS = 8


async def test_a_corrupt_index_is_rebuilt_on_every_node(cluster_tw: Tokenward) -> None:
    """Users spread over the slots (so over the three masters), three sessions each, the
    index overwritten with a string: the listing shows all three, logout-all ends all three."""
    tw = cluster_tw
    now = tw.clock.now()
    for _ in range(USERS):
        user = UserRef(uuid.uuid4().hex, "c@example.com", 1)
        sids = {
            (await tw.sessions.open(user, ip="127.0.0.1", user_agent="t", now=now)).sid
            for _ in range(3)
        }
        idx = f"tw:{{u:{user.id}}}:idx"
        await tw.redis.set(idx, "garbage", ex=300)
        listed = await tw.sessions.list(user.id, current=None, now=now)
        assert {info.record.sid for info in listed} == sids
        assert await tw.redis.type(idx) == "zset"
        await tw.redis.set(idx, "garbage", ex=300)
        ended = await tw.sessions.end_all(user.id, keep=None, reason=EndReason.LOGOUT_ALL, now=now)
        assert set(ended) == sids
