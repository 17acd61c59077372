"""Sentinel's own credentials: ``?sentinel_password=`` reaches a real sentinel that has
``requirepass``, and the URL's userinfo reaches the data node that has its own
(issue 10 item 3). One sentinel and one master: enough to ask for the master's address."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
import redis

from ports import free_port
from tokenward.stores.redis_client import connect_redis, probe_redis
from tw_accounts import ORIGIN, Accounts
from tw_factory import TokenwardFactory
from waiting import wait_until

DATA_PASSWORD = "data-secret-1"
SENTINEL_PASSWORD = "sentinel-secret-2"


class Guarded(NamedTuple):
    data: int
    sentinel: int


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    data, sentinel = free_port(), free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\nrequirepass {SENTINEL_PASSWORD}\n"
        f"sentinel monitor tw 127.0.0.1 {data} 1\n"
        f"sentinel auth-pass tw {DATA_PASSWORD}\n"
    )
    data_argv = [binary, "--port", str(data), "--bind", "127.0.0.1", "--save", ""]
    data_argv += ["--appendonly", "no", "--requirepass", DATA_PASSWORD]
    procs = [
        _start(data_argv, tmp_path / "data.log"),
        _start([binary, str(conf), "--sentinel"], tmp_path / "sentinel.log"),
    ]
    try:

        def answers() -> bool:
            client = redis.Redis(port=sentinel, password=SENTINEL_PASSWORD)
            try:
                return client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "tw") == [
                    b"127.0.0.1",
                    str(data).encode(),
                ] and bool(redis.Redis(port=data, password=DATA_PASSWORD).ping())
            except redis.RedisError:
                return False
            finally:
                client.close()

        wait_until(answers, within=30, what="the sentinel and the data node answer")
        yield Guarded(data, sentinel)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def _url(ports: Guarded, sentinel_password: str, data_password: str = DATA_PASSWORD) -> str:
    return (
        f"redis+sentinel://:{data_password}@127.0.0.1:{ports.sentinel}/tw"
        f"?sentinel_password={sentinel_password}"
    )


async def test_the_session_flow_through_a_password_protected_sentinel(
    guarded: Guarded, tmp_path: Path
) -> None:
    factory = TokenwardFactory(_url(guarded, SENTINEL_PASSWORD), tmp_path, issuer=ORIGIN)
    try:
        tw = await factory.make(redis_wait="off")
        from tokenward.http.app import create_app

        transport = httpx.ASGITransport(app=create_app(tw, manage_lifespan=False))
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
            session = await Accounts(c).new_bearer()
            me = await c.get(
                "/auth/me", headers={"Authorization": f"Bearer {session['access_token']}"}
            )
            assert me.status_code == 200, me.text
    finally:
        await factory.stop_all()


@pytest.mark.parametrize("wrong", ["sentinel", "data"])
async def test_a_wrong_password_is_one_line_without_it(
    guarded: Guarded, wrong: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong sentinel (or data node) password: the probe fails with one line, no secret."""
    url = (
        _url(guarded, "not-the-sentinel-password")
        if wrong == "sentinel"
        else _url(guarded, SENTINEL_PASSWORD, data_password="not-the-data-password")
    )
    client = connect_redis(url, timeout=1.0)
    try:
        with caplog.at_level(logging.ERROR, logger="tokenward.redis"):
            assert not await probe_redis(client, url, wait=5.0)
    finally:
        await client.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "tokenward.redis"]
    assert len(lines) == 1, lines
    assert "not-the" not in lines[0], lines[0]
    assert SENTINEL_PASSWORD not in lines[0], lines[0]
