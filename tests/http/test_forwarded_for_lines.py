"""``X-Forwarded-For`` spread over several header lines, in process (raw ASGI scopes).

A proxy that adds its own ``X-Forwarded-For`` line (rather than extending the client's)
puts the address it vouches for on the *last* line; the first line is whatever the client
wrote. Before the fix only the first line was read: the client chose its rate-limit
bucket, the address recorded for its session, and the one in the access log.

The in-process client calls from an address in 10/8, trusted here as the proxy. The real
servers (``tokenward serve``, ``uvicorn app:app``) are in
tests/integrations/test_forwarded_for_servers.py.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import httpx
import pytest
from http_support import GENEROUS_LIMITS, PASSWORD, Accounts, MakeTw, isolated_client

from tokenward.http.app import create_app

PROXIES = "10.0.0.0/8"


def client_address() -> str:
    """A fresh address in 198.18/15 (benchmarking range): a rate-limit bucket of its own."""
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


#: The first proxy's own address, as the second proxy (the trusted peer) reports it.
INNER_PROXY = "10.0.0.5"


def lines(spoofed: str, real: str) -> list[tuple[str, str]]:
    """What two proxies pass on, each adding a line: the client's own line, the first
    proxy's line naming the client, the second proxy's line naming the first proxy.

    The first line alone names whoever the client says; the last line alone names a
    trusted proxy. Only all lines, in order, read right to left, name the client.
    """
    return [
        ("x-forwarded-for", spoofed),
        ("x-forwarded-for", real),
        ("x-forwarded-for", INNER_PROXY),
    ]


async def test_session_records_the_address_the_proxy_added(make_tw: MakeTw) -> None:
    tw = await make_tw(**GENEROUS_LIMITS, trusted_proxies=PROXIES)
    real = client_address()
    async with isolated_client(tw) as client:
        accounts = Accounts(client)
        email = await accounts.register()
        r = await client.post(
            "/auth/login",
            json={"email": email, "password": PASSWORD},
            headers=[("x-auth-transport", "bearer"), *lines("6.6.6.6, 7.7.7.7", real)],
        )
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        listed = (await client.get("/auth/sessions", headers=auth)).json()
    assert [s["ip"] for s in listed] == [real]


async def test_rate_limit_bucket_is_the_proxys_not_the_clients_choice(make_tw: MakeTw) -> None:
    """Three registrations from one real client, each with a different self-written first
    line: the third is over a limit of two (before the fix each line was its own bucket)."""
    tw = await make_tw(**{**GENEROUS_LIMITS, "register_ip_limit": 2}, trusted_proxies=PROXIES)
    real = client_address()
    statuses = []
    async with isolated_client(tw) as client:
        for i in range(3):
            r = await client.post(
                "/auth/register",
                json={"email": Accounts.new_email(), "password": PASSWORD},
                headers=lines(f"203.0.113.{i + 1}", real),
            )
            statuses.append(r.status_code)
    assert statuses == [201, 201, 429]


async def _call(app: Any, scope: dict[str, Any]) -> int:
    """One request through the ASGI app with exactly this scope; returns the status."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def test_access_log_names_the_address_the_proxy_added(
    make_tw: MakeTw, caplog: pytest.LogCaptureFixture
) -> None:
    """The access log reads every line too (a raw scope with three ``x-forwarded-for``;
    before the fix the access log read only the last one: the inner proxy's address)."""
    tw = await make_tw(trusted_proxies=PROXIES, access_log="true")
    app = create_app(tw, manage_lifespan=False)
    real = client_address()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"tokenward.test"),
            *((k.encode(), v.encode()) for k, v in lines("6.6.6.6", real)),
        ],
        "client": ("10.9.8.7", 40000),
        "server": ("tokenward.test", 443),
    }
    with caplog.at_level(logging.INFO, logger="tokenward.access"):
        assert await _call(app, scope) == 200
    events = [r.event for r in caplog.records if r.name == "tokenward.access"]  # type: ignore[attr-defined]
    assert [e["ip"] for e in events] == [real]


async def test_untrusted_peer_still_ignores_every_line(make_tw: MakeTw) -> None:
    """Joining lines believes nothing new: from an untrusted peer no line counts."""
    tw = await make_tw(**GENEROUS_LIMITS)  # no trusted proxies
    async with isolated_client(tw) as client:
        accounts = Accounts(client)
        email = await accounts.register()
        r = await client.post(
            "/auth/login",
            json={"email": email, "password": PASSWORD},
            headers=[("x-auth-transport", "bearer"), *lines("6.6.6.6", "7.7.7.7")],
        )
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        ips = {s["ip"] for s in (await client.get("/auth/sessions", headers=auth)).json()}
    assert len(ips) == 1
    assert ips.pop().startswith("10."), "the peer, not a forwarded address"


def test_httpx_keeps_repeated_header_lines() -> None:
    """The in-process tests above rely on httpx sending two lines, not one joined line."""
    request = httpx.Request("GET", "https://x.test/", headers=lines("a", "b"))
    assert [v for k, v in request.headers.raw if k == b"x-forwarded-for"] == [
        b"a",
        b"b",
        INNER_PROXY.encode(),
    ]
