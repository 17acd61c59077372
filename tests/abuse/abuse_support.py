"""Helpers for the abuse tests: clients at chosen addresses, accounts, Redis inspection.

Not a test module and not the conftest, so test files import it by a unique name
(``from abuse_support import ...``). Every test that counts attempts uses fresh client
addresses (:func:`fresh_ip`): the whole run shares one Redis, and per-address limits must
not leak between tests (or into other suites, which all come from 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvicorn

from tokenward.http.app import create_app
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings
from tw_accounts import (  # noqa: F401 - re-exported
    BEARER,
    GENEROUS_LIMITS,
    ORIGIN,
    PASSWORD,
    Accounts,
    new_email,
)
from waiting import wait_until

#: Limits no test that is not about throttling can trip (the run shares one Redis).

#: ``make_tw(argon2=CHEAP_FOR_TESTS, clock=None, **settings)``: started instances.
MakeTw = Callable[..., Awaitable[Tokenward]]

_rng = random.SystemRandom()


_run_prefix = _rng.randint(0, 0xFFFF)
_next_ip = itertools.count(1)


def fresh_ip() -> str:
    """An address no other test uses: each call gets its own IPv6 /64 (the unit of
    per-address limits) in the documentation range 2001:db8::/32."""
    return f"2001:db8:{_run_prefix:x}:{next(_next_ip):x}::1"


def client_for(tw: Tokenward, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client on ``tw``'s app whose requests come from ``ip`` (the socket peer)."""
    app = create_app(tw, manage_lifespan=False)
    transport = httpx.ASGITransport(app=app, client=(ip, 40_000))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN)


async def login(
    client: httpx.AsyncClient, email: str, password: str, **headers: str
) -> httpx.Response:
    """One JSON login attempt in bearer mode."""
    return await client.post(
        "/auth/login", json={"email": email, "password": password}, headers={**BEARER, **headers}
    )


async def all_keys(redis: aioredis.Redis, pattern: str = "*") -> list[str]:
    """Every key matching ``pattern`` (SCAN, never KEYS)."""
    return [k async for k in redis.scan_iter(match=pattern, count=1000)]


def count_hashing(tw: Tokenward) -> dict[str, int]:
    """Count argon2 verifications and hashes from now on (a spy, not a mock: it calls through)."""
    calls = {"verify": 0, "hash": 0}
    verify, hash_ = tw.hasher.verify, tw.hasher.hash

    async def counting_verify(encoded: str | None, password: str) -> bool:
        calls["verify"] += 1
        return await verify(encoded, password)

    async def counting_hash(password: str) -> str:
        calls["hash"] += 1
        return await hash_(password)

    tw.hasher.verify = counting_verify  # type: ignore[method-assign]
    tw.hasher.hash = counting_hash  # type: ignore[method-assign]
    return calls


def without_volatile(headers: httpx.Headers) -> dict[str, str]:
    """Response headers minus those that differ on every response by design."""
    volatile = {"date", "x-request-id"}
    return {k: v for k, v in headers.multi_items() if k.lower() not in volatile}


@contextlib.contextmanager
def live_server(redis_url: str, data_dir: Path, **overrides: Any) -> Iterator[LiveServer]:
    """A real uvicorn server on 127.0.0.1 in a thread (its own event loop), for fuzzers that
    speak plain HTTP. Cheap hashing; settings overridable; stopped on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(data_dir),
        "TOKENWARD_ISSUER": base,
        "TOKENWARD_COOKIE_SECURE": "false",
    }
    env.update({f"TOKENWARD_{k.upper()}": str(v) for k, v in overrides.items()})
    tw = Tokenward(load_settings(env, env_file=data_dir / "no.env"), argon2=CHEAP_FOR_TESTS)
    config = uvicorn.Config(
        create_app(tw), log_level="warning", lifespan="on", access_log=False, loop="asyncio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("the test server did not start")
        return server.started

    wait_until(started, within=30, what="the test server started")
    try:
        yield LiveServer(base, tw)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@dataclass(frozen=True)
class LiveServer:
    """A running server: its base URL and its Tokenward (to read stores, not to call)."""

    url: str
    tw: Tokenward

    def bearer_login(self, client: httpx.Client, email: str | None = None) -> dict[str, Any]:
        """Register (when ``email`` is None) and log in over HTTP; the bearer body."""
        if email is None:
            email = new_email()
            r = client.post("/auth/register", json={"email": email, "password": PASSWORD})
            assert r.status_code == 201, r.text
        r = client.post("/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body
