"""Seed nodes of a ``redis+cluster://`` URL: one that answers is enough, none is a 503.

A multi-seed URL used to be a traceback at start-up; a cluster client whose seeds did not
answer raised redis-py's ``RedisClusterException``, which is not a ``RedisError``: a 500
where every other Redis failure is a 503.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from ports import free_port
from tokenward.clock import FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings
from tokenward.stores.redis_client import connect_redis
from tw_accounts import ORIGIN, Accounts


def _seed(url: str) -> str:
    return urlsplit(url).netloc


async def _tokenward(url: str, tmp_path: Path) -> Tokenward:
    env = {
        "TOKENWARD_REDIS_URL": url,
        "TOKENWARD_DATA_DIR": str(tmp_path),
        "TOKENWARD_ISSUER": ORIGIN,
        "TOKENWARD_BACKEND_TIMEOUT": "1",
    }
    settings = load_settings(env, env_file=tmp_path / "none.env")
    tw = Tokenward(settings, clock=FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS)
    await tw.start()
    return tw


def _client(tw: Tokenward) -> httpx.AsyncClient:
    from tokenward.http.app import create_app

    transport = httpx.ASGITransport(app=create_app(tw, manage_lifespan=False))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN, timeout=30)


@pytest.fixture
async def dead_first_seed(redis_cluster_url: str, tmp_path: Path) -> AsyncIterator[Tokenward]:
    url = f"redis+cluster://127.0.0.1:{free_port()},{_seed(redis_cluster_url)}"
    tw = await _tokenward(url, tmp_path)
    try:
        yield tw
    finally:
        await tw.stop()


async def test_a_dead_first_seed_does_not_keep_an_instance_unready(
    dead_first_seed: Tokenward,
) -> None:
    """Seeds ``<nothing listens>,<a cluster node>``: ready, and the session flow works."""
    async with _client(dead_first_seed) as c:
        assert (await c.get("/readyz")).status_code == 200
        accounts = Accounts(c)
        session = await accounts.new_bearer()
        me = await c.get("/auth/me", headers={"Authorization": f"Bearer {session['access_token']}"})
        assert me.status_code == 200, me.text


async def test_no_seed_answering_is_a_connection_error_then_recovers(
    redis_cluster_url: str,
) -> None:
    """No seed answers: a ``ConnectionError`` (503 everywhere), not RedisClusterException;
    the same client then reaches the cluster once a seed answers (here: added back)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    dead = free_port()
    client = connect_redis(f"redis+cluster://127.0.0.1:{dead}", timeout=0.5)
    try:
        with pytest.raises(RedisConnectionError):
            await client.ping()
        with pytest.raises(RedisConnectionError):
            await client.get("tw:test:seed")  # tried again, not cached as a failure
    finally:
        await client.aclose()
    live = connect_redis(f"redis+cluster://127.0.0.1:{dead},{_seed(redis_cluster_url)}")
    try:
        assert await live.ping()
    finally:
        await live.aclose()


async def test_an_instance_with_no_seed_answering_answers_503(tmp_path: Path) -> None:
    tw = await _tokenward(f"redis+cluster://127.0.0.1:{free_port()}", tmp_path)
    try:
        async with _client(tw) as c:
            assert (await c.get("/readyz")).status_code == 503
            login = await c.post(
                "/auth/login", json={"email": "a@example.com", "password": "x" * 12}
            )
            assert login.status_code == 503, login.text
    finally:
        await tw.stop()
