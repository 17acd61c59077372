"""The browser pages: sign in, register, account, sessions, the e-mail link pages, and
their static files.

Pages are plain HTML files shipped in the package (``web/templates``), scripts and styles
are files under ``web/static`` served at ``/static/<name>``: nothing is fetched from the
internet and nothing is built at run time. The server does a few small things to a page:

* it fills ``{{min_length}}`` with the configured password length;
* it reveals the one notice a query or a form post asks for (``?error=<slug>``,
  ``?done=<slug>``, ``?registered=1``, ``?reason=<why>``) by dropping the ``hidden``
  attribute of the element ``data-notice="<slug>"``. A query only *selects* a notice written
  in the template; no query text is ever copied into a notice;
* it fills ``{{name}}`` placeholders (the e-mail address a refused form post typed, the
  session's CSRF token, a link's token) and ``data-field`` slots (the API's sentence naming
  a failed rule, the real wait of a throttle) with HTML-escaped text.

Without JavaScript every form posts to a path of this module (``/login``, ``/register``,
``/account/sign-out``, ``/forgot-password``...). The module makes the matching API call
in-process (:func:`call_api`: the same route, checks and throttles as a script's call,
with the browser's own cookies and headers), then answers as a form post should: a 303 to
the next page on success, or the page again with the API's explanation and the fields
kept. With JavaScript the page scripts call the API themselves and never post the forms.

The account pages need a session cookie to be worth showing; without one the browser is
sent to the sign-in page. That is a convenience, not a security check: the data on those
pages comes from the API, which authenticates every call.

A sign-in that needs a second factor goes on to ``/login/mfa``: a script there reads the
challenge from the address's fragment; a plain page gets it from the cookie of
:func:`mfa_page_cookie`, and its forms post straight to ``/auth/login/mfa`` (whose 303s
lead on), so that the browser sends the challenge's binding cookie (``Path=/auth``) too.

The theft alarm on the sign-in page ("signed out for safety") is shown only when the
server set :data:`ALARM_COOKIE` while ending a session whose refresh token was reused, never
because of a query a link can carry.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message

from tokenward.cookies import CookieNames, CookieSpec
from tokenward.errors import NotFound, TokenwardError

__all__ = [
    "ALARM_COOKIE",
    "MFA_PAGE",
    "Pages",
    "StaticFiles",
    "alarm_cookie",
    "call_api",
    "duration",
    "mfa_page_cookie",
    "not_found_page",
    "page_routes",
    "wants_html",
]

_PACKAGE = "tokenward.web"
#: A notice is written ``data-notice="<slug>" hidden``, in that order, so that dropping
#: `` hidden`` reveals it (checked when the templates are loaded).
_NOTICE = re.compile(r'data-notice="([a-z0-9-]+)" hidden')
_ANY_NOTICE = re.compile(r'data-notice="')
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
#: Pages are small and carry no secret, but a signed-out user pressing Back must not see
#: a cached account page: never store them.
_PAGE_HEADERS = {"Cache-Control": "no-store"}
#: The pages opened from a link in a mail carry its token in their address: no Referer may
#: ever take it anywhere (not even to this origin's own log), and no cache may keep it.
_TOKEN_PAGE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
#: Static files live at stable paths (``/static/tokenward.js`` is documented): browsers
#: revalidate them every time, and the ETag makes that a 304.
_STATIC_CACHE = "no-cache"
#: A form post is as small as an API body (the API's limit is the same).
_MAX_FORM = 16 * 1024
_MAX_FORM_FIELDS = 16
#: Names of the theft-alarm cookie: ``__Host-`` (this origin only, Path=/) with Secure.
ALARM_COOKIE = "__Host-tw_alarm"
_ALARM_COOKIE_PLAIN = "tw_alarm"
#: Long enough to reach the sign-in page after the refresh that found the theft.
_ALARM_MAX_AGE = 600
_ALARM_VALUE = "refresh-reused"
#: The login page's notice for it. Not named after the problem slug: the access log's
#: login metrics read "refresh-reused" in a 401 body as a theft, and a refused plain
#: sign-in answers 401 with this page.
_ALARM_NOTICE = "theft-alarm"

#: The second step of a sign-in: the code page.
MFA_PAGE = "/login/mfa"

PATHS = {
    "login": "/login",
    "mfa": MFA_PAGE,
    "register": "/register",
    "account": "/account",
    "sessions": "/account/sessions",
    "forgot": "/forgot-password",
    "reset": "/reset-password",
    "verify": "/verify-email",
    "confirm": "/confirm-email",
}
#: Pages whose address carries a token from a mail.
_TOKEN_PAGES = frozenset({"reset", "verify", "confirm"})


def alarm_cookie(*, secure: bool, clear: bool = False) -> CookieSpec:
    """The short-lived cookie saying "this browser's session ended for refresh reuse".

    Set by the API when it ends a session as ``refresh-reused`` and clears its cookies; the
    sign-in page shows its theft alarm only while it is there, and clears it.
    """
    name = ALARM_COOKIE if secure else _ALARM_COOKIE_PLAIN
    value, age = ("", 0) if clear else (_ALARM_VALUE, _ALARM_MAX_AGE)
    return CookieSpec(name, value, age, "/", True, secure, "Lax")


def mfa_page_cookie(
    *, secure: bool, challenge: str = "", max_age: int = 0, enroll: bool = False
) -> CookieSpec:
    """The cookie that takes a sign-in's MFA challenge to the code page without JavaScript.

    A script reads the challenge from the page address's fragment, which never reaches a
    server; a plain form cannot. So a form sign-in also sets this cookie (HttpOnly,
    ``SameSite=Strict``, ``Path=/login/mfa``: only the code page ever receives it, for the
    challenge's lifetime), and the page writes the challenge into its forms' hidden field.
    The value is ``v.<challenge>`` (a code) or ``e.<challenge>`` (enrolment first).
    Without arguments: the header that clears it.
    """
    name = "__Secure-mfa_login" if secure else "mfa_login"
    value = f"{'e' if enroll else 'v'}.{challenge}" if challenge else ""
    return CookieSpec(name, value, max_age if challenge else 0, MFA_PAGE, True, secure, "Strict")


def duration(seconds: int) -> str:
    """ "30 seconds", "1 minute", "15 minutes" (as the page scripts say it)."""
    if seconds < 60:
        return "1 second" if seconds == 1 else f"{seconds} seconds"
    minutes = math.ceil(seconds / 60)
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def _sentence(text: str) -> str:
    trimmed = text.strip()
    if not trimmed:
        return trimmed
    capital = trimmed[0].upper() + trimmed[1:]
    return capital if capital[-1] in ".!?" else capital + "."


def wants_html(request: Request) -> bool:
    """Whether the client asked for a page (a browser's navigation sends text/html)."""
    return "text/html" in request.headers.get("accept", "")


def safe_next(target: str | None) -> str:
    """A local path to go to after signing in: ``target`` when it is one of ours."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return PATHS["account"]
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or any(ord(c) < 0x20 for c in target):
        return PATHS["account"]
    return target


# ------------------------------------------------------------------ calling the API


@dataclass(frozen=True, slots=True)
class Problem:
    """What a refused API call said (its problem document, read back)."""

    slug: str
    status: int
    detail: str = ""
    rule: str | None = None
    retry_after: int | None = None


@dataclass(slots=True)
class Answer:
    """An in-process API call's answer: status, the headers a browser must get, body."""

    status: int
    body: bytes = b""
    forwarded: list[tuple[str, str]] = field(default_factory=list)
    problem: Problem | None = None
    route: object = None


#: Response headers an API call's answer hands on to the browser with the page's answer.
_FORWARDED = frozenset({"set-cookie", "clear-site-data"})
#: Request headers not handed on to the API: the body's own, and the ones the call sets.
_NOT_SENT = frozenset(
    {b"content-type", b"content-length", b"x-csrf-token", b"accept", b"transfer-encoding"}
)


def _problem_from(status: int, body: bytes) -> Problem:
    try:
        doc = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    kind = str(doc.get("type", ""))
    slug = kind.rpartition(":")[2] if kind.startswith("urn:tokenward:problem:") else "error"
    retry = doc.get("retry_after")
    return Problem(
        slug,
        status,
        str(doc.get("detail", "")),
        doc.get("rule") if isinstance(doc.get("rule"), str) else None,
        retry if isinstance(retry, int) else None,
    )


async def call_api(
    request: Request,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    *,
    csrf: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """Make the API call ``method path`` in-process, as the browser of ``request``.

    The call goes through the application's router (not its middleware: the page's own
    request is the one logged and measured) with the browser's cookies, address and
    ``Origin``/``Referer``/``Sec-Fetch-Site``, a JSON ``body`` and, when given, ``csrf`` as
    ``X-CSRF-Token`` (what a page script would send). A refusal comes back as
    :attr:`Answer.problem`, whether the route raised it or answered it.
    """
    payload = orjson.dumps(dict(body)) if body is not None else b""
    raw = [(k, v) for k, v in request.scope["headers"] if k not in _NOT_SENT]
    raw.append((b"accept", b"application/json"))
    if body is not None:
        raw += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    if csrf:
        raw.append((b"x-csrf-token", csrf.encode("latin-1", "replace")))
    for name, value in (headers or {}).items():
        raw = [(k, v) for k, v in raw if k != name.lower().encode()]
        if value:
            raw.append((name.lower().encode(), value.encode("latin-1")))
    root = request.scope.get("root_path", "")
    scope = {
        key: value
        for key, value in request.scope.items()
        if key not in ("route", "endpoint", "path_params", "router")
    }
    state = dict(request.scope.get("state", {}))
    state.pop("tokenward_cookies", None)
    scope.update(
        method=method,
        path=root + path,
        raw_path=(root + path).encode(),
        query_string=b"",
        headers=raw,
        state=state,
    )
    started: Message = {}
    chunks: list[bytes] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await request.app.router(scope, receive, send)
    except TokenwardError as exc:
        rule = getattr(exc, "rule", None)
        retry = getattr(exc, "retry_after", None)
        problem = Problem(exc.slug, exc.status, exc.detail, rule, retry)
        return Answer(exc.status, problem=problem, route=scope.get("route"))
    except HTTPException as exc:  # no such route (the API is older than the page)
        return Answer(exc.status_code, problem=Problem("error", exc.status_code))
    status = int(started.get("status", 500))
    answer = Answer(status, b"".join(chunks), route=scope.get("route"))
    for key, value in started.get("headers", ()):
        name = key.decode("latin-1").lower()
        if name in _FORWARDED:
            answer.forwarded.append((name, value.decode("latin-1")))
    if status >= 400:
        answer.problem = _problem_from(status, answer.body)
    return answer


def _mfa_challenge(body: bytes) -> tuple[str, bool, int] | None:
    """``(challenge, enrollment_required, expires_in)`` of a login's second-step answer."""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("mfa_required") is not True:
        return None
    challenge, ttl = doc.get("challenge"), doc.get("expires_in")
    if not isinstance(challenge, str) or not isinstance(ttl, int):
        return None
    return challenge, doc.get("enrollment_required") is True, ttl


def _hand_on(answer: Answer, response: Response) -> Response:
    for name, value in answer.forwarded:
        response.headers.append(name, value)
    return response


async def _read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` post, bounded; anything else is empty."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        return {}
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_FORM:
            return {}
        chunks.append(chunk)
    try:
        pairs = parse_qsl(
            b"".join(chunks).decode("utf-8"),
            keep_blank_values=True,
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        return {}
    return dict(pairs)


# --------------------------------------------------------------------- static files


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


class StaticFiles:
    """Every file of ``web/static``, read once, served with an ETag.

    Only the files that exist in the package at start-up can be served; a name is a key in
    a dictionary, never a path on disk, so no request can reach another file.
    """

    def __init__(self) -> None:
        self.assets: dict[str, _Asset] = {}
        for entry in resources.files(_PACKAGE).joinpath("static").iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if not entry.is_file() or suffix not in _MEDIA_TYPES:
                continue
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self.assets[entry.name] = _Asset(body, _MEDIA_TYPES[suffix], etag)

    async def endpoint(self, request: Request) -> Response:
        """``GET /static/{name}``: the file, or 304 when the browser's copy is current."""
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            raise NotFound("no such file")
        headers = {"ETag": asset.etag, "Cache-Control": _STATIC_CACHE}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)


# -------------------------------------------------------------------------- pages


@dataclass(frozen=True, slots=True)
class _Template:
    html: str
    notices: frozenset[str]


_PAGE = re.compile(r"\A\{\{page ((?:\w+=\"[^\"]*\" ?)+)\}\}\n")
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
#: What a page leaves out of its ``{{page ...}}`` line, by kind.
_PAGE_DEFAULTS = {
    "auth": {"skip": "Skip to the form", "main": "auth"},
    "app": {"skip": "Skip to content", "main": "content"},
}


def _compose(name: str, text: str, folder: Traversable) -> str:
    """A page's whole document: its first line ``{{page title="..." script="..."}}`` (and
    ``kind="app" current="account"`` for the signed-in pages) names what goes into the
    shared frame (``_layout.html`` and the kind's ``_header-<kind>.html``), the rest of the
    file is the content of its ``<main>``."""
    found = _PAGE.match(text)
    if found is None:
        raise RuntimeError(f'{name}.html: the first line must be {{{{page title="..."}}}}')
    given = dict(_ATTRIBUTE.findall(found.group(1)))
    kind = given.get("kind", "auth")
    values = {**_PAGE_DEFAULTS[kind], **given, "kind": kind, "content": text[found.end() :]}
    script = values.pop("script", "")
    values["scripts"] = (
        '<script src="/static/tokenward.js" defer></script>\n'
        f'<script src="/static/{script}.js" type="module"></script>\n'
        if script
        else ""
    )
    header = folder.joinpath(f"_header-{kind}.html").read_text(encoding="utf-8")
    for page in ("account", "sessions"):
        current = ' aria-current="page"' if values.get("current") == page else ""
        header = header.replace(f"{{{{current-{page}}}}}", current)
    values["header"] = header
    html = folder.joinpath("_layout.html").read_text(encoding="utf-8")
    # The content goes in last, so nothing it holds is taken for a slot of the frame.
    for slot in ("title", "scripts", "kind", "skip", "header", "main", "content"):
        html = html.replace(f"{{{{{slot}}}}}", values[slot])
    return html


def document(name: str) -> str:
    """The page ``name``'s whole HTML (frame and content), before per-request values."""
    folder = resources.files(_PACKAGE).joinpath("templates")
    return _compose(name, folder.joinpath(f"{name}.html").read_text(encoding="utf-8"), folder)


def _load_templates(password_min_length: int) -> dict[str, _Template]:
    templates: dict[str, _Template] = {}
    for name in (*PATHS, "not-found"):
        text = document(name).replace("{{min_length}}", str(password_min_length))
        notices = _NOTICE.findall(text)
        if len(notices) != len(_ANY_NOTICE.findall(text)):
            raise RuntimeError(f'{name}.html: write notices as data-notice="<slug>" hidden')
        templates[name] = _Template(text, frozenset(notices))
    return templates


_NOT_FOUND_HTML: bytes | None = None


def not_found_page() -> Response:
    """The HTML 404 page (for a browser's navigation to an unknown address)."""
    global _NOT_FOUND_HTML
    if _NOT_FOUND_HTML is None:
        folder = resources.files(_PACKAGE).joinpath("templates")
        _NOT_FOUND_HTML = folder.joinpath("not-found.html").read_bytes()
    return HTMLResponse(_NOT_FOUND_HTML, status_code=404, headers=_PAGE_HEADERS)


class Pages:
    """The HTML pages, with the notice a query selects revealed, and their form posts.

    Args:
        cookie_names: the session cookie names (their presence decides where ``/`` goes).
        password_min_length: shown in the password hints and ``minlength``.
        secure: whether cookies are ``Secure`` (the theft-alarm cookie's name follows).
    """

    def __init__(
        self, cookie_names: CookieNames, password_min_length: int, *, secure: bool = True
    ) -> None:
        self.cookie_names = cookie_names
        self.secure = secure
        self.alarm_name = alarm_cookie(secure=secure).name
        self.templates = _load_templates(password_min_length)
        self._rendered: dict[tuple[str, str | None], bytes] = {}

    # -- reading the request ---------------------------------------------------------

    def has_session(self, request: Request) -> bool:
        """Whether the browser holds a session cookie (the access or the CSRF cookie).

        The CSRF cookie lives as long as the refresh cookie, so it still says "signed in"
        after the short-lived access cookie is gone.
        """
        cookies = request.cookies
        return bool(cookies.get(self.cookie_names.access) or cookies.get(self.cookie_names.csrf))

    def notice_for(self, page: str, request: Request) -> str | None:
        """The notice of ``page`` the query asks for; ``error`` for an unknown error slug.

        ``theft-alarm`` (for ``refresh-reused``) is never taken from the query: only
        :meth:`alarm_raised` shows it.
        """
        notices = self.templates[page].notices - {_ALARM_NOTICE}
        query = request.query_params
        error = query.get("error")
        if error is not None:
            return error if error in notices else "error"
        if query.get("registered") and "registered" in notices:
            return "registered"
        for key in ("done", "reason"):
            value = query.get(key)
            if value is not None and value in notices:
                return value
        return None

    def alarm_raised(self, request: Request) -> bool:
        """Whether the server marked this browser's session as ended for refresh reuse."""
        return request.cookies.get(self.alarm_name) == _ALARM_VALUE

    # -- rendering -------------------------------------------------------------------

    def render(
        self,
        page: str,
        notice: str | None,
        *,
        fields: Mapping[str, str] | None = None,
        values: Mapping[str, str] | None = None,
        hide: tuple[str, ...] = (),
    ) -> bytes:
        """The page with ``notice`` (a key of the template's notices, or None) revealed.

        Args:
            fields: text for the ``data-field="<name>"`` slots (escaped).
            values: text for the ``{{name}}`` placeholders (escaped; missing ones empty).
            hide: ``data-section="<name>"`` elements to hide (a form whose work is done).
        """
        key = (page, notice)
        plain = not fields and not values and not hide
        if plain and key in self._rendered:
            return self._rendered[key]
        text = self.templates[page].html
        if notice is not None:
            attribute = f'data-notice="{notice}"'
            text = text.replace(f"{attribute} hidden", attribute, 1)
        for name, value in (fields or {}).items():
            slot = re.compile(f'(data-field="{re.escape(name)}">)[^<]*(<)')
            escaped = html.escape(value)
            text = slot.sub(lambda m, v=escaped: m[1] + v + m[2], text)  # type: ignore[misc]
        for section in hide:
            text = text.replace(f'data-section="{section}"', f'data-section="{section}" hidden')
        given = values or {}
        text = _PLACEHOLDER.sub(lambda m: html.escape(given.get(m[1], ""), quote=True), text)
        body = text.encode("utf-8")
        if plain:
            # Bounded: pages x the notices written in their templates.
            self._rendered[key] = body
        return body

    def respond(
        self,
        page: str,
        notice: str | None = None,
        *,
        status: int = 200,
        fields: Mapping[str, str] | None = None,
        values: Mapping[str, str] | None = None,
        hide: tuple[str, ...] = (),
    ) -> Response:
        """The page as a response, with the headers its kind needs."""
        headers = _TOKEN_PAGE_HEADERS if page in _TOKEN_PAGES else _PAGE_HEADERS
        body = self.render(page, notice, fields=fields, values=values, hide=hide)
        return HTMLResponse(body, status_code=status, headers=headers)

    def refused(
        self,
        page: str,
        problem: Problem,
        *,
        values: Mapping[str, str] | None = None,
        notice_map: Mapping[str, str] | None = None,
    ) -> Response:
        """The page again after a refused form post: the API's explanation, fields kept."""
        fields: dict[str, str] = {}
        if problem.retry_after:
            fields["retry"] = duration(problem.retry_after)
        if problem.slug == "validation" and problem.detail:
            fields["detail"] = _sentence(problem.detail)
        slug = (notice_map or {}).get(problem.slug, problem.slug)
        notices = self.templates[page].notices
        notice = slug if slug in notices else "error"
        # 4xx and 5xx as the API answered, so a form post's outcome reads the same in logs.
        response = self.respond(page, notice, status=problem.status, fields=fields, values=values)
        if problem.retry_after:
            response.headers["Retry-After"] = str(problem.retry_after)
        return response

    # -- routes ----------------------------------------------------------------------

    def page(self, name: str, *, signed_in: bool) -> Route:
        """The route serving page ``name`` at its path (GET)."""
        path = PATHS[name]

        async def endpoint(request: Request) -> Response:
            if signed_in and not self.has_session(request):
                return RedirectResponse(
                    f"/login?next={quote(path, safe='')}", status_code=303, headers=_PAGE_HEADERS
                )
            values = {"csrf": self._csrf(request)} if signed_in else {}
            return self.respond(name, self.notice_for(name, request), values=values)

        return Route(path, endpoint, methods=["GET"], name=f"page-{name}")

    def _csrf(self, request: Request) -> str:
        # The double-submit token for the page's plain forms: the value of the readable CSRF
        # cookie, which the API compares with the cookie and with the session's own.
        return request.cookies.get(self.cookie_names.csrf, "")

    async def home(self, request: Request) -> Response:
        """``GET /``: the account page when the browser holds a session, else sign in."""
        target = "/account" if self.has_session(request) else "/login"
        return RedirectResponse(target, status_code=303, headers=_PAGE_HEADERS)

    async def login_page(self, request: Request) -> Response:
        """``GET /login``: a signed-in browser goes on to its account (or ``next``)."""
        if self.has_session(request):
            answer = await call_api(request, "GET", "/auth/me")
            if answer.status == 200:
                target = safe_next(request.query_params.get("next"))
                redirect = RedirectResponse(target, status_code=303, headers=_PAGE_HEADERS)
                return _hand_on(answer, redirect)
        # Only a local path goes back into the page (for the plain form's post).
        wanted = request.query_params.get("next", "")
        values = {"next": wanted if safe_next(wanted) == wanted else ""}
        if self.alarm_raised(request):
            response = self.respond("login", _ALARM_NOTICE, values=values)
            response.headers.append(
                "set-cookie", alarm_cookie(secure=self.secure, clear=True).header()
            )
            return response
        return self.respond("login", self.notice_for("login", request), values=values)

    async def login_post(self, request: Request) -> Response:
        """``POST /login`` (JavaScript off): sign in, then on to ``next``."""
        form = await _read_form(request)
        email = form.get("email", "")
        body = {"email": email, "password": form.get("password", "")}
        answer = await call_api(request, "POST", "/auth/login", body)
        # Counted as the login it was (the login metrics follow the API route).
        request.scope["route"] = answer.route or request.scope.get("route")
        if answer.problem is not None:
            values = {"email": email, "next": form.get("next", "")}
            return _hand_on(answer, self.refused("login", answer.problem, values=values))
        target = safe_next(form.get("next"))
        second = _mfa_challenge(answer.body)
        if second is not None:
            # A second step: on to the code page, the challenge in its cookie (a form
            # cannot read a fragment), the API's binding cookie handed on.
            challenge, enroll, ttl = second
            redirect = RedirectResponse(MFA_PAGE, status_code=303, headers=_PAGE_HEADERS)
            cookie = mfa_page_cookie(
                secure=self.secure, challenge=challenge, max_age=ttl, enroll=enroll
            )
            redirect.headers.append("set-cookie", cookie.header())
            return _hand_on(answer, redirect)
        return _hand_on(answer, RedirectResponse(target, status_code=303, headers=_PAGE_HEADERS))

    async def mfa_page(self, request: Request) -> Response:
        """``GET /login/mfa``: the code page (its challenge from the cookie or, with
        JavaScript, the address's fragment); ``?use=recovery`` shows the recovery-code form."""
        name = mfa_page_cookie(secure=self.secure).name
        mode, _, challenge = request.cookies.get(name, "").partition(".")
        recovery = request.query_params.get("use") == "recovery"
        notice = self.notice_for("mfa", request)
        if notice is None and mode == "e":
            notice = "enroll-needs-script"
        hide = ("code",) if recovery else ("recovery",)
        return self.respond("mfa", notice, values={"challenge": challenge}, hide=hide)

    async def register_post(self, request: Request) -> Response:
        """``POST /register`` (JavaScript off): create the account, then sign in."""
        form = await _read_form(request)
        email = form.get("email", "")
        body = {"email": email, "password": form.get("password", "")}
        answer = await call_api(request, "POST", "/auth/register", body)
        if answer.problem is not None:
            return self.refused("register", answer.problem, values={"email": email})
        return RedirectResponse("/login?registered=1", status_code=303, headers=_PAGE_HEADERS)

    async def sign_out_post(self, request: Request) -> Response:
        """``POST /account/sign-out``: end this session (the form works without scripts)."""
        form = await _read_form(request)
        answer = await call_api(request, "POST", "/auth/logout", csrf=form.get("csrf", ""))
        problem = answer.problem
        if problem is None or problem.status == 401:
            # Signed out, or the session had ended already: the browser is signed out.
            reason = "signed-out" if problem is None else "session-ended"
            redirect = RedirectResponse(
                f"/login?reason={reason}", status_code=303, headers=_PAGE_HEADERS
            )
            return _hand_on(answer, redirect)
        return self.refused("account", problem, values={"csrf": self._csrf(request)})

    async def password_post(self, request: Request) -> Response:
        """``POST /account/password`` (JavaScript off): change the password."""
        form = await _read_form(request)
        body = {
            "current_password": form.get("current_password", ""),
            "new_password": form.get("new_password", ""),
        }
        answer = await call_api(request, "POST", "/auth/password", body, csrf=form.get("csrf", ""))
        if answer.problem is not None:
            return self._account_refused(request, answer, "password")
        redirect = RedirectResponse(
            "/account?done=password-changed", status_code=303, headers=_PAGE_HEADERS
        )
        return _hand_on(answer, redirect)

    async def email_post(self, request: Request) -> Response:
        """``POST /account/email`` (JavaScript off): ask to change the e-mail address."""
        form = await _read_form(request)
        new_email = form.get("new_email", "")
        body = {"new_email": new_email, "password": form.get("password", "")}
        answer = await call_api(
            request, "POST", "/auth/email/change", body, csrf=form.get("csrf", "")
        )
        if answer.problem is not None:
            return self._account_refused(request, answer, "email", {"new_email": new_email})
        redirect = RedirectResponse(
            "/account?done=email-change-sent", status_code=303, headers=_PAGE_HEADERS
        )
        return _hand_on(answer, redirect)

    def _account_refused(
        self,
        request: Request,
        answer: Answer,
        form: str,
        values: Mapping[str, str] | None = None,
    ) -> Response:
        problem = answer.problem
        assert problem is not None  # noqa: S101 - called for refusals only
        if problem.status == 401 and problem.slug != "invalid-credentials":
            return RedirectResponse(
                "/login?reason=session-ended&next=%2Faccount",
                status_code=303,
                headers=_PAGE_HEADERS,
            )
        # The form's own notices are written "<form>-<slug>" (two forms share the page).
        own = f"{form}-{problem.slug}"
        notices = self.templates["account"].notices
        mapping = {problem.slug: own} if own in notices else {}
        all_values = {"csrf": self._csrf(request), **(values or {})}
        return _hand_on(
            answer, self.refused("account", problem, values=all_values, notice_map=mapping)
        )

    async def forgot_post(self, request: Request) -> Response:
        """``POST /forgot-password`` (JavaScript off): mail a reset link."""
        form = await _read_form(request)
        email = form.get("email", "")
        answer = await call_api(request, "POST", "/auth/password/forgot", {"email": email})
        if answer.problem is not None:
            return self.refused("forgot", answer.problem, values={"email": email})
        return self.respond("forgot", "sent", values={"email": email})

    async def resend_post(self, request: Request) -> Response:
        """``POST /verify-email/resend`` (JavaScript off): a new verification link for the
        address of a sign-in refused as not verified."""
        form = await _read_form(request)
        email = form.get("email", "")
        answer = await call_api(request, "POST", "/auth/email/verify/resend", {"email": email})
        if answer.problem is not None:
            return self.refused("login", answer.problem, values={"email": email})
        return self.respond("login", "verification-sent", values={"email": email})

    def token_page(self, name: str) -> Route:
        """``GET`` a page opened from a mail's link (``?token=``)."""

        async def endpoint(request: Request) -> Response:
            token = request.query_params.get("token", "")
            notice = self.notice_for(name, request)
            if notice is None and not token:
                notice = "token-missing"
            hide = ("form",) if notice in ("done", "token-missing") else ()
            return self.respond(name, notice, values={"token": token}, hide=hide)

        return Route(PATHS[name], endpoint, methods=["GET"], name=f"page-{name}")

    async def reset_post(self, request: Request) -> Response:
        """``POST /reset-password`` (JavaScript off): set the new password."""
        form = await _read_form(request)
        token = form.get("token", "")
        body = {"token": token, "new_password": form.get("new_password", "")}
        answer = await call_api(
            request, "POST", "/auth/password/reset", body, headers=self._same_origin(request)
        )
        if answer.problem is not None:
            return self.refused("reset", answer.problem, values={"token": token})
        return RedirectResponse(
            "/login?done=password-reset", status_code=303, headers=_PAGE_HEADERS
        )

    async def verify_post(self, request: Request) -> Response:
        """``POST /verify-email`` (JavaScript off): verify the address."""
        return await self._token_post(request, "verify", "/auth/email/verify")

    async def confirm_post(self, request: Request) -> Response:
        """``POST /confirm-email`` (JavaScript off): confirm the new address."""
        return await self._token_post(request, "confirm", "/auth/email/change/confirm")

    async def _token_post(self, request: Request, page: str, api_path: str) -> Response:
        form = await _read_form(request)
        token = form.get("token", "")
        answer = await call_api(
            request, "POST", api_path, {"token": token}, headers=self._same_origin(request)
        )
        if answer.problem is not None:
            return self.refused(page, answer.problem, values={"token": token})
        return RedirectResponse(f"{PATHS[page]}?done=done", status_code=303, headers=_PAGE_HEADERS)

    @staticmethod
    def _same_origin(request: Request) -> dict[str, str]:
        """A page sent with ``Referrer-Policy: no-referrer`` posts its forms with
        ``Origin: null``; when the browser vouches that the post is same-origin
        (``Sec-Fetch-Site``, which no page can set), the API call goes without it."""
        if request.headers.get("origin") == "null" and (
            request.headers.get("sec-fetch-site") == "same-origin"
        ):
            return {"origin": ""}
        return {}


def page_routes(
    cookie_names: CookieNames, *, password_min_length: int, secure: bool | None = None
) -> list[BaseRoute]:
    """The routes of the browser pages, their form posts and ``/static``.

    Args:
        cookie_names: the deployment's cookie names (``TOKENWARD_COOKIE_SECURE`` decides).
        password_min_length: the password policy's minimum length, shown on the pages.
        secure: cookies are ``Secure`` (default: as ``cookie_names`` say).
    """
    if secure is None:
        secure = cookie_names.access.startswith("__Host-")
    pages = Pages(cookie_names, password_min_length, secure=secure)
    static = StaticFiles()
    return [
        Route("/", pages.home, methods=["GET"], name="page-home"),
        Route("/login", pages.login_page, methods=["GET"], name="page-login"),
        Route("/login", pages.login_post, methods=["POST"], name="form-login"),
        Route(MFA_PAGE, pages.mfa_page, methods=["GET"], name="page-mfa"),
        pages.page("register", signed_in=False),
        Route("/register", pages.register_post, methods=["POST"], name="form-register"),
        pages.page("account", signed_in=True),
        Route("/account/sign-out", pages.sign_out_post, methods=["POST"], name="form-sign-out"),
        Route("/account/password", pages.password_post, methods=["POST"], name="form-password"),
        Route("/account/email", pages.email_post, methods=["POST"], name="form-email"),
        pages.page("sessions", signed_in=True),
        pages.page("forgot", signed_in=False),
        Route("/forgot-password", pages.forgot_post, methods=["POST"], name="form-forgot"),
        pages.token_page("reset"),
        Route("/reset-password", pages.reset_post, methods=["POST"], name="form-reset"),
        pages.token_page("verify"),
        Route("/verify-email", pages.verify_post, methods=["POST"], name="form-verify"),
        Route("/verify-email/resend", pages.resend_post, methods=["POST"], name="form-resend"),
        pages.token_page("confirm"),
        Route("/confirm-email", pages.confirm_post, methods=["POST"], name="form-confirm"),
        Route("/static/{name}", static.endpoint, methods=["GET"], name="static"),
    ]
