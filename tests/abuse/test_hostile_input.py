"""Hostile input gets a precise 4xx problem, never a 5xx, and leaves nothing half-written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from abuse_support import (
    BEARER,
    GENEROUS_LIMITS,
    PASSWORD,
    Accounts,
    MakeTw,
    all_keys,
    client_for,
    fresh_ip,
    new_email,
)

from tokenward.runtime import Tokenward
from tokenward.users import normalize_email

PROBLEM = "application/problem+json"
JSON = {"content-type": "application/json"}
BODY_ROUTES = ["/auth/register", "/auth/login", "/auth/refresh", "/auth/password"]


@pytest.fixture
async def hostile(make_tw: MakeTw) -> AsyncIterator[tuple[Tokenward, httpx.AsyncClient]]:
    tw = await make_tw(**GENEROUS_LIMITS)
    async with client_for(tw, fresh_ip()) as c:
        yield tw, c


def problem(r: httpx.Response, status: int, slug: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == status
    if slug is not None:
        assert body["type"] == f"urn:tokenward:problem:{slug}"
    assert "Traceback" not in r.text


# -- size --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_bodies_over_16_kib_are_413(
    hostile: tuple[Tokenward, httpx.AsyncClient], path: str
) -> None:
    """Declared or streamed, a body past 16 KiB is refused before it is parsed."""
    _, c = hostile
    headers = {**JSON, **BEARER}
    if path == "/auth/password":  # authentication comes first there
        email = await Accounts(c).register()
        token = (await Accounts(c).login_bearer(email))["access_token"]
        headers["authorization"] = f"Bearer {token}"
    big = b'{"email":"' + b"a" * (16 * 1024) + b'"}'
    problem(await c.post(path, content=big, headers=headers), 413, "payload-too-large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 1024

    r = await c.post(path, content=chunks(), headers=headers)  # no Content-Length
    problem(r, 413, "payload-too-large")


async def test_a_malformed_content_length_is_400(
    hostile: tuple[Tokenward, httpx.AsyncClient],
) -> None:
    """A Content-Length that is not a number is a bad request, not a crash."""
    _, c = hostile
    r = await c.post("/auth/login", content=b"{}", headers={**JSON, "content-length": "12x"})
    assert r.status_code in (400, 413)


# -- media types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "multipart/form-data; boundary=x", "application/xml", "", "application/json5"],
)
async def test_only_json_and_forms_are_accepted(
    hostile: tuple[Tokenward, httpx.AsyncClient], content_type: str
) -> None:
    """Any other media type is 415, naming what to send."""
    _, c = hostile
    payload = b'{"email":"a@example.com","password":"x"}'
    r = await c.post("/auth/login", content=payload, headers={"content-type": content_type})
    problem(r, 415, "unsupported-media-type")


async def test_bearer_refresh_takes_no_form(hostile: tuple[Tokenward, httpx.AsyncClient]) -> None:
    """Forms are for the browser pages' login and register only."""
    _, c = hostile
    r = await c.post("/auth/refresh", data={"refresh_token": "x"}, headers=BEARER)
    problem(r, 415, "unsupported-media-type")


# -- JSON shape -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"email": "a@example.com", "password": }',
        b"\xff\xfe{}",
        b'{"email": "\\ud800", "password": "x"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"email":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b"NaN",
    ],
)
async def test_unparsable_or_too_deep_json_is_400(
    hostile: tuple[Tokenward, httpx.AsyncClient], raw: bytes
) -> None:
    """Broken, non-UTF-8, lone-surrogate and deeper-than-1024 JSON: 400 ``bad-request``."""
    _, c = hostile
    problem(await c.post("/auth/login", content=raw, headers=JSON), 400, "bad-request")


@pytest.mark.parametrize(
    "body",
    [
        [],
        "a string",
        42,
        None,
        {"email": 42, "password": PASSWORD},
        {"email": ["a@example.com"], "password": PASSWORD},
        {"email": {"nested": {"deeper": True}}, "password": PASSWORD},
        {"email": "a@example.com", "password": None},
        {"email": "a@example.com", "password": 12345678901234},
        {"email": "a@example.com", "password": True},
        {"email": "a@example.com"},
    ],
)
@pytest.mark.parametrize("path", ["/auth/login", "/auth/register"])
async def test_wrong_json_types_are_422_naming_the_field(
    hostile: tuple[Tokenward, httpx.AsyncClient], body: object, path: str
) -> None:
    """Wrong types and missing fields: 422 ``validation`` with the rule, no echo."""
    _, c = hostile
    r = await c.post(path, content=orjson.dumps(body), headers=JSON)
    problem(r, 422, "validation")
    assert r.json()["rule"] in ("type", "required")
    assert PASSWORD not in r.text


async def test_wrong_types_on_authenticated_routes_are_422(
    hostile: tuple[Tokenward, httpx.AsyncClient],
) -> None:
    """``keep_current`` must be a boolean; passwords must be strings."""
    _, c = hostile
    email = await Accounts(c).register()
    tokens = await Accounts(c).login_bearer(email)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    r = await c.post("/auth/logout-all", json={"keep_current": "yes"}, headers=auth)
    problem(r, 422, "validation")
    r = await c.post(
        "/auth/password", json={"current_password": 1, "new_password": []}, headers=auth
    )
    problem(r, 422, "validation")
    assert (await c.get("/auth/me", headers=auth)).status_code == 200  # nothing was ended


async def test_too_many_or_broken_form_fields_are_400(
    hostile: tuple[Tokenward, httpx.AsyncClient],
) -> None:
    """A form with hundreds of fields, or bytes that are not UTF-8, is a bad request."""
    _, c = hostile
    many = "&".join(f"f{i}=x" for i in range(300)).encode()
    form = {"content-type": "application/x-www-form-urlencoded"}
    problem(await c.post("/auth/login", content=many, headers=form), 400, "bad-request")
    problem(await c.post("/auth/login", content=b"email=\xff\xfe", headers=form), 400)


# -- null bytes and odd characters ----------------------------------------------------------


async def test_null_bytes_are_refused_or_fail_like_any_wrong_login(
    hostile: tuple[Tokenward, httpx.AsyncClient],
) -> None:
    """NUL in an email or password: register 422 naming the rule; login an ordinary 401."""
    tw, c = hostile
    email = new_email()
    r = await c.post("/auth/register", json={"email": email + "\x00", "password": PASSWORD})
    problem(r, 422, "validation")
    assert r.json()["rule"] == "email"
    r = await c.post("/auth/register", json={"email": email, "password": PASSWORD + "\x00"})
    problem(r, 422, "validation")
    assert r.json()["rule"] == "control-characters"
    assert await tw.user_store.by_email(normalize_email(email)) is None
    email = await Accounts(c).register()
    for body in (
        {"email": email + "\x00", "password": PASSWORD},
        {"email": email, "password": PASSWORD + "\x00"},
        {"email": "\x00", "password": "\x00"},
    ):
        problem(await c.post("/auth/login", json=body), 401, "invalid-credentials")


async def test_null_bytes_in_paths_and_ids_are_404(
    hostile: tuple[Tokenward, httpx.AsyncClient],
) -> None:
    """A session id with NUL, slashes or 10 KB of junk is simply not found."""
    _, c = hostile
    email = await Accounts(c).register()
    auth = {"Authorization": f"Bearer {(await Accounts(c).login_bearer(email))['access_token']}"}
    for sid in ("%00", "a%00b" * 5, "x" * 10_000, "..%2F..%2Fetc", "%F0%9F%92%A5"):
        r = await c.delete(f"/auth/sessions/{sid}", headers=auth)
        assert r.status_code in (404, 405), sid
        assert r.status_code < 500


# -- headers, cookies and tokens ------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + "A" * 100_000,
        "Bearer " + "eyJ" * 3000 + "." * 5,
        "Bearer eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.e30.",
        "Bearer \u00e9\u00e8\u00ea".encode("latin-1"),
        "Bearer",
        "Bearer    ",
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "bearer a.b.c",
        "Bearer ....",
    ],
)
async def test_garbage_bearer_tokens_are_401(
    hostile: tuple[Tokenward, httpx.AsyncClient], authorization: str | bytes
) -> None:
    """Giant, empty, wrong-scheme, unsigned or non-ASCII tokens: 401, never 5xx."""
    _, c = hostile
    r = await c.get("/auth/me", headers={"Authorization": authorization})
    problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_two_authorization_headers_are_400(
    hostile: tuple[Tokenward, httpx.AsyncClient],
) -> None:
    """docs/abuse.md: a request with two ``Authorization`` headers is refused with 400."""
    _, c = hostile
    headers = httpx.Headers([("authorization", "Bearer a"), ("authorization", "Bearer b")])
    problem(await c.get("/auth/me", headers=headers), 400, "bad-request")


async def test_oversized_and_garbage_cookies_are_401(
    hostile: tuple[Tokenward, httpx.AsyncClient],
) -> None:
    """A 12 KB access cookie, junk refresh cookies and hundreds of cookies: 401."""
    tw, c = hostile
    names = tw.cookies.names
    cookie = f"{names.access}={'x' * 12_000}; {names.refresh}={'y' * 12_000}"
    cookie += "; " + "; ".join(f"c{i}=v" for i in range(500))
    problem(await c.get("/auth/me", headers={"cookie": cookie}), 401)
    csrf = {"x-csrf-token": "t", "cookie": f"{names.refresh}={'z' * 5000}; {names.csrf}=t"}
    problem(await c.post("/auth/refresh", headers=csrf), 401)
    csrf["cookie"] = f"{names.refresh}=a.b.c; {names.csrf}=t"
    problem(await c.post("/auth/refresh", headers=csrf), 401)


async def test_giant_user_agent_and_forwarded_for_are_truncated_not_fatal(
    make_tw: MakeTw,
) -> None:
    """A 50 KB User-Agent or X-Forwarded-For is cut down, stored bounded, and logs in."""
    tw = await make_tw(trusted_proxies="10.0.0.0/8", **GENEROUS_LIMITS)
    async with client_for(tw, "10.9.9.9") as c:
        email = await Accounts(c).register()
        headers = {
            **BEARER,
            "user-agent": "U" * 50_000,
            "x-forwarded-for": ", ".join(["not-an-ip"] * 5000),
        }
        r = await c.post(
            "/auth/login", json={"email": email, "password": PASSWORD}, headers=headers
        )
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        rows = (await c.get("/auth/sessions", headers=auth)).json()
    assert len(rows[0]["user_agent"]) <= 256
    assert len(rows[0]["ip"]) <= 64


@pytest.mark.parametrize(
    "refresh_token",
    ["", "x" * 513, "a" * 32 + "." + "b" * 22 + "." + "c" * 43, "\x00" * 10, "..", "é" * 100],
)
async def test_garbage_refresh_tokens_are_4xx(
    hostile: tuple[Tokenward, httpx.AsyncClient], refresh_token: str
) -> None:
    """Empty, too long, well-formed but unknown, NUL-filled: 401 or 422, never accepted."""
    _, c = hostile
    r = await c.post("/auth/refresh", json={"refresh_token": refresh_token}, headers=BEARER)
    assert r.status_code in (401, 422), r.text
    problem(r, r.status_code)


async def test_unknown_paths_and_methods_are_problems(
    hostile: tuple[Tokenward, httpx.AsyncClient],
) -> None:
    """404 and 405 are problem documents too."""
    _, c = hostile
    problem(await c.get("/auth/nope"), 404)
    problem(await c.put("/auth/login", json={}), 405)
    problem(await c.get("/auth/login"), 405)


# -- nothing half-written -------------------------------------------------------------------


async def test_a_failing_registration_leaves_no_user(
    hostile: tuple[Tokenward, httpx.AsyncClient],
) -> None:
    """Refused for any reason, a registration writes nothing; a duplicate adds no row."""
    tw, c = hostile
    email = new_email()
    address = normalize_email(email)
    attempts: list[tuple[bytes, dict[str, str]]] = [
        (b'{"email":"' + email.encode() + b'","password":"password1234"}', JSON),
        (b'{"email":"' + email.encode() + b'","password":' + b'"x' * 9000 + b'"}', JSON),
        (b'{"email":"' + email.encode() + b'","password":"' + PASSWORD.encode() + b'"', JSON),
        (
            b"email=" + email.encode() + b"&password=" + PASSWORD.encode(),
            {"content-type": "text/plain"},
        ),
        (b'{"email":"' + email.encode() + b'","password":42}', JSON),
    ]
    for raw, headers in attempts:
        r = await c.post("/auth/register", content=raw, headers=headers)
        assert 400 <= r.status_code < 500
        assert await tw.user_store.by_email(address) is None
    await Accounts(c).register(email)
    first = await tw.user_store.by_email(address)
    r = await c.post("/auth/register", json={"email": email.upper(), "password": PASSWORD + "!"})
    problem(r, 409, "conflict")
    again = await tw.user_store.by_email(address)
    assert first is not None
    assert again == first  # same id, same hash: the duplicate changed nothing


async def test_a_failing_login_leaves_no_session_keys(
    make_tw: MakeTw, redis: aioredis.Redis
) -> None:
    """Wrong password, bad input or throttling: no session key of the user appears."""
    tw = await make_tw()
    async with client_for(tw, fresh_ip()) as c:
        email = await Accounts(c).register()
        user = await tw.user_store.by_email(normalize_email(email))
        assert user is not None
        for body in (
            {"email": email, "password": "wrong password 1234"},
            {"email": email, "password": "x" * 1025},
            {"email": email, "password": 7},
            {"email": email},
        ):
            r = await c.post("/auth/login", json=body)
            assert r.status_code in (401, 422)
        assert await all_keys(redis, f"tw:{{u:{user.id}}}*") == []
        for _ in range(12):
            r = await c.post("/auth/login", json={"email": email, "password": "wrong pass 123"})
        assert r.status_code == 429
        r = await c.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 429
    assert await all_keys(redis, f"tw:{{u:{user.id}}}*") == []
