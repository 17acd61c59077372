"""The revocation feed on a real Redis Cluster: sharded pub/sub, two instances, the lease.

Every wait is a bounded poll; the pauses are Redis's own (``CLIENT PAUSE``, bounded).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cluster_nodes import cli, ended_on_a_refused_on_b

from tokenward.clock import FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.sessions import UserRef
from tokenward.settings import load_settings
from waiting import await_until

MakeTw = Callable[[], Awaitable[Tokenward]]


@pytest.fixture
async def make_cluster_tw(redis_cluster_url: str, tmp_path: Path) -> AsyncIterator[MakeTw]:
    """Instances on the cluster sharing one data directory (signing keys, SQLite)."""
    started: list[Tokenward] = []

    async def make() -> Tokenward:
        env = {
            "TOKENWARD_REDIS_URL": redis_cluster_url,
            "TOKENWARD_DATA_DIR": str(tmp_path / "data"),
            "TOKENWARD_ISSUER": "https://tokenward.test",
        }
        settings = load_settings(env, env_file=tmp_path / "none.env")
        tw = Tokenward(settings, clock=FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS)
        await tw.start()
        started.append(tw)
        await await_until(lambda: tw.feed.subscribed, within=10, what="the feed subscribes")
        return tw

    yield make
    for tw in started:
        await tw.stop()


async def _widen_lease(tw: Tokenward, lease: float = 5.0) -> None:
    """Widen ``tw``'s lease and wait until a ping has renewed it to the new width.

    For tests of what the feed delivers, not of how fast a ping makes it round three
    masters: on a loaded 2-core CI machine a ping once took longer than the 0.8 s default
    and the feed lapsed mid-test (counted in ``drops``). A feed that stops delivering
    still fails such a test: its revocations never arrive, or the wide lease lapses too."""
    tw.feed.lease = lease
    wide = tw.cache.clock() + lease - 1.0
    await await_until(
        lambda: tw.cache.lease_until > wide, within=3, what="a ping renews the wide lease"
    )


def _ports(url: str) -> list[int]:
    seed = int(url.rsplit(":", 1)[1])
    out = subprocess.run(
        ["redis-cli", "-p", str(seed), "cluster", "nodes"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return [int(line.split()[1].split("@")[0].rsplit(":", 1)[1]) for line in out.splitlines()]


def _bus_publishes(ports: list[int]) -> int:
    """Classic PUBLISH messages the nodes broadcast to each other over the cluster bus."""
    total = 0
    for port in ports:
        for line in cli(port, "cluster", "info").splitlines():
            if line.startswith("cluster_stats_messages_publish_sent:"):
                total += int(line.split(":")[1])
    return total


def _user(n: int) -> UserRef:
    return UserRef(id=f"{n:032x}", email=f"feed{n}@example.com", created_at=1)


async def test_revocation_across_two_instances_through_the_sharded_feed(
    make_cluster_tw: MakeTw, redis_cluster_url: str
) -> None:
    """30 users over the slots of all three masters: a logout on A is refused by B's warm
    cache within 2 s (every one, with its delay), and no ending crossed the cluster bus."""
    a, b = await make_cluster_tw(), await make_cluster_tw()
    assert a.feed.sharded
    assert b.feed.sharded
    for tw in (a, b):
        await _widen_lease(tw)
    ports = _ports(redis_cluster_url)
    bus_before = _bus_publishes(ports)
    delays = []
    for n in range(30):
        delays.append(await ended_on_a_refused_on_b(a, b, _user(n)))
    assert _bus_publishes(ports) == bus_before  # sharded: nothing broadcast to other nodes
    assert a.feed.drops == b.feed.drops == 0
    print(f"cross-instance delays ms: max {max(delays) * 1000:.1f}")


async def test_feed_survives_the_cluster_client_closing_its_connections(
    make_cluster_tw: MakeTw,
) -> None:
    """redis-py's cluster client disconnects every connection of every node (``aclose()``)
    when a command meets CLUSTERDOWN, an uncovered slot or repeated MOVED, e.g. while
    another master fails over. The feed's connections are its own: it stays up (before,
    it subscribed through the client's node pool and dropped with it)."""
    tw = await make_cluster_tw()
    await _widen_lease(tw)
    before = tw.feed.subscriptions
    for _ in range(2):
        await tw.redis.aclose()
        closed_at = tw.cache.clock()
        # Renewed past this only by pings sent after the close that came back through the
        # subscription of every master.
        await await_until(
            lambda at=closed_at: tw.cache.lease_until > at + tw.feed.lease,
            within=3,
            what="pings sent after the close come back",
        )
        assert tw.feed.subscribed
    assert tw.feed.subscriptions == before
    assert tw.feed.drops == 0


async def test_a_ping_that_meets_a_closing_client_does_not_drop_the_feed(
    make_cluster_tw: MakeTw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When ``aclose()`` lands while a ping is being published, redis-py fails that send
    with an AttributeError (its writer is already gone: seen in a CI run, where the feed
    then restarted). One failed ping within the lease is no reason to drop the feed; the
    next ping renews the lease. The first send here fails the way redis-py's did.

    The lease is widened to 5 s first: what is tested is the failed send, not how fast
    the next ping makes it round 3 masters on a loaded machine (with the 0.8 s default, a
    CI run once saw the next ping arrive too late and the feed lapse and resubscribe).
    The feed restarting on the send's exception still fails the test."""
    tw = await make_cluster_tw()
    await _widen_lease(tw)
    before, failed = tw.feed.subscriptions, []
    real = tw.redis.spublish  # type: ignore[attr-defined]

    async def closing_under_the_send(channel: str, message: str) -> object:
        if not failed:
            failed.append(tw.cache.clock())
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        return await real(channel, message)

    monkeypatch.setattr(tw.redis, "spublish", closing_under_the_send)
    await await_until(lambda: bool(failed), within=3, what="a ping send fails")
    await await_until(
        lambda: tw.cache.lease_until > failed[0] + tw.feed.lease,
        within=3,
        what="a later ping renews the lease",
    )
    assert tw.feed.subscriptions == before
    assert tw.feed.drops == 0


async def test_the_lease_lapses_when_delivery_stops(
    make_cluster_tw: MakeTw, redis_cluster_url: str
) -> None:
    """``CLIENT PAUSE WRITE`` on every master holds every (S)PUBLISH while the links stay
    up and answer PING: the lease, renewed only by pings delivered on the channel, ends at
    most 0.8 s after the pause began; the feed is counted down and comes back when the
    pause ends."""
    tw = await make_cluster_tw()
    ports = _ports(redis_cluster_url)
    for port in ports:
        assert cli(port, "client", "pause", "2500", "WRITE").strip() == "OK"
    paused = time.monotonic()
    deadlines: list[float] = []

    def lapsed() -> bool:
        if tw.cache.healthy:
            deadlines.append(tw.cache.lease_until)
        return not tw.feed.subscribed

    await await_until(lapsed, within=3, what="the lease lapses", step=0.01)
    # Inline in the cache, whatever the watchdog's lateness: no vouching past the lease
    # counted from before the pause (a ping held by the pause proves nothing).
    assert max(deadlines, default=0.0) <= paused + tw.feed.lease
    assert tw.feed.drops == 1
    # Back with a lease proved by pings sent after the pause (a resubscription during the
    # pause may come up and lapse again: each such lapse is one more drop).
    await await_until(
        lambda: tw.feed.subscribed and tw.cache.lease_until > paused + 2.5,
        within=10,
        what="pings come back after the pause",
    )
    assert tw.feed.drops >= 1
