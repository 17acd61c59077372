"""The Starlette application: routes, the error mapping, the lifespan.

Starlette, not FastAPI, on the hot path: it costs about 12 µs of CPU a request against
FastAPI's 63 µs (``PERF-FACTS.md``); the FastAPI integration mounts this same app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenward.errors import TokenwardError
from tokenward.http.observability import ObservabilityMiddleware
from tokenward.http.openapi import openapi_document
from tokenward.http.problems import handle_tokenward_error, handle_unexpected, problem_response
from tokenward.http.routes import AuthRoutes
from tokenward.keyring import JWKS_MAX_AGE
from tokenward.metrics import CONTENT_TYPE
from tokenward.runtime import Tokenward
from tokenward.web import SecurityHeaders, page_routes

__all__ = ["create_app"]

_HTTP_SLUGS = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
}


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class only
    slug = _HTTP_SLUGS.get(exc.status_code, "bad-request")
    title = slug.replace("-", " ").capitalize()
    return problem_response(exc.status_code, slug, title, str(exc.detail), dict(exc.headers or {}))


def create_app(tw: Tokenward, *, manage_lifespan: bool = True) -> Starlette:
    """The HTTP app for ``tw``.

    Args:
        tw: the service; started and stopped by the app's lifespan unless
            ``manage_lifespan`` is false (the caller then starts and stops it).
        manage_lifespan: run :meth:`Tokenward.start` and :meth:`Tokenward.stop` with the app.
    """
    auth = AuthRoutes(tw)
    # Rendered once per key set: a rotation picked up by tw.reload_keys() swaps tw.keys.
    jwks_cache = (tw.keys, orjson.dumps(tw.keys.jwks()))
    openapi_body = orjson.dumps(openapi_document(tw))

    async def jwks(request: Request) -> Response:
        nonlocal jwks_cache
        if jwks_cache[0] is not tw.keys:
            jwks_cache = (tw.keys, orjson.dumps(tw.keys.jwks()))
        return Response(
            jwks_cache[1],
            media_type="application/json",
            headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"},
        )

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        await tw.check_ready()
        return Response(b'{"status":"ready"}', media_type="application/json")

    async def openapi(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    metrics = tw.metrics

    async def metrics_endpoint(request: Request) -> Response:
        return Response(
            await metrics.render(),
            media_type=CONTENT_TYPE,
            headers={"Cache-Control": "no-store"},
        )

    routes = [
        Route("/auth/register", auth.register, methods=["POST"]),
        Route("/auth/login", auth.login, methods=["POST"]),
        Route("/auth/refresh", auth.refresh, methods=["POST"]),
        Route("/auth/logout", auth.logout, methods=["POST"]),
        Route("/auth/logout-all", auth.logout_all, methods=["POST"]),
        Route("/auth/me", auth.me, methods=["GET"]),
        Route("/auth/sessions", auth.sessions, methods=["GET"]),
        Route("/auth/sessions/ended", auth.ended_sessions, methods=["GET"]),
        Route("/auth/events", auth.security_events, methods=["GET"]),
        Route("/auth/sessions/{sid}", auth.end_session, methods=["DELETE"]),
        Route("/auth/password", auth.change_password, methods=["POST"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *page_routes(tw.cookies.names, password_min_length=tw.settings.password_min_length),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_lifespan:
            await tw.start()
        try:
            yield
        finally:
            if manage_lifespan:
                await tw.stop()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                ObservabilityMiddleware,
                metrics=metrics,
                log_requests=tw.settings.access_log,
                proxies=tw.proxies,
            ),
            Middleware(SecurityHeaders, hsts=tw.settings.cookie_secure),
        ],
        exception_handlers={
            TokenwardError: handle_tokenward_error,
            HTTPException: _handle_http_exception,
            Exception: handle_unexpected,
        },
    )
    app.state.tokenward = tw
    app.state.metrics = metrics
    return app
