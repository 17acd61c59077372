"""Over HTTP: a correctly signed access token living longer than the access TTL, and a
genuine token re-spelled with ``=`` padding, are both 401.

The tokens are signed with the server's own current key for a live session, so before the
fix both were accepted (200): the first for as long as its signer chose, the second as a
separate entry of the verified-token cache.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_support import GENEROUS_LIMITS, Accounts, MakeTw

from tokenward.runtime import Tokenward

PROBLEM = "urn:tokenward:problem:"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_with_server_key(tw: Tokenward, payload: dict[str, Any]) -> str:
    key = tw.keys.signing_key
    private = key.private_key
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    header = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return signing_input + "." + b64url(private.sign(signing_input.encode()))


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    return await make_tw(**GENEROUS_LIMITS)


async def test_token_longer_than_ttl_plus_leeway_is_401(
    tw: Tokenward, client: httpx.AsyncClient
) -> None:
    session = await Accounts(client).new_bearer()
    now = tw.clock.now()
    s = tw.settings

    def token(lifetime: int) -> dict[str, str]:
        payload = {
            "iss": s.effective_issuer,
            "aud": s.audience,
            "sub": session["user"]["id"],
            "sid": session["session"]["id"],
            "iat": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        return {"Authorization": f"Bearer {sign_with_server_key(tw, payload)}"}

    ok = await client.get("/auth/me", headers=token(s.access_ttl + s.leeway))
    assert ok.status_code == 200, ok.text
    for lifetime in (s.access_ttl + s.leeway + 1, 30 * 86_400):
        r = await client.get("/auth/me", headers=token(lifetime))
        assert r.status_code == 401, (lifetime, r.text)
        assert r.json()["type"] == PROBLEM + "unauthenticated"


async def test_padded_spelling_of_a_genuine_token_is_401(client: httpx.AsyncClient) -> None:
    session = await Accounts(client).new_bearer()
    genuine = session["access_token"]
    assert (await client.get("/auth/me", headers={"Authorization": f"Bearer {genuine}"})).is_success
    header, payload, signature = genuine.split(".")
    padded = [
        ".".join((header, payload, signature + "=" * (-len(signature) % 4))),
        ".".join((header, payload + "=" * (-len(payload) % 4), signature)),
    ]
    for token in padded:
        if token == genuine:
            continue
        r = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, (token[-4:], r.text)
        assert r.json()["type"] == PROBLEM + "unauthenticated"
