"""Cross-site requests without ``Origin``, and what logout and every API response tell the
browser (``Clear-Site-Data``, ``Cross-Origin-Resource-Policy``)."""

from __future__ import annotations

import httpx
import pytest
from http_support import GENEROUS_LIMITS, ORIGIN, Accounts, MakeTw

from tokenward.runtime import Tokenward

PROBLEM = "urn:tokenward:problem:"
FOREIGN_PAGES = [
    "https://evil.example.com/attack.html",
    "https://tokenward.test.evil.example.com/",
    "http://tokenward.test/",  # the right host, the wrong scheme
    "https://tokenward.test:8443/",  # the right host, another port
    "not a url",
    "data:text/html,<form>",
]


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    return await make_tw(**GENEROUS_LIMITS)


async def _cookie_login(client: httpx.AsyncClient) -> Accounts:
    accounts = Accounts(client)
    await accounts.login_cookie(await accounts.register())
    return accounts


def _without_origin(accounts: Accounts, referer: str | None) -> dict[str, str]:
    headers = {"X-CSRF-Token": accounts.csrf_headers()["X-CSRF-Token"]}
    if referer is not None:
        headers["Referer"] = referer
    return headers


@pytest.mark.parametrize("referer", FOREIGN_PAGES)
@pytest.mark.parametrize("path", ["/auth/logout", "/auth/logout-all", "/auth/refresh"])
async def test_foreign_referer_without_origin_is_403(
    client: httpx.AsyncClient, path: str, referer: str
) -> None:
    """No ``Origin`` (stripped by a proxy or an extension), but a ``Referer`` from another
    site: refused like a foreign ``Origin``, with a matching CSRF token, and nothing
    changes. Before the fix these passed (204, 204, 200)."""
    accounts = await _cookie_login(client)
    r = await client.post(path, headers=_without_origin(accounts, referer))
    assert r.status_code == 403, (r.status_code, r.text)
    assert r.json()["type"] == PROBLEM + "csrf"
    assert (await client.get("/auth/me")).status_code == 200, "the session must be untouched"


@pytest.mark.parametrize("referer", FOREIGN_PAGES[:2])
async def test_login_and_register_with_a_foreign_referer_are_403(
    client: httpx.AsyncClient, referer: str
) -> None:
    """Login CSRF (signing the victim into the attacker's account) without ``Origin``."""
    accounts = Accounts(client)
    email = await accounts.register()
    body = {"email": email, "password": "violet tractor 42 umbrella"}
    r = await client.post("/auth/login", json=body, headers={"Referer": referer})
    assert r.status_code == 403, r.text
    assert "set-cookie" not in r.headers
    body = {"email": accounts.new_email(), "password": "violet tractor 42 umbrella"}
    r = await client.post("/auth/register", json=body, headers={"Referer": referer})
    assert r.status_code == 403, r.text


@pytest.mark.parametrize("referer", [f"{ORIGIN}/account", f"{ORIGIN}/", "HTTPS://TOKENWARD.TEST/x"])
async def test_same_origin_referer_without_origin_passes(
    client: httpx.AsyncClient, referer: str
) -> None:
    accounts = await _cookie_login(client)
    r = await client.post("/auth/logout-all", headers=_without_origin(accounts, referer))
    assert r.status_code == 204, r.text


async def test_neither_origin_nor_referer_keeps_the_token_rule(client: httpx.AsyncClient) -> None:
    """Non-browser clients send neither: the session-bound CSRF token decides, as before."""
    accounts = await _cookie_login(client)
    refused = await client.post("/auth/logout-all")
    assert refused.status_code == 403
    r = await client.post("/auth/logout-all", headers=_without_origin(accounts, None))
    assert r.status_code == 204, r.text


async def test_origin_decides_when_present(client: httpx.AsyncClient) -> None:
    """``Referer`` is consulted only without ``Origin``: a foreign ``Origin`` is refused
    whatever the ``Referer``, an allowed one passes whatever the ``Referer``."""
    accounts = await _cookie_login(client)
    headers = {**accounts.csrf_headers(), "Referer": f"{ORIGIN}/account"}
    foreign = {**headers, "Origin": "https://evil.example.com"}
    assert (await client.post("/auth/logout-all", headers=foreign)).status_code == 403
    allowed = {**accounts.csrf_headers(), "Referer": "https://elsewhere.example/"}
    assert (await client.post("/auth/logout-all", headers=allowed)).status_code == 204


CLEAR = '"cookies"'


async def test_cookie_logout_sends_clear_site_data(client: httpx.AsyncClient) -> None:
    """Cookie-mode logout tells the browser to drop the site's cookies (including any a
    sibling sub-domain tossed in, which our own ``Set-Cookie`` cannot reach)."""
    accounts = await _cookie_login(client)
    r = await client.post("/auth/logout", headers=accounts.csrf_headers())
    assert r.status_code == 204
    assert r.headers.get("clear-site-data") == CLEAR


async def test_cookie_logout_all_sends_clear_site_data_unless_kept(
    client: httpx.AsyncClient,
) -> None:
    accounts = await _cookie_login(client)
    kept = await client.post(
        "/auth/logout-all", json={"keep_current": True}, headers=accounts.csrf_headers()
    )
    assert kept.status_code == 204
    assert "clear-site-data" not in kept.headers, "the session goes on: keep its cookies"
    r = await client.post("/auth/logout-all", headers=accounts.csrf_headers())
    assert r.status_code == 204
    assert r.headers.get("clear-site-data") == CLEAR


async def test_bearer_logout_sends_no_clear_site_data(client: httpx.AsyncClient) -> None:
    """A bearer client has no cookies of ours; wiping the site's would be someone else's."""
    for path in ("/auth/logout-all", "/auth/logout"):
        tokens = await Accounts(client).new_bearer()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        r = await client.post(path, headers=auth)
        assert r.status_code == 204
        assert "clear-site-data" not in r.headers


async def test_api_responses_are_same_origin_resources(client: httpx.AsyncClient) -> None:
    """Every response, success or problem, carries ``Cross-Origin-Resource-Policy:
    same-origin``: no other site can load it as a script, image or style."""
    accounts = Accounts(client)
    email = await accounts.register()
    responses = [
        await client.post(
            "/auth/login", json={"email": email, "password": "violet tractor 42 umbrella"}
        ),
        await client.get("/auth/me"),
        await client.get("/auth/sessions"),
        await client.post("/auth/login", json={"email": email, "password": "wrong"}),
        await client.get("/auth/me", headers={"Authorization": "Bearer nope"}),
        await client.get("/.well-known/jwks.json"),
        await client.get("/openapi.json"),
        await client.get("/healthz"),
        await client.get("/no-such-path"),
    ]
    for r in responses:
        assert r.headers.get("cross-origin-resource-policy") == "same-origin", r.request.url
