"""TOKENWARD_SESSION_CACHE_SIZE and TOKENWARD_SESSION_CACHE_TTL reach the per-process cache."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tokenward.clock import FrozenClock
from tokenward.errors import ConfigError
from tokenward.revocation import SessionCache
from tokenward.runtime import Tokenward
from tokenward.sessions import SessionState, UserRef
from tokenward.settings import load_settings
from waiting import await_until

MakeTw = Callable[..., Awaitable[Tokenward]]


def _user(n: int) -> UserRef:
    return UserRef(id=f"{n:032x}", email=f"cache{n}@example.com", created_at=1)


async def _logged_in(tw: Tokenward, n: int) -> str:
    issued = await tw.sessions.open(_user(n), ip="127.0.0.1", user_agent="t", now=tw.clock.now())
    return str(issued.access_token)


async def test_cache_size_bounds_the_entries(make_tw: MakeTw) -> None:
    """Size 3: after 8 sessions were authenticated, 3 are remembered, and the most recent."""
    tw = await make_tw(session_cache_size=3)
    await await_until(lambda: tw.feed.subscribed, within=5, what="the feed subscribes")
    tokens = [await _logged_in(tw, n) for n in range(8)]
    for token in tokens:
        await tw.sessions.authenticate(token, now=tw.clock.now())
    assert len(tw.cache) == 3
    hits = tw.cache.hits
    await tw.sessions.authenticate(tokens[-1], now=tw.clock.now())
    assert tw.cache.hits == hits + 1
    await tw.sessions.authenticate(tokens[0], now=tw.clock.now())
    assert tw.cache.hits == hits + 1  # evicted: asked Redis


async def test_entries_that_ran_out_leave_without_waiting_for_the_size_bound(
    make_tw: MakeTw,
) -> None:
    """TTL 5, size 1,000: 30 sessions seen, then 5 s later 20 others. Each store drops up
    to two entries that ran out, so the first 30 are gone (before, all 50 stayed until
    1,000 sessions had pushed them out); the 20 recent ones are still vouched for."""
    tw = await make_tw(session_cache_ttl=5, session_cache_size=1000)
    assert isinstance(tw.clock, FrozenClock)
    await await_until(lambda: tw.feed.subscribed, within=5, what="the feed subscribes")
    for n in range(30):
        await tw.sessions.authenticate(await _logged_in(tw, 300 + n), now=tw.clock.now())
    assert len(tw.cache) == 30
    tw.clock.advance(5)
    recent = [await _logged_in(tw, 400 + n) for n in range(20)]
    for token in recent:
        await tw.sessions.authenticate(token, now=tw.clock.now())
    assert len(tw.cache) == 20
    hits = tw.cache.hits
    for token in recent:
        await tw.sessions.authenticate(token, now=tw.clock.now())
    assert tw.cache.hits == hits + 20


def test_storing_an_entry_that_has_already_run_out_leaves_the_cache_empty() -> None:
    """The sweep may meet the entry just stored (a state expiring this very second) and
    then an empty cache: it stops there, without an error."""
    cache = SessionCache()
    cache.set_healthy(True)
    state = SessionState(
        uid="u" * 32, user_created_at=1, csrf_digest="0" * 64, created_at=1, expires_at=100
    )
    cache.put("s" * 22, state, ticket=cache.ticket(), now=100)
    assert len(cache) == 0


def test_entries_stored_together_run_out_spread_over_a_quarter_of_the_ttl() -> None:
    """1,000 sessions stored in the same second (a worker's first requests after a start)
    do not all run out together: each vouches for 75-100 % of the TTL, so their lookups
    come back spread over 15 of 60 seconds, not as one burst every minute. A pinned draw
    gives the bounds exactly."""
    state = SessionState(
        uid="u" * 32, user_created_at=1, csrf_digest="0" * 22, created_at=1, expires_at=10_000
    )
    for draw, last in ((0.0, 159), (0.999, 145)):
        cache = SessionCache(max_age=60, rng=lambda draw=draw: draw)
        cache.set_healthy(True)
        cache.renew(cache.clock() + 60)
        cache.put("s" * 22, state, ticket=cache.ticket(), now=100)
        assert cache.get("s" * 22, now=last) is not None
        assert cache.get("s" * 22, now=last + 1) is None
    cache = SessionCache(max_age=60)
    cache.set_healthy(True)
    cache.renew(cache.clock() + 60)
    for n in range(1000):
        cache.put(f"{n:022d}", state, ticket=cache.ticket(), now=100)
    ends = []
    for at in range(100, 161):
        alive = sum(cache.get(f"{n:022d}", now=at) is not None for n in range(1000))
        ends.append(alive)
    assert ends[45] == 1000  # none before 75 % of the TTL
    assert ends[60] == 0  # none past it
    dropped = [ends[i] - ends[i + 1] for i in range(45, 60)]
    assert max(dropped) < 200, dropped  # about 67 a second; all at once would be 1,000
    assert sum(1 for d in dropped if d) >= 12, dropped


async def test_cache_size_zero_turns_it_off(make_tw: MakeTw) -> None:
    """Size 0: 20 authentications of one session, 0 answered by the cache."""
    tw = await make_tw(session_cache_size=0)
    await await_until(lambda: tw.feed.subscribed, within=5, what="the feed subscribes")
    token = await _logged_in(tw, 100)
    for _ in range(20):
        await tw.sessions.authenticate(token, now=tw.clock.now())
    assert len(tw.cache) == 0
    assert tw.cache.hits == 0


async def test_cache_ttl_sends_an_old_entry_back_to_redis(make_tw: MakeTw) -> None:
    """TTL 8: vouched for at +5 s (an entry loses at most a quarter of it at random),
    asked again at +8 s (the default of 60 would vouch)."""
    tw = await make_tw(session_cache_ttl=8)
    assert isinstance(tw.clock, FrozenClock)
    await await_until(lambda: tw.feed.subscribed, within=5, what="the feed subscribes")
    token = await _logged_in(tw, 200)
    await tw.sessions.authenticate(token, now=tw.clock.now())
    hits = tw.cache.hits
    tw.clock.advance(5)
    await tw.sessions.authenticate(token, now=tw.clock.now())
    assert tw.cache.hits == hits + 1
    tw.clock.advance(3)
    await tw.sessions.authenticate(token, now=tw.clock.now())
    assert tw.cache.hits == hits + 1


@pytest.mark.parametrize(
    ("name", "value"),
    [("SESSION_CACHE_SIZE", "-1"), ("SESSION_CACHE_TTL", "0"), ("SESSION_CACHE_TTL", "x")],
)
def test_bad_cache_settings_are_one_line_errors(tmp_path: Path, name: str, value: str) -> None:
    env = {f"TOKENWARD_{name}": value}
    with pytest.raises(ConfigError, match=f"^TOKENWARD_{name}: "):
        load_settings(env, env_file=tmp_path / "none.env")
