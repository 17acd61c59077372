"""A refresh is one Redis round trip, also with what its access token carries besides the
session (the user's verified address, the session's second-factor level)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import jwt
import redis.asyncio as aioredis

from private_redis import private_redis
from tokenward.authn import AuthLevel
from tokenward.sessions import Issued, UserRef
from tw_factory import TokenwardFactory


async def _client_commands(url: str, work: Callable[[], Awaitable[object]]) -> list[str]:
    """The commands clients sent while ``work`` ran (``MONITOR``; commands run inside a
    script are left out), up to an ``ECHO`` sent after it."""
    watcher = aioredis.Redis.from_url(url, decode_responses=True)
    marker = aioredis.Redis.from_url(url, decode_responses=True)
    seen: list[str] = []
    try:
        async with watcher.monitor() as monitor:
            await work()
            await marker.echo("round-trip-test-end")
            async with asyncio.timeout(10):
                async for cmd in monitor.listen():
                    if "round-trip-test-end" in cmd["command"]:
                        break
                    if cmd.get("client_type") != "lua":
                        seen.append(cmd["command"].split()[0].upper())
    finally:
        await watcher.aclose()
        await marker.aclose()
    # Pub/sub (the feed) and the handshakes of new connections (the marker's) are not data.
    return [c for c in seen if c not in ("PUBLISH", "SPUBLISH", "PING", "HELLO", "CLIENT")]


async def test_a_refresh_is_one_script_and_reads_its_claims_in_it(tmp_path: Path) -> None:
    """On a Redis of its own, a refresh of a session opened with a second factor, by a user
    whose address is verified, sends one command (the rotation script) and no other; its
    access token still says ``email_verified`` and ``amr`` ``otp``. (The revocation feed's
    pings are pub/sub traffic, left out.)"""
    with private_redis(tmp_path) as server:
        factory = TokenwardFactory(server.url, tmp_path, issuer="https://tokenward.test")
        try:
            tw = await factory.make()
            now = tw.clock.now()
            user = UserRef("a" * 32, "round@example.com", now, True)
            await tw.links.mark_verified(user.id, ttl=3600)
            level = AuthLevel(("pwd", "otp", "mfa"), now)
            issued = await tw.sessions.open(
                user, ip="192.0.2.1", user_agent="t", now=now, level=level
            )
            token = issued.refresh_token
            await tw.sessions.refresh(token, csrf_token=None, now=tw.clock.now())  # loads it
            issued = await tw.sessions.refresh(token, csrf_token=None, now=tw.clock.now())
            token = issued.refresh_token  # the grace replay above gave the same successor
            for _ in range(3):
                done: list[Issued] = []

                async def refresh(token: str = token, done: list[Issued] = done) -> None:
                    done.append(await tw.sessions.refresh(token, csrf_token=None, now=now))

                sent = await _client_commands(server.url, refresh)
                assert sent == ["EVALSHA"], sent
                issued = done[0]
                token = issued.refresh_token
                claims = jwt.decode(issued.access_token, options={"verify_signature": False})
                assert claims["email_verified"] is True
                assert "otp" in claims["amr"]
                assert claims["auth_time"] == now
        finally:
            await factory.stop_all()
