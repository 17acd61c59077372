"""The pages and headers over plain HTTP, against the real server (no browser needed)."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Iterator
from html.parser import HTMLParser

import httpx
import pytest
from browserkit import PASSWORD, Server, new_email
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tokenward.http.app import create_app
from tokenward.runtime import Tokenward
from tokenward.web import CONTENT_SECURITY_POLICY, SecurityHeaders
from tokenward.web.pages import ALARM_COOKIE, document
from tw_accounts import ORIGIN

MakeTw = Callable[..., Awaitable[Tokenward]]


TEMPLATES = (
    "login",
    "register",
    "account",
    "sessions",
    "forgot",
    "reset",
    "verify",
    "confirm",
    "not-found",
)


class _Page(HTMLParser):
    """What the tests look at in a page: notices, scripts, styles, local references."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.notices: dict[str, bool] = {}  # slug: shown
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script_text = ""
        self.styled: list[str] = []
        self.references: list[str] = []
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if "data-notice" in found:
            self.notices[str(found["data-notice"])] = "hidden" not in found
        if tag == "script":
            self.scripts.append(found)
            self._in_script = True
        if tag == "style" or "style" in found:
            self.styled.append(tag)
        self.references += [v for k, v in attrs if k in ("src", "href") and v and v[0] == "/"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_script_text += data.strip()

    def shown(self) -> list[str]:
        return [slug for slug, shown in self.notices.items() if shown]


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        yield client


@pytest.mark.parametrize(
    "path", ["/login", "/account", "/static/tokenward.js", "/healthz", "/auth/me", "/nope"]
)
def test_every_response_carries_the_security_headers(http: httpx.Client, path: str) -> None:
    """Pages, static files, JSON, errors: the same headers, HSTS included (Secure cookies)."""
    h = http.get(path).headers
    assert h["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "same-origin"
    assert h["strict-transport-security"].startswith("max-age=")


def test_the_policy_allows_no_inline_code_and_no_framing() -> None:
    """Scripts and styles from this origin only, never inline; no one may frame a page."""
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["default-src"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("name", TEMPLATES)
def test_pages_hold_no_inline_code_and_only_local_references(http: httpx.Client, name: str) -> None:
    """Every script has a src, nothing is styled inline, every local file exists."""
    page = _Page(document(name))
    assert page.scripts or name == "not-found"
    assert all(script.get("src") for script in page.scripts)
    assert page.inline_script_text == ""
    assert page.styled == []
    for reference in page.references:
        if reference.startswith("/static/"):
            assert http.get(reference).status_code == 200, reference


def test_the_client_is_served_at_its_stable_path_and_revalidated(http: httpx.Client) -> None:
    """``/static/tokenward.js``: JavaScript, an ETag, and a 304 when unchanged."""
    first = http.get("/static/tokenward.js")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/javascript")
    assert first.headers["cache-control"] == "no-cache"
    assert "window.Tokenward" in first.text
    again = http.get("/static/tokenward.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/..%2Fpages.py", "/static/"])
def test_only_packaged_static_files_are_served(http: httpx.Client, path: str) -> None:
    """A name is a key in a table of files read at start-up, never a path on disk."""
    r = http.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("url", "notice"),
    [
        ("/login", None),
        ("/login?error=invalid-credentials", "invalid-credentials"),
        ("/login?error=rate-limited", "rate-limited"),
        ("/login?error=csrf", "csrf"),
        ("/login?error=no-such-problem", "error"),
        ("/login?registered=1", "registered"),
        ("/login?reason=session-ended", "session-ended"),
        # The theft alarm is the server's to raise (test_the_theft_alarm_needs_the_server's_cookie)
        ("/login?reason=refresh-reused", None),
        ("/login?error=refresh-reused", "error"),
        ("/login?reason=theft-alarm", None),
        ("/login?error=theft-alarm", "error"),
        ("/login?done=password-reset", "password-reset"),
        ("/login?reason=whatever", None),
        ("/register?error=validation", "validation"),
        ("/register?error=conflict", "conflict"),
        ("/register?error=invalid-credentials", "error"),
    ],
)
def test_the_query_reveals_exactly_one_written_notice(
    http: httpx.Client, url: str, notice: str | None
) -> None:
    """The form-post redirects (JavaScript off) get their message from the server."""
    r = http.get(url)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert _Page(r.text).shown() == ([notice] if notice else [])


def test_query_text_never_reaches_the_page(http: httpx.Client) -> None:
    """The query only selects a notice; nothing of it is copied into the HTML."""
    probe = "<script>alert(1)</script>"
    r = http.get("/login", params={"error": probe, "reason": probe, "next": probe})
    assert probe not in r.text
    assert "alert(1)" not in r.text
    assert _Page(r.text).shown() == ["error"]


def test_the_front_door_and_account_pages_follow_the_session_cookie(http: httpx.Client) -> None:
    """Without a session cookie: to sign in (with next); with one: to the account."""
    assert http.get("/").headers["location"] == "/login"
    assert http.get("/account").headers["location"] == "/login?next=%2Faccount"
    assert http.get("/account/sessions").headers["location"] == "/login?next=%2Faccount%2Fsessions"
    session = {"Cookie": "__Host-csrf_token=anything"}
    r = http.get("/", headers=session)
    assert (r.status_code, r.headers["location"]) == (303, "/account")
    assert http.get("/account", headers=session).status_code == 200


def test_the_register_page_states_the_configured_minimum(http: httpx.Client) -> None:
    """The hint and ``minlength`` follow TOKENWARD_PASSWORD_MIN_LENGTH (default 12)."""
    body = http.get("/register").text
    assert 'minlength="12"' in body
    assert "At least 12 characters" in body
    assert "{{" not in body


def _app(*, hsts: bool) -> Starlette:
    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def own_policy(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"Content-Security-Policy": "sandbox"})

    return Starlette(
        routes=[Route("/", plain), Route("/own", own_policy)],
        middleware=[Middleware(SecurityHeaders, hsts=hsts)],
    )


async def test_hsts_only_when_cookies_are_secure() -> None:
    """HSTS follows TOKENWARD_COOKIE_SECURE; the other headers are always there."""
    for hsts in (True, False):
        transport = httpx.ASGITransport(app=_app(hsts=hsts))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            h = (await client.get("/")).headers
        assert ("strict-transport-security" in h) is hsts
        assert h["x-content-type-options"] == "nosniff"


async def test_a_route_keeps_its_own_header() -> None:
    """A header the application set is not overwritten."""
    transport = httpx.ASGITransport(app=_app(hsts=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        h = (await client.get("/own")).headers
    assert h.get_list("content-security-policy") == ["sandbox"]


def _session_cookies(server: Server, email: str) -> str:
    """A cookie-mode sign-in through the API: the ``Cookie`` header a browser would send."""
    r = httpx.post(
        f"http://127.0.0.1:{server.port}/auth/login", json={"email": email, "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    return "; ".join(f"{name}={value}" for name, value in r.cookies.items())


def test_a_signed_in_browser_asking_for_the_sign_in_page_gets_its_account(
    server: Server, http: httpx.Client
) -> None:
    """``/login`` with a live session goes on to ``/account`` (or ``next``); a stale or
    forged cookie still gets the form (the server asks the API, no loop)."""
    session = {"Cookie": _session_cookies(server, server.register(new_email("signed-in")))}
    r = http.get("/login", headers=session)
    assert (r.status_code, r.headers["location"]) == (303, "/account")
    r = http.get("/login", params={"next": "/account/sessions"}, headers=session)
    assert r.headers["location"] == "/account/sessions"
    r = http.get("/login", params={"next": "//evil.example/"}, headers=session)
    assert r.headers["location"] == "/account"
    forged = http.get("/login", headers={"Cookie": "__Host-csrf_token=anything"})
    assert forged.status_code == 200
    assert 'data-form="login"' in forged.text


def test_the_theft_alarm_needs_the_servers_cookie(http: httpx.Client) -> None:
    """Only the cookie the API sets when it ends a session for refresh reuse shows the
    alarm; showing it clears the cookie (once)."""
    plain = http.get("/login", params={"reason": "refresh-reused"})
    assert _Page(plain.text).shown() == []
    raised = http.get("/login", headers={"Cookie": f"{ALARM_COOKIE}=refresh-reused"})
    assert _Page(raised.text).shown() == ["theft-alarm"]
    cleared = raised.headers["set-cookie"]
    assert cleared.startswith(f"{ALARM_COOKIE}=;")
    assert "Max-Age=0" in cleared
    assert "HttpOnly" in cleared
    other = http.get("/login", headers={"Cookie": f"{ALARM_COOKIE}=anything-else"})
    assert _Page(other.text).shown() == []


def test_an_unknown_address_is_a_page_for_browsers_and_a_problem_for_others(
    http: httpx.Client,
) -> None:
    """A navigation (``Accept: text/html``) gets the 404 page; an API client the problem."""
    page = http.get("/no/such/page", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Page not found" in page.text
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    problem = http.get("/no/such/page", headers={"Accept": "application/json"})
    assert problem.status_code == 404
    assert problem.headers["content-type"] == "application/problem+json"
    # A known path with another method is still a 405, not a missing page.
    wrong = http.get("/auth/login", headers={"Accept": "text/html"})
    assert wrong.status_code == 405


@pytest.mark.parametrize("path", ["/reset-password", "/verify-email", "/confirm-email"])
def test_link_pages_keep_their_token_to_themselves(http: httpx.Client, path: str) -> None:
    """No Referer, no cache; the token lands in the form's hidden field, escaped, and
    nowhere else in the page."""
    token = 'tok"en<script>'
    r = http.get(path, params={"token": token})
    assert r.status_code == 200
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert token not in r.text
    assert r.text.count(html.escape(token, quote=True)) == 1
    assert f'name="token" value="{html.escape(token, quote=True)}"' in r.text
    assert _Page(r.text).shown() == []
    missing = http.get(path)
    assert _Page(missing.text).shown() == ["token-missing"]
    assert missing.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/login", "/register", "/forgot-password", "/account"])
def test_pages_without_a_token_keep_the_same_origin_referrer(http: httpx.Client, path: str) -> None:
    """``no-referrer`` only where a token is in the address: elsewhere the pages' own form
    posts must keep sending their Origin."""
    r = http.get(path, headers={"Cookie": "__Host-csrf_token=x"})
    assert r.headers["referrer-policy"] == "same-origin"


def test_a_refused_plain_form_keeps_the_address_and_names_the_rule(http: httpx.Client) -> None:
    """JavaScript off: the page comes back with the API's sentence, the e-mail address
    typed (escaped), and the status the API answered."""
    email = new_email("kept") + '"><b>'
    r = http.post("/register", data={"email": email, "password": "iloveyou1234"})
    assert r.status_code == 422
    page = _Page(r.text)
    assert page.shown() == ["validation"]
    assert "too common" in r.text
    assert f'value="{html.escape(email, quote=True)}"' in r.text


async def test_a_plain_form_sign_in_is_counted_as_the_login_it_is(make_tw: MakeTw) -> None:
    """The login metrics count a sign-in posted to ``/login`` (JavaScript off) by outcome,
    as they count ``POST /auth/login`` (a refused one is not mistaken for a theft)."""
    tw = await make_tw()
    transport = httpx.ASGITransport(
        app=create_app(tw, manage_lifespan=False), client=("10.77.0.1", 40000)
    )
    email = new_email("counted")
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
        created = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
        assert created.status_code == 201, created.text
        wrong = await client.post("/login", data={"email": email, "password": "x" * 14})
        assert wrong.status_code == 401
        right = await client.post("/login", data={"email": email, "password": PASSWORD})
        assert (right.status_code, right.headers["location"]) == (303, "/account")
    exposition = (await tw.metrics.render()).decode()
    assert 'tokenward_logins_total{outcome="failed"} 1.0' in exposition
    assert 'tokenward_logins_total{outcome="ok"} 1.0' in exposition
