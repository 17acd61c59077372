"""The browser pages: sign in, register, account, sessions, and their static files.

Pages are plain HTML files shipped in the package (``web/templates``), scripts and styles
are files under ``web/static`` served at ``/static/<name>``: nothing is fetched from the
internet and nothing is built at run time. The server does two small things to a page:

* it fills ``{{min_length}}`` with the configured password length, and
* it reveals the one notice a query asks for (``?error=<slug>``, ``?registered=1``,
  ``?reason=<why>``) by dropping the ``hidden`` attribute of the element
  ``data-notice="<slug>"``. The query only *selects* a notice written in the template; no
  query text is ever copied into the page, so there is nothing to escape. This is what
  makes the plain form posts (JavaScript off) show clear messages.

The account pages need a session cookie to be worth showing; without one the browser is
sent to the sign-in page. That is a convenience, not a security check: the data on those
pages comes from the API, which authenticates every call.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tokenward.cookies import CookieNames
from tokenward.errors import NotFound

__all__ = ["Pages", "StaticFiles", "page_routes"]

_PACKAGE = "tokenward.web"
#: A notice is written ``data-notice="<slug>" hidden``, in that order, so that dropping
#: `` hidden`` reveals it (checked when the templates are loaded).
_NOTICE = re.compile(r'data-notice="([a-z0-9-]+)" hidden')
_ANY_NOTICE = re.compile(r'data-notice="')
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
#: Static files live at stable paths (``/static/tokenward.js`` is documented): browsers
#: revalidate them every time, and the ETag makes that a 304.
_STATIC_CACHE = "no-cache"


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


@dataclass(frozen=True, slots=True)
class _Template:
    html: str
    notices: frozenset[str]


class Pages:
    """The HTML pages, with the notice a query selects revealed.

    Args:
        cookie_names: the session cookie names (their presence decides where ``/`` goes).
        password_min_length: shown in the registration form's hint and ``minlength``.
    """

    def __init__(self, cookie_names: CookieNames, password_min_length: int) -> None:
        self.cookie_names = cookie_names
        self.templates: dict[str, _Template] = {}
        folder = resources.files(_PACKAGE).joinpath("templates")
        for name in ("login", "register", "account", "sessions"):
            html = folder.joinpath(f"{name}.html").read_text(encoding="utf-8")
            html = html.replace("{{min_length}}", str(password_min_length))
            notices = _NOTICE.findall(html)
            if len(notices) != len(_ANY_NOTICE.findall(html)):
                raise RuntimeError(f'{name}.html: write notices as data-notice="<slug>" hidden')
            self.templates[name] = _Template(html, frozenset(notices))
        self._rendered: dict[tuple[str, str | None], bytes] = {}

    def has_session(self, request: Request) -> bool:
        """Whether the browser holds a session cookie (the access or the CSRF cookie).

        The CSRF cookie lives as long as the refresh cookie, so it still says "signed in"
        after the short-lived access cookie is gone.
        """
        cookies = request.cookies
        return bool(cookies.get(self.cookie_names.access) or cookies.get(self.cookie_names.csrf))

    def notice_for(self, page: str, request: Request) -> str | None:
        """The notice of ``page`` the query asks for; ``error`` for an unknown error slug."""
        notices = self.templates[page].notices
        query = request.query_params
        error = query.get("error")
        if error is not None:
            return error if error in notices else "error"
        if query.get("registered") and "registered" in notices:
            return "registered"
        reason = query.get("reason")
        if reason is not None and reason in notices:
            return reason
        return None

    def render(self, page: str, notice: str | None) -> bytes:
        """The page with ``notice`` (a key of the template's notices, or None) revealed."""
        key = (page, notice)
        body = self._rendered.get(key)
        if body is None:
            html = self.templates[page].html
            if notice is not None:
                attribute = f'data-notice="{notice}"'
                html = html.replace(f"{attribute} hidden", attribute, 1)
            # Bounded: pages x the notices written in their templates.
            body = self._rendered[key] = html.encode("utf-8")
        return body

    def page(self, name: str, *, signed_in: bool) -> Route:
        """The route serving page ``name`` at its path."""
        path = {
            "login": "/login",
            "register": "/register",
            "account": "/account",
            "sessions": "/account/sessions",
        }[name]

        async def endpoint(request: Request) -> Response:
            if signed_in and not self.has_session(request):
                return RedirectResponse(
                    f"/login?next={quote(path, safe='')}", status_code=303, headers=_PAGE_HEADERS
                )
            body = self.render(name, self.notice_for(name, request))
            return HTMLResponse(body, headers=_PAGE_HEADERS)

        return Route(path, endpoint, methods=["GET"], name=f"page-{name}")

    async def home(self, request: Request) -> Response:
        """``GET /``: the account page when the browser holds a session, else sign in."""
        target = "/account" if self.has_session(request) else "/login"
        return RedirectResponse(target, status_code=303, headers=_PAGE_HEADERS)


def page_routes(cookie_names: CookieNames, *, password_min_length: int) -> list[BaseRoute]:
    """The routes of the browser pages and ``/static``.

    Args:
        cookie_names: the deployment's cookie names (``TOKENWARD_COOKIE_SECURE`` decides).
        password_min_length: the password policy's minimum length, shown on the register page.
    """
    pages = Pages(cookie_names, password_min_length)
    static = StaticFiles()
    return [
        Route("/", pages.home, methods=["GET"], name="page-home"),
        pages.page("login", signed_in=False),
        pages.page("register", signed_in=False),
        pages.page("account", signed_in=True),
        pages.page("sessions", signed_in=True),
        Route("/static/{name}", static.endpoint, methods=["GET"], name="static"),
    ]
