"""After a key rotation, an expired token of the retired key says "refresh", not "log in".

The retired key leaves the JWKS once every token it signed has expired, so a client that
slept through a rotation presents an expired token naming a ``kid`` nobody publishes any
more. Its session can still refresh; answering ``unauthenticated`` sent it to the login
page. The answer is ``token-expired`` when the ``kid`` has the shape of ours and the
unverified payload names our issuer and audience and is past ``exp``; those claims choose
the problem type and nothing else (a forgery answered "expired" changes nothing).

Real rotations of the key file under a running Tokenward (FrozenClock moved past the retain
period), requests through the real app.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from typing import Any

import httpx
import jwt
import pytest
from ops_support import MakeOpsTw, ops_client, register_and_login

from tokenward.blocking_verifier import Verifier
from tokenward.clock import FrozenClock
from tokenward.errors import TokenExpired, TokenInvalid
from tokenward.keyring import retain_seconds, rotate
from tokenward.keys import GENERATED_KEYS_FILE, KeySet, generate_key
from tokenward.runtime import Tokenward
from tokenward.tokens import AccessTokens, AccessTokenVerifier

PROBLEM = "urn:tokenward:problem:"
BEARER = {"X-Auth-Transport": "bearer"}


def _kid(token: str) -> str:
    header = token.split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    return kid


async def _rotate_until_the_key_leaves(tw: Tokenward, client: httpx.AsyncClient) -> str:
    """Rotate the deployment's key and move the clock until the old key left the JWKS."""
    clock = tw.clock
    assert isinstance(clock, FrozenClock)
    old_kid = tw.keys.signing_key.kid
    retain = retain_seconds(tw.settings)
    done = rotate(
        tw.settings.data_dir / GENERATED_KEYS_FILE,
        alg="EdDSA",
        now=clock.now(),
        activate_in=60,
        retain=retain,
    )
    assert tw.reload_keys()
    clock.advance(60)
    assert tw.reload_keys()
    clock.advance(retain)
    assert tw.reload_keys()
    published = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert published == {done.new.kid}
    return old_kid


async def _me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})


async def test_expired_token_of_a_retired_key_answers_token_expired_and_refresh_works(
    make_ops_tw: MakeOpsTw,
) -> None:
    """Bearer: old token -> 401 token-expired (was unauthenticated); refresh -> 200."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        login = await register_and_login(client, "slept@example.com")
        old_token = login["access_token"]
        assert (await _me(client, old_token)).status_code == 200
        old_kid = await _rotate_until_the_key_leaves(tw, client)
        assert _kid(old_token) == old_kid

        r = await _me(client, old_token)
        assert r.status_code == 401
        assert r.json()["type"] == PROBLEM + "token-expired", r.json()

        r = await client.post(
            "/auth/refresh", json={"refresh_token": login["refresh_token"]}, headers=BEARER
        )
        assert r.status_code == 200, r.text
        fresh = r.json()["access_token"]
        assert _kid(fresh) != old_kid
        assert (await _me(client, fresh)).status_code == 200


async def test_cookie_client_is_refreshed_in_place_after_the_rotation(
    make_ops_tw: MakeOpsTw,
) -> None:
    """Cookies with transparent refresh: the retired key's expired cookie is refreshed in
    place (200 and new cookies) instead of a 401 that sent the browser to the login page."""
    tw = await make_ops_tw(transparent_refresh="true")
    async with ops_client(tw) as client:
        await register_and_login(client, "browser@example.com")  # registers; bearer login
        r = await client.post(
            "/auth/login",
            json={"email": "browser@example.com", "password": "violet tractor 42 umbrella"},
        )
        assert r.status_code == 200, r.text
        old_cookie = client.cookies.get("__Host-access_token")
        assert old_cookie
        await _rotate_until_the_key_leaves(tw, client)
        r = await client.get("/auth/me")
        assert r.status_code == 200, r.text
        assert client.cookies.get("__Host-access_token") not in (None, old_cookie)


async def test_unknown_key_tokens_that_are_not_expired_stay_unauthenticated(
    make_ops_tw: MakeOpsTw,
) -> None:
    """Only the expired case changes: a live-looking token of a key never published, an
    expired one for another issuer, or one with a kid unlike ours is ``unauthenticated``."""
    tw = await make_ops_tw()
    now = tw.clock.now()
    stranger = KeySet([generate_key()])
    ours = {"issuer": tw.settings.effective_issuer, "audience": tw.settings.audience}
    live, _ = AccessTokens(stranger, **ours, ttl=600).issue(sub="u", sid="s", now=now)
    late, _ = AccessTokens(stranger, **ours, ttl=600).issue(sub="u", sid="s", now=now - 3600)
    other_issuer, _ = AccessTokens(
        stranger, issuer="https://elsewhere.test", audience=tw.settings.audience, ttl=600
    ).issue(sub="u", sid="s", now=now - 3600)
    async with ops_client(tw) as client:
        for token in (live, other_issuer):
            r = await _me(client, token)
            assert r.status_code == 401
            assert r.json()["type"] == PROBLEM + "unauthenticated", r.json()
        # The same expired token under our issuer: the answer a slept client needs.
        r = await _me(client, late)
        assert r.json()["type"] == PROBLEM + "token-expired", r.json()


async def test_an_expired_forgery_naming_an_unknown_key_changes_nothing(
    make_ops_tw: MakeOpsTw,
) -> None:
    """A forged expired token for the victim's session, signed by the attacker's key, may be
    told "expired" but logs nobody out and refreshes nothing: the victim carries on."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        victim = await register_and_login(client, "victim@example.com")
        user_id, session_id = victim["user"]["id"], victim["session"]["id"]
        forged, _ = AccessTokens(
            KeySet([generate_key()]),
            issuer=tw.settings.effective_issuer,
            audience=tw.settings.audience,
            ttl=600,
        ).issue(sub=user_id, sid=session_id, now=tw.clock.now() - 3600)
        auth = {"Authorization": f"Bearer {forged}"}
        answers = [
            await client.post("/auth/logout", headers=auth),
            await client.post("/auth/logout-all", headers=auth),
            await client.delete(f"/auth/sessions/{session_id}", headers=auth),
            await client.post("/auth/refresh", json={}, headers={**auth, **BEARER}),
        ]
        assert all(r.status_code in (401, 422) for r in answers), [
            (r.request.url.path, r.status_code) for r in answers
        ]
        assert (await _me(client, victim["access_token"])).status_code == 200
        r = await client.post(
            "/auth/refresh", json={"refresh_token": victim["refresh_token"]}, headers=BEARER
        )
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("kid", "claims", "expected"),
    [
        ("thumbprint", {}, TokenExpired),
        ("thumbprint", {"exp": "soon"}, TokenInvalid),
        ("thumbprint", {"aud": "another-service"}, TokenInvalid),
        ("attacker-key", {}, TokenInvalid),
        (None, {}, TokenInvalid),
    ],
)
def test_only_an_expired_token_of_ours_under_an_unknown_kid_is_expired(
    kid: str | None, claims: dict[str, Any], expected: type[Exception]
) -> None:
    """The unverified payload must be ours and past ``exp``; the kid shaped like ours."""
    now = int(time.time())
    stranger = generate_key()
    header: dict[str, Any] = {"alg": "EdDSA", "typ": "at+jwt"}
    if kid is not None:
        header["kid"] = stranger.kid if kid == "thumbprint" else kid
    payload = {
        "iss": "https://t.test", "aud": "tokenward", "sub": "u", "sid": "s",
        "iat": now - 3600, "exp": now - 3000, "jti": "j", **claims,
    }  # fmt: skip
    token = jwt.encode(payload, stranger.private_key, algorithm="EdDSA", headers=header)
    verifier = AccessTokenVerifier(
        KeySet([generate_key()]), issuer="https://t.test", audience="tokenward"
    )
    with pytest.raises(expected):
        verifier.verify(token, now=now)


def test_verifier_answers_token_expired_without_refetching_the_jwks() -> None:
    """A service's Verifier, given an expired token of a key its issuer no longer
    publishes, says TokenExpired at once: no JWKS refetch (an unknown kid on a live token
    still triggers one, then TokenInvalid)."""
    now = int(time.time())
    current = KeySet([generate_key()])
    body = json.dumps(current.jwks()).encode()
    fetches: list[str] = []

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    issuer = f"http://127.0.0.1:{server.server_address[1]}"
    retired = AccessTokens(KeySet([generate_key()]), issuer=issuer, audience="tokenward", ttl=600)
    expired, _ = retired.issue(sub="u", sid="s", now=now - 3600)
    live, _ = retired.issue(sub="u", sid="s", now=now)
    try:
        with Verifier(issuer, timeout=10, min_refetch_interval=0.0) as verifier:
            assert len(fetches) == 1
            with pytest.raises(TokenExpired):
                verifier.verify(expired)
            assert len(fetches) == 1, "an expired token made the verifier refetch"
            with pytest.raises(TokenInvalid):
                verifier.verify(live)
            assert len(fetches) == 2  # the unknown kid of a live token: one refetch
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
