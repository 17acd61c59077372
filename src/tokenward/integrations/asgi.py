"""Plain ASGI middleware: Tokenward in front of any ASGI app (Starlette, Litestar, FastAPI).

:class:`TokenwardMiddleware` does three things, all with the code the standalone server runs:

* requests to a *protected* path are authenticated with
  :func:`tokenward.http.auth.authenticate` (bearer or cookie, CSRF for cookie-authenticated
  unsafe methods, transparent refresh when configured); a failure is answered right here
  with the same problem+json response the server gives, and a success puts the
  :class:`~tokenward.sessions.Principal` into ``scope["state"]["tokenward"]`` (read it
  with :func:`get_principal`, or ``request.state.tokenward`` in Starlette and Litestar);
* with ``serve_routes=True`` it answers Tokenward's own paths (``/auth/*`` and
  ``/.well-known/jwks.json``) with the standalone server's app, so one process serves the
  host's routes and Tokenward's;
* cookies produced by a transparent refresh are added to whatever response the host sends.

Tokenward's own paths are never "protected": they authenticate themselves (login must be
reachable without a session).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenward.cookies import CookieSpec
from tokenward.errors import ConfigError, TokenInvalid, TokenwardError
from tokenward.http.auth import RequestAuth, authenticate, bearer_token, check_request_origin
from tokenward.http.problems import handle_tokenward_error
from tokenward.mfa import check_step_up
from tokenward.runtime import Tokenward
from tokenward.sessions import Principal

__all__ = [
    "STATE_KEY",
    "TokenwardMiddleware",
    "authenticate_once",
    "authenticate_service",
    "get_principal",
    "is_tokenward_path",
    "presents_credentials",
]

#: Where the principal of an authenticated request is kept: ``scope["state"][STATE_KEY]``.
STATE_KEY = "tokenward"
_AUTH_KEY = "tokenward_auth"
# The key tokenward.http.auth uses for cookies of a transparent refresh.
_PENDING_KEY = "tokenward_cookies"

JWKS_PATH = "/.well-known/jwks.json"

#: A predicate deciding which requests must be authenticated.
ProtectPredicate = Callable[[Scope], bool]


def is_tokenward_path(path: str) -> bool:
    """Whether Tokenward itself answers ``path`` (its routes, the JWKS).

    The routes must stay at ``/auth/*``: the refresh cookie is scoped to ``Path=/auth``.
    """
    return path.startswith("/auth/") or path == JWKS_PATH


def _prefix_predicate(prefixes: Sequence[str]) -> ProtectPredicate:
    # Match whole path segments: "/notes" protects "/notes" and "/notes/1", not "/notesy".
    exact = tuple(p.rstrip("/") or "/" for p in prefixes)
    under = tuple(p if p.endswith("/") else p + "/" for p in exact)

    def protected(scope: Scope) -> bool:
        path: str = scope["path"]
        return path in exact or path.startswith(under)

    return protected


def get_principal(scope: Scope) -> Principal | None:
    """The principal the middleware (or a FastAPI dependency) authenticated, if any."""
    state = scope.get("state")
    if not isinstance(state, dict):
        return None
    principal = state.get(STATE_KEY)
    return principal if isinstance(principal, Principal) else None


def presents_credentials(tw: Tokenward, request: Request) -> bool:
    """Whether the request carries anything to authenticate with.

    A bearer header, an access cookie, or (with transparent refresh) a refresh cookie the
    access cookie could be renewed from.
    """
    if "authorization" in request.headers:
        return True
    names = tw.cookies.names
    if names.access in request.cookies:
        return True
    return tw.settings.transparent_refresh and names.refresh in request.cookies


async def authenticate_service(tw: Tokenward, request: Request, audience: str) -> RequestAuth:
    """Authenticate a request to the service ``audience`` (one of ``TOKENWARD_AUDIENCES``).

    Only a bearer token minted for that service (``POST /auth/token``) of a live session is
    accepted: Tokenward's own tokens, cookies included, name another audience.

    Raises:
        BadRequest, TokenExpired, TokenInvalid, SessionEnded, Unavailable.
    """
    token = bearer_token(request)
    if token is None:
        raise TokenInvalid(f"expected a bearer token for '{audience}' (POST /auth/token)")
    now = tw.clock.now()
    claims = tw.service_tokens.verifier(audience).verify(token, now=now)
    state = await tw.sessions.state(claims.sub, claims.sid, now=now)
    return RequestAuth(Principal(claims, state), bearer=True)


async def authenticate_once(
    tw: Tokenward, request: Request, audience: str | None = None
) -> RequestAuth:
    """:func:`~tokenward.http.auth.authenticate`, at most once per request.

    The result is kept in the request's state, so several dependencies of one request (or
    the middleware and a dependency) never verify twice, nor refresh twice. With an
    ``audience`` other than ``TOKENWARD_AUDIENCE``: :func:`authenticate_service`.
    """
    state: dict[str, Any] = request.scope.setdefault("state", {})
    done = state.get(_AUTH_KEY)
    if isinstance(done, RequestAuth):
        return done
    if audience is None or audience == tw.settings.audience:
        auth = await authenticate(tw, request)
    else:
        auth = await authenticate_service(tw, request, audience)
    state[_AUTH_KEY] = auth
    state[STATE_KEY] = auth.principal
    return auth


def _http_view(scope: Scope) -> Request:
    """A Request on the scope; a WebSocket handshake is seen as the GET it is."""
    if scope["type"] == "websocket":
        return Request({**scope, "type": "http", "method": "GET"})
    return Request(scope)


class TokenwardMiddleware:
    """Authenticates protected paths and (optionally) serves Tokenward's routes.

    Args:
        app: the ASGI app to wrap.
        tw: the Tokenward service; start and stop it with the host app's lifespan.
        protect: path prefixes that require authentication (whole segments:
            ``"/notes"`` covers ``/notes`` and ``/notes/1``), or a predicate on the ASGI
            scope. ``/auth/*`` and ``/.well-known/jwks.json`` are never protected.
        serve_routes: answer ``/auth/*`` and ``/.well-known/jwks.json`` with Tokenward's own
            app (the standalone server's routes and error mapping).
        audience: this app's service name, one of ``TOKENWARD_AUDIENCES``: protected paths
            then accept only bearer tokens minted for it (``POST /auth/token``), and refuse
            Tokenward's own (cookies included). Default: ``TOKENWARD_AUDIENCE``.
        require_mfa: path prefixes (or a predicate) that are protected *and* need a session
            that used a second factor: 403 ``mfa-required`` otherwise (docs/mfa.md).
        require_recent_auth: path prefixes (or a predicate) that are protected *and* need
            an authentication in the last ``max_auth_age`` seconds: 403
            ``reauthentication-required`` otherwise.
        max_auth_age: seconds, for ``require_recent_auth``; default
            ``TOKENWARD_REAUTH_MAX_AGE``. A path in both lists needs both.

    WebSocket connections to protected paths are authenticated at the handshake and
    closed with code 1008 when that fails (cookies of a transparent refresh cannot be set
    on a WebSocket, so such a handshake needs a live access token). A handshake without
    ``Authorization`` (so authenticated by cookie) must also come from an allowed origin
    (``TOKENWARD_ALLOWED_ORIGINS``): browsers send the session cookies with a WebSocket
    opened by *any* page, the same-origin policy does not apply to WebSockets, and the
    ``Origin`` header is the only sign of who opened it (cross-site WebSocket hijacking).
    ``Origin: null`` (sandboxed frames, ``file:`` pages) is refused like a foreign one.
    """

    def __init__(
        self,
        app: ASGIApp,
        tw: Tokenward,
        *,
        protect: Sequence[str] | ProtectPredicate = (),
        serve_routes: bool = False,
        audience: str | None = None,
        require_mfa: Sequence[str] | ProtectPredicate = (),
        require_recent_auth: Sequence[str] | ProtectPredicate = (),
        max_auth_age: int | None = None,
    ) -> None:
        for name, value in (
            ("protect", protect),
            ("require_mfa", require_mfa),
            ("require_recent_auth", require_recent_auth),
        ):
            if isinstance(value, str):
                raise TypeError(f"{name}: pass a list of path prefixes, not one string")
        if audience is not None and not tw.service_tokens.allows(audience):
            raise ConfigError(f"audience: {audience!r} is not in TOKENWARD_AUDIENCES")
        self.app = app
        self.tw = tw
        self.audience = audience
        self._protected = protect if callable(protect) else _prefix_predicate(protect)
        self._mfa = require_mfa if callable(require_mfa) else _prefix_predicate(require_mfa)
        self._recent = (
            require_recent_auth
            if callable(require_recent_auth)
            else _prefix_predicate(require_recent_auth)
        )
        self._recent_age = max_auth_age or tw.settings.reauth_max_age
        self._routes: ASGIApp | None = None
        if serve_routes:
            from tokenward.http.app import create_app

            self._routes = create_app(tw, manage_lifespan=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if is_tokenward_path(path):
            if self._routes is not None and scope["type"] == "http":
                # A copy: the Tokenward app records itself as scope["app"].
                await self._routes(dict(scope), receive, send)
            else:
                await self.app(scope, receive, send)
            return
        needs_mfa, needs_recent = self._mfa(scope), self._recent(scope)
        if needs_mfa or needs_recent or self._protected(scope):
            # Created first, so the request view (a copy for WebSockets) shares this dict.
            scope.setdefault("state", {})
            request = _http_view(scope)
            try:
                if scope["type"] == "websocket" and "authorization" not in request.headers:
                    check_request_origin(self.tw, request)
                auth = await authenticate_once(self.tw, request, self.audience)
                claims, now = auth.principal.claims, self.tw.clock.now()
                if needs_mfa:
                    check_step_up(claims, mfa=True, now=now)
                if needs_recent:
                    check_step_up(claims, max_age=self._recent_age, now=now)
            except TokenwardError as exc:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = await handle_tokenward_error(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, self._with_pending_cookies(scope, send))

    @staticmethod
    def _with_pending_cookies(scope: Scope, send: Send) -> Send:
        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                pending: list[CookieSpec] = scope.get("state", {}).get(_PENDING_KEY, [])
                if pending:
                    headers = list(message.get("headers", []))
                    headers.extend(
                        (b"set-cookie", spec.header().encode("latin-1")) for spec in pending
                    )
                    message = {**message, "headers": headers}
            await send(message)

        return send_with_cookies
