"""Authenticating HTTP requests: which transport, which token, CSRF for cookies.

Rules (``API.md``): two ``Authorization`` headers are a 400; a bearer token wins over an
access cookie; bearer requests are exempt from CSRF; a cookie-authenticated unsafe request
must pass the Origin check and the session-bound double-submit check. With transparent
refresh on, a cookie request whose access token is expired or gone is refreshed here (the
new cookies are attached to the response by :func:`apply_pending_cookies`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from tokenward.cookies import CookieSpec
from tokenward.csrf import check_origin, check_token
from tokenward.errors import (
    BadRequest,
    CsrfError,
    RefreshLimited,
    RefreshReused,
    TokenExpired,
    TokenInvalid,
)
from tokenward.ratelimit import Ticket
from tokenward.runtime import Tokenward
from tokenward.sessions import Issued, Principal

__all__ = [
    "RequestAuth",
    "apply_pending_cookies",
    "authenticate",
    "check_cookie_csrf",
    "csrf_header_matches",
    "is_unsafe",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PENDING = "tokenward_cookies"


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """An authenticated request and how it authenticated."""

    principal: Principal
    bearer: bool


def is_unsafe(request: Request) -> bool:
    """Whether the method changes state (POST, PUT, PATCH, DELETE, ...)."""
    return request.method not in SAFE_METHODS


def bearer_token(request: Request) -> str | None:
    """The bearer token, ``None`` without ``Authorization``.

    Raises:
        BadRequest: more than one ``Authorization`` header.
        TokenInvalid: an ``Authorization`` header that is not ``Bearer <token>``.
    """
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise BadRequest("more than one Authorization header")
    if not values:
        return None
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenInvalid("expected 'Authorization: Bearer <token>'")
    return token


def csrf_header_matches(header: str | None, cookie: str | None) -> bool:
    """Whether ``X-CSRF-Token`` is present and equals the CSRF cookie, in constant time.

    Compared as UTF-8 bytes: :func:`hmac.compare_digest` refuses ``str`` with non-ASCII
    characters, which a header (decoded as latin-1) may well hold.
    """
    if not header or not cookie:
        return False
    return hmac.compare_digest(header.encode(), cookie.encode())


def check_cookie_csrf(tw: Tokenward, request: Request, session_digest: str) -> None:
    """The Origin check and the session-bound double-submit check."""
    check_origin(
        request.headers.get("origin"),
        request.headers.get("sec-fetch-site"),
        tw.settings.allowed_origins,
    )
    check_token(
        request.headers.get("x-csrf-token"),
        request.cookies.get(tw.cookies.names.csrf),
        session_digest,
    )


async def authenticate(tw: Tokenward, request: Request) -> RequestAuth:
    """Authenticate a request to a protected route.

    Raises:
        BadRequest, TokenExpired, TokenInvalid, SessionEnded, CsrfError, Unavailable.
    """
    now = tw.clock.now()
    token = bearer_token(request)
    if token is not None:
        return RequestAuth(await tw.sessions.authenticate(token, now=now), bearer=True)
    cookie = request.cookies.get(tw.cookies.names.access)
    try:
        if not cookie:
            raise TokenInvalid("no access token")
        principal = await tw.sessions.authenticate(cookie, now=now)
    except (TokenExpired, TokenInvalid) as exc:
        refresh = request.cookies.get(tw.cookies.names.refresh)
        expired_or_gone = isinstance(exc, TokenExpired) or not cookie
        if not (tw.settings.transparent_refresh and refresh and expired_or_gone):
            raise
        principal = await _refresh_in_place(tw, request, refresh, now)
    if is_unsafe(request):
        check_cookie_csrf(tw, request, principal.state.csrf_digest)
    return RequestAuth(principal, bearer=False)


def client_of(tw: Tokenward, request: Request) -> tuple[str, str]:
    """The client's address (after trusted proxies) and user agent, for security events."""
    peer = request.client.host if request.client else None
    ip = tw.proxies.client_ip(peer, request.headers.get("x-forwarded-for"))
    return ip, request.headers.get("user-agent", "")[:256]


async def rotate_recorded(
    tw: Tokenward, request: Request, ticket: Ticket, token: str, csrf: str | None, now: int
) -> Issued:
    """Rotate a refresh token: a success refunds the address throttle; a reuse (theft), a
    grace replay (at most one per session per report interval) and the first refusal of
    the session's refresh limit are recorded as security events."""
    client = client_of(tw, request)
    try:
        issued = await tw.sessions.refresh(token, csrf_token=csrf, now=now, client=client)
    except RefreshReused:
        tw.events.refresh_reused(token, client=client, now=now)
        raise
    except RefreshLimited as exc:
        tw.metrics.rate_limit_refused("refresh-session")
        if exc.first:
            client = client_of(tw, request)
            tw.events.refresh_limited(token, exc.retry_after, client=client, now=now)
        raise
    if issued.report_replay:
        tw.events.refresh_replayed(token, client=client, now=now)
    await ticket.refund()
    return issued


async def _refresh_in_place(tw: Tokenward, request: Request, refresh: str, now: int) -> Principal:
    csrf = request.cookies.get(tw.cookies.names.csrf)
    if csrf is None:
        raise TokenInvalid("no CSRF cookie; log in again")
    if is_unsafe(request):
        check_origin(
            request.headers.get("origin"),
            request.headers.get("sec-fetch-site"),
            tw.settings.allowed_origins,
        )
        # 403 csrf, as any cookie-authenticated unsafe request without the token gets: the
        # session itself is fine (the client should reload, not log in). Checked before the
        # refresh, so a forged request changes nothing and gets no cookies.
        if not csrf_header_matches(request.headers.get("x-csrf-token"), csrf):
            raise CsrfError("missing or mismatched X-CSRF-Token")
    # The same throttle and theft record as ``POST /auth/refresh``: a refresh cookie sent to
    # a protected route must not be a way around either.
    ticket = await tw.throttle.refresh(client_of(tw, request)[0], now=now)
    issued = await rotate_recorded(tw, request, ticket, refresh, csrf, now)
    request.scope.setdefault("state", {})[_PENDING] = tw.cookies.issue(
        access_token=issued.access_token,
        access_max_age=tw.tokens.ttl,
        refresh_token=issued.refresh_token,
        refresh_max_age=issued.refresh_expires_in,
        csrf_token=csrf,
    )
    state = await tw.sessions.state(issued.uid, issued.sid, now=now)
    return Principal(issued.access_claims, state)


def apply_pending_cookies(request: Request, response: Response) -> Response:
    """Attach cookies a transparent refresh produced during this request."""
    pending: list[CookieSpec] = request.scope.get("state", {}).get(_PENDING, [])
    for spec in pending:
        response.headers.append("set-cookie", spec.header())
    return response
