"""The verifier in-process: keys from a JWKS served over real HTTP, sessions from real Redis.

The JWKS comes from a small Starlette app on a real socket (so fetches can be counted and
keys published at will); tokens are issued by a real ``AccessTokens`` or a started Tokenward.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenward import AsyncVerifier, Verifier
from tokenward.clock import FrozenClock
from tokenward.errors import SessionEnded, TokenExpired, TokenInvalid, Unavailable
from tokenward.keys import KeySet, generate_key
from tokenward.runtime import Tokenward
from tokenward.sessions import EndReason, UserRef
from tokenward.tokens import AccessTokens
from waiting import await_until, poll_until

ISSUER = "https://app.test"
NOW = int(time.time())


@dataclass
class JwksServer:
    """Serves ``document`` at /.well-known/jwks.json and counts the requests."""

    document: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    fetches: int = 0
    url: str = ""
    status: int = 200

    def publish(self, *keys: KeySet) -> None:
        self.document = {"keys": [jwk for ks in keys for jwk in ks.jwks()["keys"]]}


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    state = JwksServer()

    async def jwks(request: Request) -> Response:
        state.fetches += 1
        if state.status != 200:
            return Response(b"down", status_code=state.status)
        return JSONResponse(state.document)

    app = Starlette(routes=[Route("/.well-known/jwks.json", jwks)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await await_until(lambda: server.started, within=2.0, what="the JWKS server listens")
    state.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    yield state
    server.should_exit = True
    await task
    sock.close()


def issuer_of(keys: KeySet, **options: Any) -> AccessTokens:
    return AccessTokens(keys, issuer=options.get("issuer", ISSUER), audience="tokenward", ttl=600)


def verifier_for(server: JwksServer, **options: Any) -> AsyncVerifier:
    options.setdefault("clock", FrozenClock(NOW))
    return AsyncVerifier(ISSUER, jwks_url=server.url, **options)


async def test_valid_token_accepted_and_claims_returned(jwks_server: JwksServer) -> None:
    """A token signed by a published key verifies; the claims are the issuer's."""
    keys = KeySet([generate_key()])
    jwks_server.publish(keys)
    token, claims = issuer_of(keys).issue(sub="u1", sid="s1", now=NOW)
    async with verifier_for(jwks_server) as verifier:
        assert await verifier.verify(token) == claims
        assert await verifier.verify_authorization(f"Bearer {token}") == claims
        assert verifier.key_ids == {keys.signing_key.kid}


async def test_tampered_wrong_audience_and_expired_refused(jwks_server: JwksServer) -> None:
    """The issuer's own checks: signature, iss/aud, exp with leeway, Bearer syntax."""
    keys = KeySet([generate_key("ES256")])
    jwks_server.publish(keys)
    token, _ = issuer_of(keys).issue(sub="u1", sid="s1", now=NOW)
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{sig}"
    other_iss, _ = issuer_of(keys, issuer="https://evil.test").issue(sub="u1", sid="s1", now=NOW)
    clock = FrozenClock(NOW)
    async with verifier_for(jwks_server, clock=clock) as verifier:
        for bad in (tampered, other_iss, "", "a.b.c", token + "x"):
            with pytest.raises(TokenInvalid):
                await verifier.verify(bad)
        with pytest.raises(TokenInvalid):
            await verifier.verify_authorization(f"Basic {token}")
        clock.advance(600 + 30 + 1)
        with pytest.raises(TokenExpired):
            await verifier.verify(token)


async def test_unknown_kid_refetches_once_for_a_burst(jwks_server: JwksServer) -> None:
    """A rotated-in key is learned by one refetch, even when many requests bring it at once."""
    old, new = KeySet([generate_key()]), KeySet([generate_key()])
    jwks_server.publish(old)
    async with verifier_for(jwks_server, min_refetch_interval=0) as verifier:
        assert jwks_server.fetches == 1
        jwks_server.publish(old, new)
        token, claims = issuer_of(new).issue(sub="u1", sid="s1", now=NOW)
        results = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
        assert results == [claims] * 20
        assert jwks_server.fetches == 2
        assert new.signing_key.kid in verifier.key_ids


async def test_unknown_kid_refetch_is_rate_limited(jwks_server: JwksServer) -> None:
    """Within min_refetch_interval no unknown kid causes a fetch: forged kids cannot flood."""
    old, new = KeySet([generate_key()]), KeySet([generate_key()])
    jwks_server.publish(old)
    async with verifier_for(jwks_server, min_refetch_interval=3600) as verifier:
        jwks_server.publish(old, new)
        token, _ = issuer_of(new).issue(sub="u1", sid="s1", now=NOW)
        for _ in range(10):
            with pytest.raises(TokenInvalid):
                await verifier.verify(token)
        assert jwks_server.fetches == 1
        assert new.signing_key.kid not in verifier.key_ids


async def test_failed_fetch_keeps_the_old_keys(jwks_server: JwksServer) -> None:
    """A JWKS outage neither drops known keys nor lets unknown ones in."""
    keys = KeySet([generate_key()])
    jwks_server.publish(keys)
    token, claims = issuer_of(keys).issue(sub="u1", sid="s1", now=NOW)
    async with verifier_for(jwks_server, min_refetch_interval=0) as verifier:
        jwks_server.status = 503
        stranger, _ = issuer_of(KeySet([generate_key()])).issue(sub="u", sid="s", now=NOW)
        with pytest.raises(TokenInvalid):
            await verifier.verify(stranger)
        assert jwks_server.fetches == 2
        assert await verifier.verify(token) == claims


async def test_start_fails_when_jwks_unreachable(jwks_server: JwksServer) -> None:
    """No keys at start is a clear Unavailable, not a verifier that refuses everything."""
    jwks_server.status = 500
    verifier = verifier_for(jwks_server)
    with pytest.raises(Unavailable):
        await verifier.start()
    await verifier.stop()


async def _login(tw: Tokenward) -> tuple[str, str, str]:
    """A real session of a new user: (access token, uid, sid)."""
    uid = f"user-{time.time_ns()}"
    issued = await tw.sessions.open(
        UserRef(uid, f"{uid}@example.com", NOW),
        ip="127.0.0.1",
        user_agent="test",
        now=tw.clock.now(),
    )
    return issued.access_token, issued.uid, issued.sid


async def _evalsha_calls(redis_url: str) -> int:
    client = aioredis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_logout_refused_within_a_second_without_lookup_per_request(
    tw: Tokenward, jwks_server: JwksServer, redis_url: str
) -> None:
    """With Redis: one lookup on first sight, none after, and an ended session refused < 1 s."""
    jwks_server.publish(tw.keys)
    token, uid, sid = await _login(tw)
    async with verifier_for(jwks_server, redis_url=redis_url, clock=tw.clock) as verifier:
        claims = await verifier.verify(token)
        before = await _evalsha_calls(redis_url)
        for _ in range(50):
            assert await verifier.verify(token) == claims
        assert await _evalsha_calls(redis_url) == before, "a cached session must not hit Redis"
        await tw.sessions.end(uid, sid, EndReason.LOGOUT, now=tw.clock.now())

        async def refused() -> bool:
            try:
                await verifier.verify(token)
            except SessionEnded:
                return True
            return False

        await await_until(refused, within=1.0, what="the verifier refuses the ended session")


async def test_session_ended_before_first_sight_is_refused(
    tw: Tokenward, jwks_server: JwksServer, redis_url: str
) -> None:
    """The feed only announces endings: a session never seen is looked up, not assumed live."""
    jwks_server.publish(tw.keys)
    token, uid, sid = await _login(tw)
    await tw.sessions.end(uid, sid, EndReason.LOGOUT, now=tw.clock.now())
    async with verifier_for(jwks_server, redis_url=redis_url, clock=tw.clock) as verifier:
        with pytest.raises(SessionEnded):
            await verifier.verify(token)


async def test_without_redis_only_the_token_is_checked(
    tw: Tokenward, jwks_server: JwksServer
) -> None:
    """Documented trade-off: no Redis, no revocation; the token lives until exp."""
    jwks_server.publish(tw.keys)
    token, uid, sid = await _login(tw)
    await tw.sessions.end(uid, sid, EndReason.LOGOUT, now=tw.clock.now())
    async with verifier_for(jwks_server, clock=tw.clock) as verifier:
        assert (await verifier.verify(token)).sid == sid


async def test_blocking_verifier_from_threads(
    tw: Tokenward, jwks_server: JwksServer, redis_url: str
) -> None:
    """The sync Verifier: threads verify concurrently; logout is seen; close is clean."""
    jwks_server.publish(tw.keys)
    token, uid, sid = await _login(tw)
    verifier = Verifier(ISSUER, jwks_url=jwks_server.url, redis_url=redis_url, clock=tw.clock)
    # The JWKS server runs on this loop: start the verifier off-loop so the loop can answer.
    await asyncio.to_thread(verifier.start)
    try:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(20):
                    assert verifier.verify_authorization(f"Bearer {token}").sid == sid
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        await asyncio.to_thread(lambda: [(t.start(), t.join()) for t in threads])
        assert errors == []
        await tw.sessions.end(uid, sid, EndReason.LOGOUT, now=tw.clock.now())

        def refused() -> bool:
            try:
                verifier.verify(token)
            except SessionEnded:
                return True
            return False

        # In a thread: the blocking verifier must not be called on the event loop.
        assert await asyncio.to_thread(poll_until, refused, within=1.0)
        with pytest.raises(TokenInvalid):
            await asyncio.to_thread(verifier.verify, "forged.token.value")
    finally:
        await asyncio.to_thread(verifier.close)
    assert verifier.key_ids == frozenset()


def test_public_jwks_parsing_refuses_foreign_material() -> None:
    """PublicKeySet keeps only public Ed25519/P-256 signature keys, pinned to their type."""
    from tokenward.jwks import PublicKeySet

    ed, ec = generate_key("EdDSA"), generate_key("ES256")
    doc = {
        "keys": [
            ed.private_jwk(),  # private members are ignored: only the public half is read
            {**ec.public_jwk(), "alg": "HS256"},  # claims another algorithm: skipped
            {"kty": "RSA", "kid": "r", "n": "x", "e": "AQAB"},  # unsupported type: skipped
            {**ec.public_jwk(), "kid": "enc", "use": "enc"},  # not a signature key: skipped
            {"kty": "OKP", "crv": "Ed25519", "kid": "broken", "x": "!!"},
            "not a jwk",
        ]
    }
    keys = PublicKeySet.from_jwks(doc)
    assert keys.kids == {ed.kid}
    found = keys.get(ed.kid)
    assert found is not None
    assert found.alg == "EdDSA"
    assert not hasattr(found.public_key, "sign")
    for bad in ({}, {"keys": "x"}, {"keys": [doc["keys"][2]]}, []):
        with pytest.raises(ValueError, match="JWK Set"):
            PublicKeySet.from_jwks(bad)


async def test_httpx_is_the_transport(jwks_server: JwksServer) -> None:
    """Sanity: the served JWKS is what a plain HTTP client sees."""
    keys = KeySet([generate_key()])
    jwks_server.publish(keys)
    async with httpx.AsyncClient() as client:
        assert (await client.get(jwks_server.url)).json() == keys.jwks()
