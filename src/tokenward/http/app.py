"""The Starlette application: routes, the error mapping, the lifespan.

Starlette, not FastAPI, on the hot path: it costs about 12 µs of CPU a request against
FastAPI's 63 µs; the FastAPI integration mounts this same app.

Operator endpoints:

* ``/metrics`` is **not** on the public app unless ``TOKENWARD_METRICS_TOKEN`` is set, and
  then only for ``Authorization: Bearer <that token>`` (compared in constant time). The
  usual way to scrape is the operator listener (``TOKENWARD_METRICS_PORT``,
  :mod:`tokenward.http.metrics_listener`), which the lifespan starts and stops.
* ``/readyz`` answers with the state of each component (:func:`readiness`): 200
  ``{"status": "ready"|"degraded", "components": {...}}`` while the instance can serve
  sessions, a 503 problem with the same ``components`` when it cannot. A load balancer acts
  on the status code; see ``docs/deployment.md`` for why a database outage is ``degraded``.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenward.errors import TokenInvalid, TokenwardError
from tokenward.http.email_routes import EmailRoutes
from tokenward.http.metrics_listener import MetricsListener
from tokenward.http.mfa_routes import mfa_routes
from tokenward.http.observability import ObservabilityMiddleware
from tokenward.http.openapi import openapi_document
from tokenward.http.problems import handle_tokenward_error, handle_unexpected, problem_response
from tokenward.http.routes import AuthRoutes
from tokenward.keyring import JWKS_MAX_AGE
from tokenward.metrics import CONTENT_TYPE
from tokenward.runtime import Tokenward
from tokenward.web import not_found_page, page_routes, wants_html
from tokenward.web.headers import security_headers

__all__ = ["create_app", "readiness"]

#: Component states in the ``/readyz`` body.
OK, DEGRADED, UNAVAILABLE = "ok", "degraded", "unavailable"

_HTTP_SLUGS = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
}


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class only
    if exc.status_code == 404 and request.method == "GET" and wants_html(request):
        return not_found_page()  # a browser's navigation: a page, not a JSON problem
    slug = _HTTP_SLUGS.get(exc.status_code, "bad-request")
    title = slug.replace("-", " ").capitalize()
    return problem_response(exc.status_code, slug, title, str(exc.detail), dict(exc.headers or {}))


async def _answers(check: Callable[[], Awaitable[object]], seconds: float) -> str:
    try:
        await asyncio.wait_for(check(), seconds)
    except Exception:  # any failure to answer is the component's state, not a 500
        return UNAVAILABLE
    return OK


async def readiness(tw: Tokenward) -> tuple[bool, dict[str, str]]:
    """Whether this instance can serve sessions, and the state of each component.

    * ``redis``: the session store answers a PING. Without it nothing works: not ready.
    * ``database``: the user store answers. Without it logins and registrations fail
      (503) but sessions, refreshes and logouts go on: degraded, still ready.
    * ``revocation_feed``: subscribed to the ended-session channel. While it is down every
      request asks Redis (fail closed, only slower): degraded, still ready.
    * ``signing_keys``: a key in force signs now. Without one no token can be issued:
      not ready.
    """
    timeout = tw.settings.backend_timeout
    redis, database = await asyncio.gather(
        _answers(tw.redis.ping, timeout), _answers(tw.user_store.ping, timeout)
    )
    components = {
        "redis": redis,
        "database": database,
        "revocation_feed": OK if tw.cache.healthy else DEGRADED,
        "signing_keys": OK if tw.keys.signing_key.signs_at(tw.clock.now()) else UNAVAILABLE,
    }
    return redis == OK and components["signing_keys"] == OK, components


def create_app(
    tw: Tokenward, *, manage_lifespan: bool = True, freeze_gc: bool = False
) -> Starlette:
    """The HTTP app for ``tw``.

    Args:
        tw: the service; started and stopped by the app's lifespan unless
            ``manage_lifespan`` is false (the caller then starts and stops it).
        manage_lifespan: run :meth:`Tokenward.start` and :meth:`Tokenward.stop` with the app.
        freeze_gc: once started, move every object the process holds into the garbage
            collector's permanent generation (:func:`gc.freeze`). A process of its own
            (``tokenward serve``'s workers) wants it: a full collection then walks only
            what requests made since, not the modules, the app and its pools (measured
            pauses of 45-84 ms, which a request caught in one waits out). A library must
            not do it to its host's process, so it is off by default.
    """
    auth = AuthRoutes(tw)
    email = EmailRoutes(tw)
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

    # One response for every call: a Response is not changed by being sent.
    healthy = Response(b'{"status":"ok"}', media_type="application/json")

    async def healthz(request: Request) -> Response:
        return healthy

    async def readyz(request: Request) -> Response:
        ready, components = await readiness(tw)
        if not ready:
            down = ", ".join(name for name, state in components.items() if state != OK)
            return problem_response(
                503,
                "unavailable",
                "Service unavailable",
                f"not ready: {down}",
                {"Retry-After": "1"},
                components=components,
            )
        status = "ready" if all(state == OK for state in components.values()) else "degraded"
        body = orjson.dumps({"status": status, "components": components})
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def openapi(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    metrics = tw.metrics
    token = tw.settings.metrics_token
    scrape_token = token.get_secret_value().encode() if token is not None else None

    async def metrics_endpoint(request: Request) -> Response:
        # Only routed with TOKENWARD_METRICS_TOKEN; one Authorization header, that token.
        assert scrape_token is not None  # noqa: S101 - the route exists only with a token
        values = request.headers.getlist("authorization")
        scheme, _, presented = (values[0] if len(values) == 1 else "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), scrape_token
        ):
            raise TokenInvalid("/metrics needs 'Authorization: Bearer <TOKENWARD_METRICS_TOKEN>'")
        return Response(
            await metrics.render(),
            media_type=CONTENT_TYPE,
            headers={"Cache-Control": "no-store"},
        )

    listener: MetricsListener | None = None
    if tw.settings.metrics_port is not None:
        listener = MetricsListener(metrics, tw.settings.metrics_host, tw.settings.metrics_port)

    # The router tries routes in order (a regex match each): the hot ones first. Every
    # path here is distinct, so the order changes no match.
    routes = [
        Route("/auth/me", auth.me, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/auth/refresh", auth.refresh, methods=["POST"]),
        Route("/auth/register", auth.register, methods=["POST"]),
        Route("/auth/login", auth.login, methods=["POST"]),
        Route("/auth/logout", auth.logout, methods=["POST"]),
        Route("/auth/logout-all", auth.logout_all, methods=["POST"]),
        Route("/auth/sessions", auth.sessions, methods=["GET"]),
        Route("/auth/sessions/ended", auth.ended_sessions, methods=["GET"]),
        Route("/auth/events", auth.security_events, methods=["GET"]),
        Route("/auth/sessions/{sid}", auth.end_session, methods=["DELETE"]),
        Route("/auth/password", auth.change_password, methods=["POST"]),
        Route("/auth/token", auth.service_token, methods=["POST"]),
        Route("/auth/email/verify", email.verify, methods=["POST"]),
        Route("/auth/email/verify/resend", email.resend, methods=["POST"]),
        Route("/auth/password/forgot", email.forgot, methods=["POST"]),
        Route("/auth/password/reset", email.reset, methods=["POST"]),
        Route("/auth/email/change", email.change, methods=["POST"]),
        Route("/auth/email/change/confirm", email.confirm_change, methods=["POST"]),
        *mfa_routes(tw, auth),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *([Route("/metrics", metrics_endpoint, methods=["GET"])] if scrape_token else []),
        *page_routes(tw.cookies.names, password_min_length=tw.settings.password_min_length),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_lifespan:
            await tw.start()
        try:
            if freeze_gc:
                # Before the metrics listener: its "listening" line stays the last step
                # of a worker's start (the full collection takes a moment).
                gc.collect()  # what start-up left as garbage is freed, not frozen
                gc.freeze()
            if listener is not None:
                await listener.start()
            try:
                yield
            finally:
                if listener is not None:
                    await listener.stop()
        finally:
            if manage_lifespan:
                await tw.stop()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            # One layer for request ids, metrics, the access log and the security headers
            # (what SecurityHeaders adds, without its layer): each layer is a coroutine
            # and a send wrapper per request.
            Middleware(
                ObservabilityMiddleware,
                metrics=metrics,
                log_requests=tw.settings.access_log,
                proxies=tw.proxies,
                headers=security_headers(hsts=tw.settings.cookie_secure),
            ),
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
