"""Edge cases of the HTTP adapter found in review: header case, odd bytes, races, evictions."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from http_support import GENEROUS_LIMITS, ORIGIN, Accounts, MakeTw, isolated_client

from tokenward.admin import disable_user
from tokenward.errors import SessionEnded
from tokenward.http.auth import csrf_header_matches
from tokenward.http.body import MAX_BODY
from tokenward.http.routes import user_still_enabled
from tokenward.runtime import Tokenward
from tokenward.sessions import UserRef

PROBLEM = "urn:tokenward:problem:"
INVALID_TOKEN = 'Bearer error="invalid_token"'


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    """This module's service: default settings with the abuse limits out of the way."""
    return await make_tw(**GENEROUS_LIMITS)


def _problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["type"] == PROBLEM + slug
    return body


# ------------------------------------------------------- X-Auth-Transport, any letter case


@pytest.mark.parametrize("transport", ["bearer", "Bearer", "BEARER", " bearer "])
async def test_www_authenticate_does_not_depend_on_the_transport_headers_case(
    client: httpx.AsyncClient, transport: str
) -> None:
    """The route and the error handler read ``X-Auth-Transport`` alike, whatever its case."""
    headers = {"X-Auth-Transport": transport}
    refresh = await client.post("/auth/refresh", json={"refresh_token": "x"}, headers=headers)
    _problem(refresh, 401, "unauthenticated")
    assert refresh.headers["www-authenticate"] == INVALID_TOKEN
    me = await client.get("/auth/me", headers=headers)
    _problem(me, 401, "unauthenticated")
    assert me.headers["www-authenticate"] == INVALID_TOKEN


async def test_cookie_mode_401_has_no_www_authenticate(client: httpx.AsyncClient) -> None:
    """Without the header (or with another transport) a 401 does not invite Bearer."""
    for headers in ({}, {"X-Auth-Transport": "cookie"}):
        r = await client.get("/auth/me", headers=headers)
        _problem(r, 401, "unauthenticated")
        assert "www-authenticate" not in r.headers


# ------------------------------------------------------------------ CSRF, constant time


def test_csrf_header_comparison_takes_any_characters() -> None:
    """Compared as bytes: non-ASCII values neither crash ``compare_digest`` nor match."""
    assert csrf_header_matches("abc", "abc")
    assert csrf_header_matches("\u00e9", "\u00e9")
    assert not csrf_header_matches("\u00e9", "e")
    assert not csrf_header_matches("abc", "abd")
    assert not csrf_header_matches(None, "abc")
    assert not csrf_header_matches("abc", None)
    assert not csrf_header_matches("", "")


async def test_non_ascii_csrf_header_on_cookie_refresh_is_403(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """A latin-1 byte in ``X-CSRF-Token`` is a CSRF failure (403), not a 500."""
    await accounts.login_cookie(await accounts.register())
    r = await client.post(
        "/auth/refresh", headers=[(b"x-csrf-token", b"\xe9"), (b"origin", ORIGIN.encode())]
    )
    _problem(r, 403, "csrf")


# --------------------------------------------------------------------------- Content-Length


@pytest.mark.parametrize(
    ("length", "status", "slug"),
    [
        (b"\xb2", 400, "bad-request"),  # latin-1 superscript two: str.isdigit() says yes
        (b"\xd9\xa2", 400, "bad-request"),  # UTF-8 of an Arabic-Indic digit, read as latin-1
        (b"-1", 400, "bad-request"),
        (b"9" * 5000, 413, "payload-too-large"),  # past int()'s 4300-digit limit
        (str(MAX_BODY + 1).encode(), 413, "payload-too-large"),
    ],
)
async def test_odd_content_length_is_a_4xx_problem(
    client: httpx.AsyncClient, length: bytes, status: int, slug: str
) -> None:
    """A Content-Length that is not plain ASCII digits, or is huge, never reaches int()."""
    r = await client.post(
        "/auth/login",
        content=b"{}",
        headers=[(b"content-type", b"application/json"), (b"content-length", length)],
    )
    _problem(r, status, slug)


async def test_content_length_with_leading_zeros_is_read(client: httpx.AsyncClient) -> None:
    """Leading zeros are still a valid length (the body is then judged as usual)."""
    body = b'{"email": "a@b.test"}'
    r = await client.post(
        "/auth/login",
        content=body,
        headers=[
            (b"content-type", b"application/json"),
            (b"content-length", b"0" * 5000 + str(len(body)).encode()),
        ],
    )
    _problem(r, 422, "validation")


# ------------------------------------------------- a user disabled while logging in


async def _open_session(tw: Tokenward, email: str) -> Any:
    user = await tw.user_store.by_email(email)
    assert user is not None
    now = tw.clock.now()
    ref = UserRef(user.id, user.email, user.created_at)
    return await tw.sessions.open(ref, ip="10.0.0.1", user_agent="test", now=now)


async def test_login_recheck_keeps_the_session_of_an_enabled_user(
    tw: Tokenward, accounts: Accounts
) -> None:
    """The common case: the user is still enabled, the new session stays."""
    issued = await _open_session(tw, await accounts.register())
    now = tw.clock.now()
    assert await user_still_enabled(tw, issued, epoch=0, now=now)
    await tw.sessions.state(issued.uid, issued.sid, now=now)  # still live


async def test_login_recheck_ends_the_session_of_a_user_disabled_meanwhile(
    tw: Tokenward, accounts: Accounts
) -> None:
    """Disabled after ``authenticate`` read the user and before ``end_all`` could see the
    new session: the re-check ends it, with the reason ``user-disabled``."""
    issued = await _open_session(tw, await accounts.register())
    now = tw.clock.now()
    await tw.user_store.set_disabled(issued.uid, True, now=now)
    assert not await user_still_enabled(tw, issued, epoch=0, now=now)
    with pytest.raises(SessionEnded):
        await tw.sessions.state(issued.uid, issued.sid, now=now)
    assert (issued.sid, "user-disabled", now) in await tw.session_store.ended(issued.uid)


async def test_login_recheck_after_a_complete_disable_is_quiet(
    tw: Tokenward, accounts: Accounts
) -> None:
    """The disable's ``end_all`` already ended the session: refused, no error."""
    email = await accounts.register()
    issued = await _open_session(tw, email)
    await disable_user(tw, email)
    assert not await user_still_enabled(tw, issued, epoch=0, now=tw.clock.now())


async def test_disabled_user_login_is_refused_like_a_wrong_password(
    tw: Tokenward, client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """The refusal the re-check copies: 401 invalid-credentials, nothing else told."""
    email = await accounts.register()
    user = await tw.user_store.by_email(email)
    assert user is not None
    await tw.user_store.set_disabled(user.id, True, now=tw.clock.now())
    r = await client.post("/auth/login", json={"email": email, "password": "x" * 12})
    wrong = _problem(r, 401, "invalid-credentials")
    r = await client.post(
        "/auth/login", json={"email": email, "password": "violet tractor 42 umbrella"}
    )
    assert _problem(r, 401, "invalid-credentials") == wrong


# ------------------------------------------------------------- sessions past the limit


async def test_session_evicted_at_login_is_a_security_event(make_tw: MakeTw) -> None:
    """``TOKENWARD_MAX_SESSIONS=1``: the second login ends the first session, and its owner
    sees that as a ``sessions.ended`` event with the reason ``session-limit``."""
    tw = await make_tw(max_sessions=1, **GENEROUS_LIMITS)
    async with isolated_client(tw) as client:
        accounts = Accounts(client)
        email = await accounts.register()
        first = await accounts.login_bearer(email)
        second = await accounts.login_bearer(email)
        await tw.events.drain()
        r = await client.get(
            "/auth/events", headers={"Authorization": f"Bearer {second['access_token']}"}
        )
    assert r.status_code == 200, r.text
    ended = [e for e in r.json() if e["kind"] == "sessions.ended"]
    assert len(ended) == 1, ended
    assert ended[0]["detail"] == {"reason": "session-limit", "count": 1}
    assert ended[0]["session_id"] == first["session"]["id"]
