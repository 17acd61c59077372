"""The sharded revocation feed through a master switch-over on a private 3+3 Cluster.

``CLUSTER FAILOVER`` on a replica hands its master's slots over; the demoted master
unsubscribes their shard channels (``sunsubscribe``), the feeds start over on the new slot
map, and revocation across two instances goes on. The cluster is this test's own (a
failover changes it for good); every wait is a bounded poll and every server is stopped by
pid.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_nodes import cli, ended_on_a_refused_on_b, role, running_cluster
from redis.crc import key_slot

from tokenward.clock import FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.sessions import UserRef
from tokenward.settings import load_settings
from waiting import await_until, wait_until


@pytest.fixture
def cluster_3_3(tmp_path: Path) -> Iterator[list[int]]:
    """Six nodes, 3 masters + 3 replicas, all replicas in sync; yields the ports."""
    with running_cluster(tmp_path, masters=3, replicas=1, node_timeout_ms=2000) as ports:
        yield ports


def _user(n: int) -> UserRef:
    return UserRef(id=f"{n:032x}", email=f"fo{n}@example.com", created_at=1)


async def _start(url: str, data: Path) -> Tokenward:
    env = {
        "TOKENWARD_REDIS_URL": url,
        "TOKENWARD_DATA_DIR": str(data),
        "TOKENWARD_ISSUER": "https://tokenward.test",
    }
    settings = load_settings(env, env_file=data.parent / "none.env")
    tw = Tokenward(settings, clock=FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS)
    await tw.start()
    return tw


async def test_revocation_goes_on_through_a_master_switch_over(
    cluster_3_3: list[int], tmp_path: Path
) -> None:
    """After ``CLUSTER FAILOVER`` moves one master's slots to its replica, both feeds
    start over on the new slot map, and 12 logouts on A (4 of them in the moved slots)
    are each refused by B's warm cache within 2 s."""
    ports = cluster_3_3
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    instances: list[Tokenward] = []
    try:
        for _ in range(2):
            instances.append(await _start(url, tmp_path / "data"))
        a, b = instances
        await await_until(
            lambda: a.feed.subscribed and b.feed.subscribed, within=10, what="both feeds up"
        )
        replica = next(p for p in ports if role(p) == "slave")
        assert cli(replica, "cluster", "failover").strip() == "OK"
        wait_until(lambda: role(replica) == "master", within=15, what="the replica promoted")
        await await_until(
            lambda: a.feed.drops >= 1 and b.feed.drops >= 1,
            within=10,
            what="both feeds see their subscriptions on the demoted master end",
        )
        await await_until(
            lambda: a.feed.subscribed and b.feed.subscribed,
            within=15,
            what="both feeds back on the new slot map",
        )
        owned = _owned_slots(replica)
        users = [n for n in range(400) if key_slot(f"u:{n:032x}".encode()) in owned][:4]
        users += [n for n in range(400) if key_slot(f"u:{n:032x}".encode()) not in owned][:8]
        assert len(users) == 12
        for n in users:
            await ended_on_a_refused_on_b(a, b, _user(n))
    finally:
        for tw in instances:
            await tw.stop()


def _owned_slots(port: int) -> set[int]:
    """Slots the node at ``port`` serves as a master, from its CLUSTER NODES line."""
    for line in cli(port, "cluster", "nodes").splitlines():
        fields = line.split()
        if "myself" in fields[2]:
            out: set[int] = set()
            for part in fields[8:]:
                if part.startswith("["):
                    continue
                low, _, high = part.partition("-")
                out.update(range(int(low), int(high or low) + 1))
            return out
    return set()
