"""Request ids, metrics and the access log: one pure ASGI middleware.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs the app in a separate
task and copies the response through a stream: that costs tens of microseconds a request,
more than the framework itself. Here the request costs a header scan, a
timer, two metric updates and, when the access log is on, one JSON line.

* **Request id.** An ``X-Request-ID`` from the client is kept when it is sane (1-128
  characters of ``A-Z a-z 0-9 . _ : + / = -``), else a random one is made. It is echoed in
  the response, set in :data:`tokenward.logs.request_id` for every log line written while
  the request runs (and by the background tasks it starts), and in ``scope["state"]``.
* **Metrics** (:mod:`tokenward.metrics`): requests by method, route template and status,
  latency; login and refresh outcomes, read from the status (and, for a refresh answered
  401, from the problem type: ``refresh-reused`` is a theft detection).
* **Access log** (``TOKENWARD_ACCESS_LOG``, off by default): one line per request on the
  ``tokenward.access`` logger: method, route, path (never the query string), status,
  duration, client address (every ``X-Forwarded-For`` line, joined in order, read through
  the trusted proxies), request id. Headers and bodies are never logged. A line costs
  tens of microseconds (the JSON formatter redacts every field), more than the rest of
  this middleware, which is why it is opt-in.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenward.clientinfo import TrustedProxies
from tokenward.logs import request_id
from tokenward.metrics import UNMATCHED, Metrics

__all__ = ["REQUEST_ID_HEADER", "ObservabilityMiddleware"]

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RAW = REQUEST_ID_HEADER.lower().encode()
_SANE_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LOGIN, _REFRESH = "/auth/login", "/auth/refresh"

access_log = logging.getLogger("tokenward.access")


def _outcome(status: int, location: bytes | None, reused: bool) -> str:
    """Login and refresh outcomes from what the response says."""
    if status == 303:  # an HTML form post: the error, if any, is in the redirect
        if location is None or b"error=" not in location:
            return "ok"
        if b"error=invalid-credentials" in location:
            return "failed"
        return "throttled" if b"error=rate-limited" in location else "rejected"
    if status < 300:
        return "ok"
    if status == 401:
        return "reused" if reused else "failed"
    if status == 429:
        return "throttled"
    return "unavailable" if status >= 500 else "rejected"


class ObservabilityMiddleware:
    """See the module docstring.

    Args:
        app: the application.
        metrics: where to count; ``None`` counts nothing.
        log_requests: write the access log line (``TOKENWARD_ACCESS_LOG``).
        proxies: whose ``X-Forwarded-For`` names the client in the access log.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None,
        log_requests: bool = False,
        proxies: TrustedProxies | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self.proxies = proxies or TrustedProxies()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call; only ``http`` scopes are observed."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming: bytes | None = None
        forwarded: list[bytes] = []
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_RAW:
                incoming = value
            elif name == b"x-forwarded-for":
                forwarded.append(value)  # every line: a proxy may append its own
        if incoming is not None and _SANE_ID.fullmatch(incoming):
            rid = incoming.decode("ascii")
        else:
            rid = os.urandom(8).hex()
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        status = 500
        location: bytes | None = None
        reused = False
        watch_body = False
        rid_header = (_REQUEST_ID_RAW, rid.encode("ascii"))

        async def send_observed(message: Message) -> None:
            nonlocal status, location, reused, watch_body
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), rid_header]
                message = {**message, "headers": headers}
                if status == 303:
                    location = next((v for k, v in headers if k == b"location"), None)
                elif status == 401:
                    watch_body = True
            elif watch_body and message["type"] == "http.response.body":
                reused = reused or b"refresh-reused" in message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            try:
                self._record(scope, status, location, reused, forwarded, rid, started)
            finally:
                request_id.reset(token)

    def _record(
        self,
        scope: Scope,
        status: int,
        location: bytes | None,
        reused: bool,
        forwarded: list[bytes],
        rid: str,
        started: float,
    ) -> None:
        seconds = time.perf_counter() - started
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        route_obj: Any = scope.get("route")
        route = getattr(route_obj, "path", None) or UNMATCHED
        if self.metrics is not None:
            self.metrics.observe_request(method, route, status, seconds)
            if method == "POST" and route in (_LOGIN, _REFRESH):
                outcome = _outcome(status, location, reused)
                if route == _LOGIN:
                    self.metrics.login(outcome)
                else:
                    self.metrics.refresh(outcome)
        if self.log_requests and access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            ip = self.proxies.client_ip(
                client[0] if client else None,
                b", ".join(forwarded).decode("latin-1") if forwarded else None,
            )
            # makeRecord + handle, not .info(): the caller's file and line are of no use in
            # an access log, and looking them up costs a stack walk per request. The
            # request id is added by the formatter (tokenward.logs.request_id).
            record = access_log.makeRecord(
                access_log.name,
                logging.INFO,
                __file__,
                0,
                "http.request",
                (),
                None,
                extra={
                    "event": {
                        "method": method,
                        "route": route,
                        "path": scope["path"][:512],
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "ip": ip,
                    }
                },
            )
            access_log.handle(record)
