"""What a password login sends to Redis before it answers (issue 11): the login throttle's
two checks (the address, then the account: an address refused alone must not count
against the account), its success in one pipeline, and the session in one script that also
renews the user's verified marker. Its security events and the device check are written
after the answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from private_redis import private_redis
from tokenward.http.app import create_app
from tw_accounts import BEARER, ORIGIN, PASSWORD, Accounts
from tw_factory import TokenwardFactory

#: Keys of what a login writes after its answer (security events, known devices).
BACKGROUND = ("tw:{ev:", "tw:{events:")


async def test_a_login_is_four_round_trips_before_its_answer(tmp_path: Path) -> None:
    """On a Redis of its own (MONITOR sees only this login), a verified user's login sends
    two throttle scripts, the success pipeline (DEL, ZREM, ZREM, the known-address script)
    and the session script, which renews the verified marker: no command of its own."""
    with private_redis(tmp_path) as server:
        factory = TokenwardFactory(server.url, tmp_path, issuer=ORIGIN)
        try:
            tw = await factory.make()
            app = create_app(tw, manage_lifespan=False)
            transport = httpx.ASGITransport(app=app, client=("10.9.8.7", 4000))
            async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
                accounts = Accounts(client)
                email = await accounts.register()
                user = await tw.user_store.by_email(email)
                assert user is not None
                await tw.email_flows.mark_verified(user, now=tw.clock.now())
                await accounts.login_bearer(email)  # scripts loaded, connections open
                await tw.events.drain()
                await server_marker(server.url)
                watcher = aioredis.Redis.from_url(server.url, decode_responses=True)
                sent: list[str] = []
                try:
                    async with watcher.monitor() as monitor:
                        r = await client.post(
                            "/auth/login",
                            json={"email": email, "password": PASSWORD},
                            headers=BEARER,
                        )
                        await server_marker(server.url)
                        async with asyncio.timeout(10):
                            async for cmd in monitor.listen():
                                text = cmd["command"]
                                if "login-round-trip-end" in text:
                                    break
                                if cmd.get("client_type") != "lua":
                                    sent.append(text)
                finally:
                    await watcher.aclose()
                assert r.status_code == 200, r.text
                on_path = [c for c in sent if not any(k in c for k in BACKGROUND)]
                on_path = [c for c in on_path if c.split()[0].upper() not in ("HELLO", "PING")]
                verbs = [c.split()[0].upper() for c in on_path]
                assert verbs == [
                    "EVALSHA",
                    "EVALSHA",
                    "DEL",
                    "ZREM",
                    "ZREM",
                    "EVALSHA",
                    "EVALSHA",
                ], on_path
                assert ":known " in on_path[5]
                create = on_path[6]
                assert f"tw:{{u:{user.id}}}:verified" in create, create
                ttl = await tw.redis.ttl(f"tw:{{u:{user.id}}}:verified")
                assert tw.settings.session_max_ttl - 60 < ttl <= tw.settings.session_max_ttl
        finally:
            await factory.stop_all()


async def server_marker(url: str) -> None:
    marker = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await marker.echo("login-round-trip-end")
    finally:
        await marker.aclose()
