"""Operator endpoints are not public by accident: /metrics and /readyz.

* ``/metrics`` is not on the public app unless a scrape token is configured, and then only
  for that bearer token; the operator listener (``TOKENWARD_METRICS_PORT``, loopback by
  default) serves it on its own port, from the real app's lifespan under uvicorn.
* ``/readyz`` reports each component, and answers 503 only when sessions cannot be served.

``tokenward serve --metrics-port`` with several workers is in test_metrics_workers.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from ops_support import OPS_METRICS_TOKEN, MakeOpsTw, RunCli, ops_client, ops_env
from prometheus_client.parser import text_string_to_metric_families

from ports import free_port
from tokenward.errors import ConfigError
from tokenward.http.app import create_app
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings
from waiting import await_until


def _healthz_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tokenward_http_requests_total" and s.labels.get("route") == "/healthz":
                return s.value
    return 0.0


async def test_public_app_has_no_metrics_by_default(make_ops_tw: MakeOpsTw) -> None:
    """No scrape token, no /metrics on the public port (nor in its OpenAPI document)."""
    tw = await make_ops_tw(metrics_token="")
    assert tw.settings.metrics_token is None
    async with ops_client(tw) as client:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            r = await client.get("/metrics", headers=headers)
            assert r.status_code == 404, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "tokenward_" not in r.text
        assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


async def test_public_metrics_only_for_the_scrape_token(make_ops_tw: MakeOpsTw) -> None:
    """With TOKENWARD_METRICS_TOKEN: 401 for anything but exactly that bearer token."""
    tw = await make_ops_tw()
    wrong = OPS_METRICS_TOKEN[:-1] + ("x" if OPS_METRICS_TOKEN[-1] != "x" else "y")
    async with ops_client(tw) as client:
        refused = [
            [],
            [("authorization", f"Bearer {wrong}")],
            [("authorization", f"Bearer {OPS_METRICS_TOKEN[:-1]}")],
            [("authorization", f"Basic {OPS_METRICS_TOKEN}")],
            [("authorization", OPS_METRICS_TOKEN)],
            [("authorization", f"Bearer {OPS_METRICS_TOKEN}")] * 2,
            [("authorization", "Bearer ünïcode".encode())],
        ]
        for headers in refused:
            r = await client.get("/metrics", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["type"] == "urn:tokenward:problem:unauthenticated"
            assert "tokenward_" not in r.text
        r = await client.get("/metrics", headers={"Authorization": f"bearer {OPS_METRICS_TOKEN}"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert "tokenward_build_info" in r.text


@pytest.mark.parametrize("value", ["short", "x" * 31])
def test_a_short_scrape_token_stops_start_up(value: str) -> None:
    """A guessable token would make the public /metrics public again."""
    with pytest.raises(ConfigError, match="TOKENWARD_METRICS_TOKEN"):
        load_settings({"TOKENWARD_METRICS_TOKEN": value})
    assert load_settings({}).metrics_host == "127.0.0.1"
    assert load_settings({}).metrics_port is None


class Served:
    """The public app under uvicorn in this process, its lifespan (and listener) running."""

    def __init__(self, tw: Tokenward) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        app = create_app(tw, manage_lifespan=False)
        config = uvicorn.Config(app, log_config=None, lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Served:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        await await_until(lambda: self.server.started, within=10.0, what="the app listens")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await self.task
        self.sock.close()


@pytest.fixture
async def listening(make_ops_tw: MakeOpsTw) -> AsyncIterator[tuple[Served, str]]:
    port = free_port()
    tw = await make_ops_tw(metrics_token="", metrics_port=port)
    async with Served(tw) as served:
        yield served, f"http://127.0.0.1:{port}"


async def test_metrics_listener_serves_what_the_public_port_counts(
    listening: tuple[Served, str],
) -> None:
    """The listener answers GET /metrics (loopback only); the public port does not."""
    served, metrics_url = listening
    async with httpx.AsyncClient() as client:
        for _ in range(5):
            assert (await client.get(served.url + "/healthz")).status_code == 200
        assert (await client.get(served.url + "/metrics")).status_code == 404
        r = await client.get(metrics_url + "/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["cache-control"] == "no-store"
        assert _healthz_count(r.text) == 5
        assert (await client.get(metrics_url + "/metrics?x=1")).status_code == 200
        assert (await client.head(metrics_url + "/metrics")).status_code == 200
        assert (await client.get(metrics_url + "/auth/me")).status_code == 404
        assert (await client.get(metrics_url + "/")).status_code == 404
        assert (await client.post(metrics_url + "/metrics")).status_code == 405


async def test_metrics_listener_listens_on_loopback_only(listening: tuple[Served, str]) -> None:
    """Bound to 127.0.0.1: nothing answers on the same port of another address."""
    _, metrics_url = listening
    port = int(metrics_url.rsplit(":", 1)[1])
    others = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
            others.add(probe.getsockname()[0])
        except OSError:
            pass
    others.discard("127.0.0.1")
    for address in others:
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(f"http://{address}:{port}/metrics")
    # And a raw connection that never finishes its request is dropped, not kept forever.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 10_000)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed: head over 8 KiB
    writer.close()


async def test_serve_refuses_a_metrics_port_already_taken(
    run_cli: RunCli, redis_url: str, tmp_path: Path
) -> None:
    """A clash is a start-up error naming the address, before any worker starts: one line
    and exit code 4 (EXIT_CANNOT_LISTEN), as for the public port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = ops_env(redis_url, tmp_path / "data", metrics_token="")
        result = await run_cli("serve", "--port", str(free_port()), "--metrics-port", str(port),
                               env=env)  # fmt: skip
    assert result.code == 4, result
    assert result.err == f"tokenward: cannot listen on 127.0.0.1:{port}: address already in use\n"
    same = await run_cli("serve", "--port", "8123", "--metrics-port", "8123", env=env)
    assert same.code == 2
    assert "--metrics-port: must be 1-65535 and not --port" in same.err


# --------------------------------------------------------------------------------- /readyz


async def test_readyz_reports_every_component(make_ops_tw: MakeOpsTw) -> None:
    """All answer: 200 ready. The feed down: still 200 (fail closed), but degraded."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"
        assert r.json() == {
            "status": "ready",
            "components": {
                "redis": "ok",
                "database": "ok",
                "revocation_feed": "ok",
                "signing_keys": "ok",
            },
        }
        await tw.feed.stop()
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["status"] == "degraded"
        assert r.json()["components"]["revocation_feed"] == "degraded"


async def test_readyz_without_redis_is_a_503_naming_it(make_ops_tw: MakeOpsTw) -> None:
    """No Redis, no sessions: out of rotation; the problem says which component."""
    tw = await make_ops_tw(redis_url=f"redis://127.0.0.1:{free_port()}/0", backend_timeout=0.5)
    async with ops_client(tw) as client:
        r = await asyncio.wait_for(client.get("/readyz"), 10)
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["retry-after"] == "1"
    body = r.json()
    assert body["type"] == "urn:tokenward:problem:unavailable"
    assert body["components"]["redis"] == "unavailable"
    assert body["components"]["database"] == "ok"
    assert "redis" in body["detail"]


async def test_readyz_without_a_key_in_force_is_503(make_ops_tw: MakeOpsTw) -> None:
    """Every key retired and none newer: no token can be issued, so not ready."""
    tw = await make_ops_tw()
    key = tw.keys.signing_key
    retired = type(key)(
        kid=key.kid, alg=key.alg, private_key=key.private_key, retired_at=tw.clock.now() - 1
    )
    tw.keys = type(tw.keys)([retired])
    async with ops_client(tw) as client:
        r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["components"]["signing_keys"] == "unavailable"
    assert r.json()["components"]["redis"] == "ok"
