"""Authenticating HTTP requests: which transport, which token, CSRF for cookies.

Rules: two ``Authorization`` headers are a 400; a bearer token wins over an access cookie;
bearer requests are exempt from CSRF; a cookie-authenticated unsafe request must pass the
Origin (or, without ``Origin``, Referer) check and the session-bound double-submit check.
With transparent refresh on, a cookie request whose access token is expired or gone is
refreshed here (the new cookies are attached to the response by
:func:`apply_pending_cookies`).

Cookies are read with :func:`cookie_candidates`, every value sent under a name: when a
sibling sub-domain has tossed in a second cookie of the same name, each is tried in the
order sent and the first that works wins, so the tossed one can neither replace nor
(by failing) end the real session.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from tokenward.cookies import CookieSpec, cookie_values
from tokenward.csrf import check_origin, check_token
from tokenward.errors import (
    AuthError,
    BadRequest,
    CsrfError,
    RefreshLimited,
    RefreshReused,
    TokenExpired,
    TokenInvalid,
    TokenwardError,
    Unavailable,
)
from tokenward.runtime import Tokenward
from tokenward.sessions import Issued, Principal
from tokenward.throttle import Ticket

log = logging.getLogger("tokenward.http")

__all__ = [
    "RequestAuth",
    "apply_pending_cookies",
    "authenticate",
    "check_cookie_csrf",
    "check_request_origin",
    "cookie_candidates",
    "csrf_cookie",
    "csrf_header_matches",
    "first_that_works",
    "forwarded_for",
    "is_unsafe",
    "rotate_any",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PENDING = "tokenward_cookies"
#: Same-named cookies tried per request at most: each well-formed one may cost a Redis
#: round trip, and a browser sends one of ours (two while a tossed one is around).
MAX_COOKIE_CANDIDATES = 8
_T = TypeVar("_T")


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


def cookie_candidates(request: Request, name: str) -> list[str]:
    """Every value of cookie ``name`` the request carries, in the order sent.

    Not ``request.cookies``, which keeps one value per name: the last one sent.
    """
    return cookie_values(request.headers.getlist("cookie"), name)[:MAX_COOKIE_CANDIDATES]


def csrf_cookie(tw: Tokenward, request: Request) -> str | None:
    """The CSRF cookie that ``X-CSRF-Token`` echoes, else the first one sent.

    With several same-named cookies, matching any of them is as safe as matching one: the
    token must still belong to the session (:func:`~tokenward.csrf.check_token`).
    """
    values = cookie_candidates(request, tw.cookies.names.csrf)
    header = request.headers.get("x-csrf-token")
    return next((v for v in values if csrf_header_matches(header, v)), None) or (
        values[0] if values else None
    )


async def first_that_works(values: Sequence[str], attempt: Callable[[str], Awaitable[_T]]) -> _T:
    """``attempt`` each value in order; the first that succeeds wins.

    An :class:`AuthError` or :class:`CsrfError` moves on to the next value; any other error
    (429, 503) ends the search. When all fail, the most telling error is raised: the
    first that is not a bare :class:`TokenInvalid` (say, the real cookie's session ended),
    else the first.
    """
    failure: TokenwardError | None = None
    for value in values:
        try:
            return await attempt(value)
        except (AuthError, CsrfError) as exc:
            if failure is None or (type(failure) is TokenInvalid and type(exc) is not TokenInvalid):
                failure = exc
    raise failure or TokenInvalid("no token")


def check_request_origin(tw: Tokenward, request: Request) -> None:
    """The Origin check (``Referer`` when ``Origin`` is absent) against the allowed origins."""
    check_origin(
        request.headers.get("origin"),
        request.headers.get("sec-fetch-site"),
        tw.settings.allowed_origins,
        request.headers.get("referer"),
    )


def check_cookie_csrf(tw: Tokenward, request: Request, session_digest: str) -> None:
    """The Origin check and the session-bound double-submit check."""
    check_request_origin(tw, request)
    check_token(request.headers.get("x-csrf-token"), csrf_cookie(tw, request), session_digest)


async def authenticate(tw: Tokenward, request: Request) -> RequestAuth:
    """Authenticate a request to a protected route.

    Raises:
        BadRequest, TokenExpired, TokenInvalid, SessionEnded, CsrfError, Unavailable.
    """
    now = tw.clock.now()
    token = bearer_token(request)
    if token is not None:
        return RequestAuth(await tw.sessions.authenticate(token, now=now), bearer=True)
    cookies = cookie_candidates(request, tw.cookies.names.access)
    try:
        if not cookies:
            raise TokenInvalid("no access token")
        principal = await first_that_works(
            cookies, lambda cookie: tw.sessions.authenticate(cookie, now=now)
        )
    except (TokenExpired, TokenInvalid) as exc:
        refresh = cookie_candidates(request, tw.cookies.names.refresh)
        expired_or_gone = isinstance(exc, TokenExpired) or not cookies
        if not (tw.settings.transparent_refresh and refresh and expired_or_gone):
            raise
        principal = await _refresh_in_place(tw, request, refresh, now)
    if is_unsafe(request):
        check_cookie_csrf(tw, request, principal.state.csrf_digest)
    return RequestAuth(principal, bearer=False)


def forwarded_for(request: Request) -> str | None:
    """Every ``X-Forwarded-For`` line, joined in order (``None`` without one).

    A proxy may append its own line rather than extend the client's; reading only the
    first line (``headers.get``) would believe the hops the client wrote and skip the
    ones the proxies added.
    """
    return ", ".join(request.headers.getlist("x-forwarded-for")) or None


def client_of(tw: Tokenward, request: Request) -> tuple[str, str]:
    """The client's address (after trusted proxies) and user agent, for security events."""
    peer = request.client.host if request.client else None
    ip = tw.proxies.client_ip(peer, forwarded_for(request))
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
    try:
        await ticket.refund()
    except Unavailable:
        # The rotation is made: a 503 now would have the client retry a token already
        # replaced. The attempt stays counted against the address, nothing worse.
        log.warning("throttle refund after a refresh failed: the attempt stays counted")
    return issued


async def rotate_any(
    tw: Tokenward,
    request: Request,
    ticket: Ticket,
    tokens: Sequence[str],
    csrf: str | None,
    now: int,
) -> Issued:
    """:func:`rotate_recorded` with each refresh cookie sent, in order; the first that
    rotates wins (see :func:`first_that_works`). One cookie: exactly ``rotate_recorded``."""
    return await first_that_works(
        tokens, lambda token: rotate_recorded(tw, request, ticket, token, csrf, now)
    )


async def _refresh_in_place(
    tw: Tokenward, request: Request, refresh: Sequence[str], now: int
) -> Principal:
    csrf = csrf_cookie(tw, request)
    if csrf is None:
        raise TokenInvalid("no CSRF cookie; log in again")
    if is_unsafe(request):
        check_request_origin(tw, request)
        # 403 csrf, as any cookie-authenticated unsafe request without the token gets: the
        # session itself is fine (the client should reload, not log in). Checked before the
        # refresh, so a forged request changes nothing and gets no cookies.
        if not csrf_header_matches(request.headers.get("x-csrf-token"), csrf):
            raise CsrfError("missing or mismatched X-CSRF-Token")
    # The same throttle and theft record as ``POST /auth/refresh``: a refresh cookie sent to
    # a protected route must not be a way around either.
    async with tw.throttle.refreshing(client_of(tw, request)[0], now=now) as ticket:
        issued = await rotate_any(tw, request, ticket, refresh, csrf, now)
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
