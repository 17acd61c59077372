"""A refresh token of any size that does not verify is a 401, in the body or in the cookie.

Over real HTTP (a uvicorn server on 127.0.0.1): a 10 KB or 100 KB "refresh token" is a
wrong credential, not a malformed request, on ``/auth/refresh`` and ``/auth/logout``. Only
the body's size limit (16 KiB, 413) and the JSON type (a non-string is 422) come before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from abuse_support import BEARER, LiveServer

from tokenward.http.body import MAX_BODY

PROBLEM = "application/problem+json"
ROUTES = ["/auth/refresh", "/auth/logout"]
SIZES = [10_000, 100_000]


@pytest.fixture
def http(fuzz_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as c:
        yield c


def problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:tokenward:problem:{slug}"
    return body


def giant_token(size: int) -> str:
    """Shaped like a refresh token, ``size`` characters long."""
    return "a" * 32 + "." + "b" * 22 + "." + "c" * (size - 56)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("path", ROUTES)
def test_a_giant_refresh_token_in_the_body_is_401_or_413(
    http: httpx.Client, path: str, size: int
) -> None:
    """Within the body limit: 401 (the token does not verify). Past it: 413, unread."""
    token = giant_token(size)
    assert len(token) == size
    r = http.post(path, json={"refresh_token": token}, headers=BEARER)
    if size + len('{"refresh_token":""}') <= MAX_BODY:
        problem(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"].startswith("Bearer")
    else:
        problem(r, 413, "payload-too-large")
    assert token[:100] not in r.text


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("path", ROUTES)
def test_a_giant_refresh_cookie_is_401(
    http: httpx.Client, fuzz_server: LiveServer, path: str, size: int
) -> None:
    """A 10 KB or 100 KB refresh cookie (with a matching CSRF pair): 401, cookies cleared
    on refresh."""
    names = fuzz_server.tw.cookies.names
    cookie = f"{names.refresh}={giant_token(size)}; {names.csrf}=t"
    r = http.post(path, headers={"cookie": cookie, "x-csrf-token": "t"})
    problem(r, 401, "unauthenticated")
    if path == "/auth/refresh":
        cleared = r.headers.get_list("set-cookie")
        assert any(c.startswith(f"{names.refresh}=") for c in cleared), cleared


def test_a_bearer_logout_ignores_a_giant_body_token(
    http: httpx.Client, fuzz_server: LiveServer
) -> None:
    """With a bearer token, the body's ``refresh_token`` is not the credential: any string
    there is accepted (and ignored), as a short one always was."""
    tokens = fuzz_server.bearer_login(http)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    r = http.post("/auth/logout", json={"refresh_token": giant_token(10_000)}, headers=auth)
    assert r.status_code == 204, r.text
    problem(http.get("/auth/me", headers=auth), 401, "unauthenticated")


@pytest.mark.parametrize("value", [123, ["x" * 10_000], {"t": "x"}, True])
@pytest.mark.parametrize("path", ROUTES)
def test_a_refresh_token_that_is_not_a_string_stays_422(
    http: httpx.Client, path: str, value: object
) -> None:
    """Only the size rule changed: a body whose ``refresh_token`` is not a string is 422."""
    body = problem(
        http.post(path, json={"refresh_token": value}, headers=BEARER), 422, "validation"
    )
    assert body["rule"] == "type"
