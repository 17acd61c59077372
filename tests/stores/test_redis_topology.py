"""``TOKENWARD_REDIS_URL`` in every form: parsing, one-line errors, TLS and Sentinel options
reaching redis-py, and the start-up line for a Redis that does not answer (issue 10 item 3)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.connection import SSLConnection

from ports import free_port
from tokenward.errors import ConfigError
from tokenward.settings import load_settings
from tokenward.stores.redis_client import (
    Durability,
    FailoverPool,
    RedisWait,
    connect_redis,
    parse_redis_url,
    probe_redis,
)


def _settings(tmp_path: Path, **env: str) -> Any:
    return load_settings(
        {f"TOKENWARD_{k.upper()}": v for k, v in env.items()}, env_file=tmp_path / "no.env"
    )


def test_a_cluster_url_names_every_seed() -> None:
    """Several seeds (the multi-seed URL used to be a traceback), default ports, IPv6."""
    target = parse_redis_url("redis+cluster://user:p%40ss@a.example:7000,b.example,[::1]:7002")
    assert target.kind == "cluster"
    assert target.hosts == (("a.example", 7000), ("b.example", 6379), ("::1", 7002))
    assert (target.username, target.password, target.tls) == ("user", "p@ss", False)


def test_tls_forms_carry_their_options() -> None:
    ca = "/etc/ssl/ca.pem"
    cluster = parse_redis_url(f"rediss+cluster://h1:7000,h2:7001?ssl_ca_certs={ca}")
    assert cluster.tls
    assert cluster.tls_options == {"ssl_ca_certs": ca}
    sentinel = parse_redis_url(
        "rediss+sentinel://:data@s1:26380,s2/mymaster/3"
        "?sentinel_username=watcher&sentinel_password=s%26cret&ssl_certfile=/c.pem&ssl_keyfile=/k"
    )
    assert sentinel.kind == "sentinel"
    assert sentinel.tls
    assert sentinel.hosts == (("s1", 26380), ("s2", 26379))
    assert (sentinel.service, sentinel.db, sentinel.password) == ("mymaster", 3, "data")
    assert (sentinel.sentinel_username, sentinel.sentinel_password) == ("watcher", "s&cret")
    assert sentinel.tls_options == {"ssl_certfile": "/c.pem", "ssl_keyfile": "/k"}
    assert parse_redis_url("rediss://h:6380/0").tls


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://a:1,b:x", "port 'x' of b is not a number"),
        ("redis+cluster://a:1,:2", "empty host"),
        ("redis+cluster://h:70000", "port 70000 of h is out of range"),
        ("redis+sentinel://s:1/", "needs a service name"),
        ("redis+sentinel://s:1/svc/2/3", "expected /<service name>[/<db number>]"),
        ("redis+sentinel://s:1/svc/x", "expected /<service name>[/<db number>]"),
        ("redis+cluster://h:1?ssl_ca_certs=/x", "TLS options need rediss+"),
        ("rediss+sentinel://s:1/m?ssl_bogus=1", "unknown query parameter 'ssl_bogus'"),
        ("redis+cluster://h:1?sentinel_password=x", "unknown query parameter"),
        ("redis+shard://h:1", "scheme"),
        ("unix+sentinel:///tmp/s", "scheme"),
    ],
)
def test_a_bad_url_is_one_line_naming_the_setting(tmp_path: Path, url: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, redis_url=url)
    message = str(caught.value)
    assert message.startswith("TOKENWARD_REDIS_URL: "), message
    assert says in message, message
    assert "\n" not in message


def test_a_bad_url_does_not_echo_a_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, redis_url="redis+sentinel://:hunter2@s:1/svc/x?sentinel_password=pw9")
    assert "hunter2" not in str(caught.value)
    assert "pw9" not in str(caught.value)


@pytest.mark.parametrize("bad", ["1", "on", "1:0", "0:100", "1:100:fsync", "-1:100", "1:ms"])
def test_a_bad_wait_is_one_line(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, redis_wait=bad)
    assert str(caught.value).startswith("TOKENWARD_REDIS_WAIT: ")
    assert "\n" not in str(caught.value)


def test_the_wait_follows_the_topology() -> None:
    """``auto`` waits for one replica on Sentinel only; a wait on a cluster is refused."""
    sentinel = "redis+sentinel://s:1/svc"
    assert Durability.for_setting("auto", sentinel).wait == RedisWait(1, 500)
    assert Durability.for_setting("auto", "redis://h:1/0").wait is None
    assert Durability.for_setting("auto", None).wait is None  # the embedded one
    assert Durability.for_setting("auto", "redis+cluster://h:1").wait is None
    assert Durability.for_setting("off", sentinel).wait is None
    assert Durability.for_setting("2:250:aof", "redis://h:1/0").wait == RedisWait(2, 250, True)
    with pytest.raises(ConfigError, match="min-replicas-to-write"):
        Durability.for_setting("1:100", "redis+cluster://h:1,h:2")


async def test_tls_options_reach_the_cluster_client() -> None:
    client: Any = connect_redis(
        "rediss+cluster://u:pw@127.0.0.1:7000,127.0.0.1:7001?ssl_ca_certs=/ca.pem"
        "&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
    )
    try:
        seeds = [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]
        assert seeds == [("127.0.0.1", 7000), ("127.0.0.1", 7001)]
        kwargs = client.connection_kwargs
        # TLS connections (ours: packed with hiredis), for the seeds and the nodes to come
        assert issubclass(kwargs["connection_class"], SSLConnection)
        assert {n.connection_class for n in client.nodes_manager.startup_nodes.values()} == {
            kwargs["connection_class"]
        }
        assert kwargs["ssl_ca_certs"] == "/ca.pem"
        assert (kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == ("/c.pem", "/k.pem")
        assert kwargs["ssl_cert_reqs"] == "required"
        assert (kwargs["username"], kwargs["password"]) == ("u", "pw")
    finally:
        await client.aclose()


async def test_tls_and_auth_reach_the_sentinels_and_the_master() -> None:
    client = connect_redis(
        "rediss+sentinel://app:data@127.0.0.1:26379,127.0.0.1:26380/tw/2"
        "?sentinel_username=watch&sentinel_password=spw&ssl_ca_certs=/ca.pem"
    )
    try:
        pool = client.connection_pool
        assert isinstance(pool, FailoverPool)
        assert pool.connection_class.__name__ == "_FailoverSSLConnection"
        master = pool.connection_kwargs
        assert (master["username"], master["password"], master["db"]) == ("app", "data", 2)
        assert (master["ssl_ca_certs"], master["ssl_cert_reqs"]) == ("/ca.pem", "required")
        sentinels = pool.sentinel_manager.sentinels
        assert len(sentinels) == 2
        for sentinel in sentinels:
            kwargs = sentinel.connection_pool.connection_kwargs
            assert (kwargs["username"], kwargs["password"]) == ("watch", "spw")
            assert kwargs["ssl_ca_certs"] == "/ca.pem"
            assert sentinel.connection_pool.connection_class.__name__ == "SSLConnection"
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "form",
    [
        "redis://:s3cret@127.0.0.1:{port}/0",
        "redis+sentinel://:s3cret@127.0.0.1:{port}/tw?sentinel_password=s3cret",
        "redis+cluster://:s3cret@127.0.0.1:{port}",
    ],
)
async def test_an_unreachable_redis_is_one_line_without_the_password(
    form: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = form.format(port=free_port())  # nothing listens there
    client = connect_redis(url, timeout=0.5)
    try:
        with caplog.at_level(logging.ERROR, logger="tokenward.redis"):
            assert not await probe_redis(client, url, wait=2.0)
    finally:
        await client.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "tokenward.redis"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("Redis unreachable at start-up: "), line
    assert "127.0.0.1:" in line, line
    assert "s3cret" not in line, line
    assert "\n" not in line, line
    assert all(r.exc_info is None for r in caplog.records), "no traceback"
