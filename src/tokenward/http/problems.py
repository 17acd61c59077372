"""The one place where errors become HTTP responses (RFC 9457 problem details).

Every :class:`~tokenward.errors.TokenwardError` knows its slug and status; this module
renders it as ``application/problem+json`` with the headers clients rely on
(``Retry-After`` on 429, ``WWW-Authenticate`` on 401 for bearer clients). Anything else that
escapes a handler is logged (without request data) and answered with a bare 500 problem:
no stack trace, token or secret ever reaches a response.
"""

from __future__ import annotations

import logging

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from tokenward.errors import AuthError, RateLimited, RefreshReused, TokenwardError, Unavailable
from tokenward.web.pages import alarm_cookie

__all__ = ["PROBLEM_PREFIX", "is_bearer_transport", "problem_response", "render_error"]

PROBLEM_PREFIX = "urn:tokenward:problem:"
log = logging.getLogger("tokenward.http")


def is_bearer_transport(request: HTTPConnection) -> bool:
    """Whether the client asked for bearer mode (``X-Auth-Transport: bearer``, any case).

    The one test of the header: the routes choose the transport with it and the error
    handler its ``WWW-Authenticate``, so the two can never disagree.
    """
    return request.headers.get("x-auth-transport", "").strip().lower() == "bearer"


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> Response:
    """A problem+json response."""
    body = {
        "type": PROBLEM_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    all_headers = {"Cache-Control": "no-store", **(headers or {})}
    return Response(
        orjson.dumps(body),
        status_code=status,
        headers=all_headers,
        media_type="application/problem+json",
    )


def render_error(exc: TokenwardError, *, bearer: bool = False) -> Response:
    """The response for one of our errors."""
    headers: dict[str, str] = {}
    extra: dict[str, object] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
        extra["retry_after"] = exc.retry_after
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = "1"
    if isinstance(exc, AuthError) and bearer:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    extra.update(getattr(exc, "extra", None) or {})
    rule = getattr(exc, "rule", None)
    if rule is not None:
        extra["rule"] = rule
    return problem_response(exc.status, exc.slug, exc.title, exc.detail, headers, **extra)


async def handle_tokenward_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for :class:`TokenwardError`."""
    assert isinstance(exc, TokenwardError)  # noqa: S101 - registered for this class only
    bearer = "authorization" in request.headers or is_bearer_transport(request)
    response = render_error(exc, bearer=bearer)
    if isinstance(exc, RefreshReused) and not bearer:
        # A protected route's own refresh (transparent refresh) found a replaced refresh
        # cookie: the browser's sign-in page may raise the theft alarm.
        tw = getattr(request.app.state, "tokenward", None)
        secure = bool(tw.settings.cookie_secure) if tw is not None else True
        response.headers.append("set-cookie", alarm_cookie(secure=secure).header())
    return response


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Last resort: log the exception type and location, answer a bare 500 problem."""
    log.error(
        "unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc
    )
    return problem_response(500, "internal", "Internal error", "an unexpected error occurred")
