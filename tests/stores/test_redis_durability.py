"""``TOKENWARD_REDIS_WAIT``: session writes are confirmed by a replica, or answered 503, and
a client retrying those 503s loses nothing (issue 10 items 2 and 9).

A real master and a real replica (two private ``redis-server``); the replica is detached
(``REPLICAOF NO ONE``) to make every ``WAIT`` time out, and attached again to let the
retries through.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from private_redis import PrivateRedis, private_redis
from tokenward.runtime import Tokenward
from tw_accounts import BEARER, GENEROUS_LIMITS, ORIGIN, PASSWORD, Accounts
from tw_factory import TokenwardFactory
from waiting import wait_until

#: More retries than the grace replays a rotation allows (32): each must not count.
RETRIES = 40
WAIT = "1:100"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[PrivateRedis, PrivateRedis]]:
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    with private_redis(tmp_path / "m") as master, private_redis(tmp_path / "r") as replica:
        yield master, replica


def _sync(master: PrivateRedis, replica: PrivateRedis) -> None:
    """Attach ``replica`` and wait until it has everything the master has."""
    r = redis.Redis(port=replica.port, decode_responses=True)
    m = redis.Redis(port=master.port, decode_responses=True)
    try:
        m.config_set("repl-diskless-sync-delay", 0)  # the default waits 5 s for more replicas
        r.replicaof("127.0.0.1", master.port)

        def caught_up() -> bool:
            info, mine = r.info("replication"), m.info("replication")
            return (
                info.get("master_link_status") == "up"
                and info.get("slave_repl_offset") == mine.get("master_repl_offset")
                and mine.get("connected_slaves") == 1
            )

        wait_until(caught_up, within=30, what="the replica caught up")
    finally:
        r.close()
        m.close()


def _detach(master: PrivateRedis, replica: PrivateRedis) -> None:
    r = redis.Redis(port=replica.port, decode_responses=True)
    m = redis.Redis(port=master.port, decode_responses=True)
    try:
        r.replicaof("NO", "ONE")
        wait_until(
            lambda: m.info("replication").get("connected_slaves") == 0,
            within=30,
            what="the master has no replica",
        )
    finally:
        r.close()
        m.close()


def _waits(master: PrivateRedis) -> int:
    """How many WAIT commands the master has run (INFO commandstats)."""
    m = redis.Redis(port=master.port, decode_responses=True)
    try:
        text = m.execute_command("INFO", "commandstats")
    finally:
        m.close()
    stats = text if isinstance(text, dict) else {}
    entry = stats.get("cmdstat_wait")
    if isinstance(entry, dict):
        return int(entry.get("calls", 0))
    found = re.search(r"cmdstat_wait:calls=(\d+)", str(text))
    return int(found[1]) if found else 0


@pytest.fixture
async def tw(pair: tuple[PrivateRedis, PrivateRedis], tmp_path: Path) -> AsyncIterator[Tokenward]:
    master, replica = pair
    _sync(master, replica)
    factory = TokenwardFactory(master.url, tmp_path, issuer=ORIGIN)
    try:
        yield await factory.make(
            **GENEROUS_LIMITS, refresh_rate_limit=1_000_000, redis_wait=WAIT, refresh_grace=60
        )
    finally:
        await factory.stop_all()


async def _settled(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """``send()`` again while it answers 503, as a client would (bounded): on a loaded
    machine the replica just attached may take longer than the WAIT timeout to confirm."""
    for _ in range(50):
        r = await send()
        if r.status_code != 503:
            return r
    return r


async def _login(
    c: httpx.AsyncClient, email: str, tries: list[int] | None = None
) -> dict[str, Any]:
    """A bearer login, retried while the just-attached replica is slow to confirm it;
    each attempt is counted in ``tries`` (each sends one WAIT)."""
    body = {"email": email, "password": PASSWORD}

    def send() -> Awaitable[httpx.Response]:
        if tries is not None:
            tries.append(1)
        return c.post("/auth/login", json=body, headers=BEARER)

    r = await _settled(send)
    assert r.status_code == 200, r.text
    session: dict[str, Any] = r.json()
    return session


def _client(tw: Tokenward) -> httpx.AsyncClient:
    from tokenward.http.app import create_app

    transport = httpx.ASGITransport(app=create_app(tw, manage_lifespan=False))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN, timeout=30)


async def test_an_unconfirmed_write_is_a_503_and_its_retries_complete_it(
    pair: tuple[PrivateRedis, PrivateRedis], tw: Tokenward
) -> None:
    """WAIT is sent after every session write; without a replica each write answers 503;
    40 retries of a refresh (more than the 32 grace replays a rotation allows) and 5 of a
    logout, all 503, then one with the replica back: the refresh gets the successor of the
    rotation the first 503 had made, the logout 204, and both hold."""
    master, replica = pair
    async with _client(tw) as c:
        accounts = Accounts(c)
        email = await accounts.register()
        before, tries = _waits(master), []
        session = await _login(c, email, tries)
        leaving = await _login(c, email, tries)
        assert _waits(master) == before + len(tries), "a WAIT after each login's write"

        _detach(master, replica)
        login = await c.post(
            "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
        )
        assert login.status_code == 503, login.text
        token = session["refresh_token"]
        statuses = []
        for _ in range(RETRIES):
            r = await c.post("/auth/refresh", json={"refresh_token": token}, headers=BEARER)
            statuses.append(r.status_code)
        assert set(statuses) == {503}, statuses
        auth = {"Authorization": f"Bearer {leaving['access_token']}"}
        gone = [(await c.post("/auth/logout", headers=auth)).status_code for _ in range(5)]
        assert set(gone) == {503}, gone

        _sync(master, replica)
        r = await _settled(
            lambda: c.post("/auth/refresh", json={"refresh_token": token}, headers=BEARER)
        )
        assert r.status_code == 200, r.text
        successor = r.json()["refresh_token"]
        again = await _settled(
            lambda: c.post("/auth/refresh", json={"refresh_token": successor}, headers=BEARER)
        )
        assert again.status_code == 200, "the successor handed out is the session's: " + again.text
        out = await _settled(lambda: c.post("/auth/logout", headers=auth))
        assert out.status_code == 204, out.text
        assert (await c.get("/auth/me", headers=auth)).status_code == 401
        body = await c.post(
            "/auth/refresh", json={"refresh_token": leaving["refresh_token"]}, headers=BEARER
        )
        assert body.status_code == 401
        # A logout by refresh token of the session already logged out: a repeat, 204.
        repeat = await _settled(
            lambda: c.post("/auth/logout", json={"refresh_token": leaving["refresh_token"]})
        )
        assert repeat.status_code == 204, repeat.text
    print(
        f"WAIT {WAIT} without a replica: login 503, {RETRIES} refreshes 503 then 200 with "
        "the committed successor, 5 logouts 503 then 204"
    )


async def test_a_replay_from_another_client_after_a_503_is_still_theft(
    pair: tuple[PrivateRedis, PrivateRedis], tw: Tokenward
) -> None:
    """The retries a 503 allows are the rotating client's: the replaced token presented by
    another client (user agent) ends the session as refresh-reused, 503 or not."""
    master, replica = pair
    async with _client(tw) as c:
        accounts = Accounts(c)
        session = await _login(c, await accounts.register())
        token = session["refresh_token"]
        _detach(master, replica)
        assert (
            await c.post("/auth/refresh", json={"refresh_token": token}, headers=BEARER)
        ).status_code == 503
        thief: dict[str, Any] = {**BEARER, "User-Agent": "another client"}
        _sync(master, replica)
        stolen = await _settled(
            lambda: c.post("/auth/refresh", json={"refresh_token": token}, headers=thief)
        )
        assert stolen.status_code == 401, stolen.text
        ended = await tw.session_store.ended(session["user"]["id"])
        assert [reason for sid, reason, _ in ended if sid == session["session"]["id"]] == [
            "refresh-reused"
        ]
        owner = await _settled(
            lambda: c.post("/auth/refresh", json={"refresh_token": token}, headers=BEARER)
        )
        assert owner.status_code == 401, "the session was ended as theft"


async def test_a_wait_the_server_cannot_do_is_a_start_up_error(tmp_path: Path) -> None:
    """``:aof`` against a server without WAITAOF (Redis 7.0) or without appendonly: one
    line at start-up naming the setting, where every session write would have been a 503."""
    from tokenward.errors import ConfigError

    with private_redis(tmp_path) as server:  # appendonly no (and no WAITAOF before 7.2)
        factory = TokenwardFactory(server.url, tmp_path, issuer=ORIGIN)
        try:
            with pytest.raises(ConfigError) as caught:
                await factory.make(redis_wait="0:100:aof")
        finally:
            await factory.stop_all()
    message = str(caught.value)
    assert message.startswith("TOKENWARD_REDIS_WAIT: 0:100:aof needs WAITAOF"), message
    assert "\n" not in message
