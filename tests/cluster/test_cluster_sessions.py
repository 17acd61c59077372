"""The whole session life on a real Redis Cluster: every script stays in one hash slot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tokenward.clock import FrozenClock
from tokenward.errors import RefreshReused, SessionEnded
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.sessions import EndReason, UserRef
from tokenward.settings import load_settings
from waiting import await_until


@pytest.fixture
async def cluster_tw(redis_cluster_url: str, tmp_path: Path) -> Tokenward:
    env = {
        "TOKENWARD_REDIS_URL": redis_cluster_url,
        "TOKENWARD_DATA_DIR": str(tmp_path),
        "TOKENWARD_ISSUER": "https://tokenward.test",
        "TOKENWARD_REFRESH_GRACE": "5",
    }
    settings = load_settings(env, env_file=tmp_path / "none.env")
    tw = Tokenward(settings, clock=FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS)
    await tw.start()
    yield tw
    await tw.stop()


def _user(n: int) -> UserRef:
    return UserRef(id=f"{n:032x}", email=f"u{n}@example.com", created_at=1)


async def test_open_rotate_replay_and_end_on_cluster(cluster_tw: Tokenward) -> None:
    """Many users (spread over the slots): login, rotate, grace replay, reuse, end_all."""
    tw = cluster_tw
    now = tw.clock.now()
    for n in range(12):
        user = _user(n)
        first = await tw.sessions.open(user, ip="127.0.0.1", user_agent="t", now=now)
        second = await tw.sessions.open(user, ip="127.0.0.1", user_agent="t", now=now)
        rotated = await tw.sessions.refresh(first.refresh_token, csrf_token=None, now=now)
        replay = await tw.sessions.refresh(first.refresh_token, csrf_token=None, now=now)
        assert replay.refresh_token == rotated.refresh_token
        assert len(await tw.sessions.list(user.id, current=None, now=now)) == 2
        tw.clock.advance(10)
        with pytest.raises(RefreshReused):
            await tw.sessions.refresh(first.refresh_token, csrf_token=None, now=tw.clock.now())
        ended = await tw.sessions.end_all(
            user.id, keep=None, reason=EndReason.LOGOUT_ALL, now=tw.clock.now()
        )
        assert ended == [second.sid]
        with pytest.raises(SessionEnded):
            await tw.sessions.authenticate(second.access_token, now=tw.clock.now())


async def test_revocation_feed_works_on_cluster(cluster_tw: Tokenward) -> None:
    """The invalidation feed subscribes on a cluster, so the cache may vouch for sessions."""
    tw = cluster_tw
    await await_until(lambda: tw.cache.healthy, within=5, what="the feed subscribes")
    user = _user(999)
    issued = await tw.sessions.open(user, ip="127.0.0.1", user_agent="t", now=tw.clock.now())
    await tw.sessions.authenticate(issued.access_token, now=tw.clock.now())
    assert len(tw.cache) >= 1


async def test_http_login_throttle_and_events_on_cluster(cluster_tw: Tokenward) -> None:
    """Register, log in, get throttled and read events through HTTP on a cluster."""
    import httpx

    from tokenward.http.app import create_app

    app = create_app(cluster_tw, manage_lifespan=False)
    transport = httpx.ASGITransport(app=app, client=("10.9.8.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="https://tokenward.test") as c:
        creds = {"email": "cluster@example.com", "password": "violet tractor 42 umbrella"}
        assert (await c.post("/auth/register", json=creds)).status_code == 201
        bearer = {"X-Auth-Transport": "bearer"}
        ok = await c.post("/auth/login", json=creds, headers=bearer)
        assert ok.status_code == 200, ok.text
        auth = {"Authorization": f"Bearer {ok.json()['access_token']}"}
        await cluster_tw.events.drain()
        history = await c.get("/auth/events", headers={**auth, "User-Agent": "other"})
        assert history.status_code == 200
        # The agent comes from the agent table, another slot than the user's history.
        rows = history.json()
        kinds = [row["kind"] for row in rows]
        assert kinds == ["login.new-device", "login.succeeded", "account.registered"]
        assert {row["user_agent"] for row in rows} == {c.headers["user-agent"]}
        wrong = {**creds, "password": "not the password at all"}
        statuses = [(await c.post("/auth/login", json=wrong)).status_code for _ in range(11)]
        assert statuses[-1] == 429, statuses
        assert set(statuses[:10]) <= {401, 429}


async def test_active_sessions_are_counted_on_every_primary(cluster_tw: Tokenward) -> None:
    """The sessions gauge adds up all three primaries: exactly (a SCAN of each) on small
    nodes, and from each node's DBSIZE and a sample of its keys when told they are large;
    both see the 40 sessions opened here (spread over the slots)."""
    from tokenward.metrics import SessionCounter

    tw = cluster_tw
    exact = SessionCounter(lambda: tw.redis, cache_seconds=0)
    estimate = SessionCounter(lambda: tw.redis, cache_seconds=0, exact_keys=0, sample=400)
    await exact.refresh()
    before = exact.value
    assert before is not None
    for n in range(40):
        await tw.sessions.open(_user(5000 + n), ip="127.0.0.1", user_agent="t", now=tw.clock.now())
    await exact.refresh()
    await estimate.refresh()
    assert (exact.value, exact.exact) == (before + 40, True)
    assert estimate.value is not None
    assert not estimate.exact
    total = 0
    for node in tw.redis.get_primaries():
        total += await tw.redis.dbsize(target_nodes=node)
    # The share of session keys estimated from 400 samples per primary: within 4.5 standard
    # deviations of a binomial share (at most 0.5 / sqrt(400)) of the keys.
    assert abs(estimate.value - exact.value) <= 4.5 * 0.5 / 20 * total + 1


async def test_a_lost_event_forgets_its_new_device_on_cluster(cluster_tw: Tokenward) -> None:
    """On a cluster the event's scripts run one after another, on the nodes of their slots:
    a history that cannot be written still fails the append, the device check still runs
    after it (a known device's time moves on), and a device it found new is forgotten
    again."""
    from tokenward.errors import Unavailable
    from tokenward.events import EventKind, SecurityEvent

    log, uid, now = cluster_tw.event_log, f"{7777:032x}", cluster_tw.clock.now()
    login = SecurityEvent(EventKind.LOGIN_SUCCEEDED, now, uid, "s1", "192.0.2.1", "ua")
    history, devices = f"tw:{{ev:{uid}}}:h", f"tw:{{ev:{uid}}}:d"
    assert not await log.seen(uid, "known", now=now - 10, memory=60)
    await cluster_tw.redis.set(history, "not a list", ex=60)
    for device in ("dev", "known"):
        with pytest.raises(Unavailable):
            await log.append(login, device=device, memory=60)
    assert await cluster_tw.redis.hget(devices, "dev") is None
    assert await cluster_tw.redis.hget(devices, "known") == str(now)
    await cluster_tw.redis.delete(history)
    assert await log.append(login, device="dev", memory=60) is False
    assert await log.append(login, device="dev", memory=60) is True
