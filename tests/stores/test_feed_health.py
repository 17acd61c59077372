"""The revocation feed's health is visible: metrics and one log line per change of state.

A private redis-server is stopped and started again on the same port (by pid); every wait
is a bounded poll.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from private_redis import private_redis
from tw_factory import TokenwardFactory
from waiting import await_until


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def _lines(caplog: pytest.LogCaptureFixture, fragment: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tokenward.feed" and fragment in r.getMessage()
    ]


async def test_feed_down_resubscribing_and_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped for about 1.5 s: up 1 -> 0 -> 1, drops 0 -> 1, and exactly one
    'down', one 'resubscribing' and one 'recovered after N s' line, N the outage."""
    caplog.set_level(logging.INFO, logger="tokenward.feed")
    with private_redis(tmp_path) as server:
        factory = TokenwardFactory(server.url, tmp_path, issuer="https://tokenward.test")
        try:
            tw = await factory.make()
            await await_until(lambda: tw.feed.subscribed, within=5, what="the feed subscribes")
            text = (await tw.metrics.render()).decode()
            assert _metric(text, "tokenward_revocation_feed_up") == 1
            assert _metric(text, "tokenward_revocation_feed_drops_total") == 0

            server.stop()
            stopped = time.monotonic()
            await await_until(lambda: not tw.feed.subscribed, within=3, what="the feed drops")
            await await_until(
                lambda: bool(_lines(caplog, "resubscribing")), within=3, what="a resubscribe"
            )
            # Several attempts fail while Redis is away; each state is logged once.
            attempts = tw.feed.drops
            await await_until(
                lambda: time.monotonic() - stopped > 1.5, within=3, what="an outage of 1.5 s"
            )
            text = (await tw.metrics.render()).decode()
            assert _metric(text, "tokenward_revocation_feed_up") == 0
            assert _metric(text, "tokenward_revocation_feed_drops_total") == 1

            server.start()
            await await_until(lambda: tw.feed.subscribed, within=10, what="the feed recovers")
            outage = time.monotonic() - stopped
            text = (await tw.metrics.render()).decode()
            assert _metric(text, "tokenward_revocation_feed_up") == 1
            assert _metric(text, "tokenward_revocation_feed_drops_total") == 1
            assert attempts == tw.feed.drops == 1

            down = _lines(caplog, "revocation feed down")
            assert len(down) == 1
            assert "ConnectionError" in down[0] or "lease lapsed" in down[0]
            assert len(_lines(caplog, "resubscribing")) == 1
            recovered = _lines(caplog, "recovered after")
            assert len(recovered) == 1
            seconds = float(re.search(r"after ([\d.]+) s down", recovered[0]).group(1))  # type: ignore[union-attr]
            assert 1.5 <= seconds <= outage
        finally:
            await factory.stop_all()


async def test_other_processes_pings_are_not_endings(tmp_path: Path) -> None:
    """Three feeds on one channel, each publishing its lease pings there (2.5 a second):
    while each renews its lease three more times from its own pings, no cache treats
    another feed's ping as an ending (its generation, bumped by every forget, stays put)."""
    import redis.asyncio as aioredis

    from tokenward.revocation import SessionCache
    from tokenward.stores.redis_feed import RevocationFeed

    with private_redis(tmp_path) as server:
        client = aioredis.from_url(server.url, decode_responses=True)
        # A wide lease: a ping late on a loaded machine must not lapse a feed (a lapse
        # empties its cache too, and would read here as a ping taken for an ending).
        feeds = [RevocationFeed(client, SessionCache(), lease=5.0) for _ in range(3)]
        try:
            for feed in feeds:
                await feed.start(wait=5)
            await await_until(
                lambda: all(f.subscribed for f in feeds), within=5, what="three feeds subscribe"
            )
            tickets = [f.cache.ticket() for f in feeds]
            leases = [f.cache.lease_until for f in feeds]
            # Three more proofs each: meanwhile the others' pings were delivered too.
            await await_until(
                lambda: all(
                    f.cache.lease_until >= lease + 3 * f.ping_interval
                    for f, lease in zip(feeds, leases, strict=True)
                ),
                within=5,
                what="three more pings come back to every feed",
            )
            assert [f.cache.ticket() for f in feeds] == tickets
            assert all(f.subscribed for f in feeds)
            assert sum(f.drops for f in feeds) == 0
        finally:
            for feed in feeds:
                await feed.stop()
            await client.aclose()
