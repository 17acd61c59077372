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

import binascii
import logging
import os
import re
from collections.abc import Iterable
from time import perf_counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenward.clientinfo import TrustedProxies
from tokenward.logs import request_id
from tokenward.metrics import UNMATCHED, Metrics

__all__ = ["REQUEST_ID_HEADER", "ObservabilityMiddleware"]

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RAW = REQUEST_ID_HEADER.lower().encode()
_SANE_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}").fullmatch
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LOGIN, _REFRESH = "/auth/login", "/auth/refresh"
_COUNTED = frozenset((_LOGIN, _REFRESH))

access_log = logging.getLogger("tokenward.access")


class _RequestIds:
    """Random request ids, 16 hex digits each, cut from one ``os.urandom`` call per 256.

    A system call per request cost more than the rest of the id handling; the ids are as
    random (a child process forgets the parent's unused ones, see ``register_at_fork``).
    """

    __slots__ = ("next", "pool")

    BATCH = 256

    def __init__(self) -> None:
        self.pool = b""
        self.next = 0

    def forget(self) -> None:
        self.pool, self.next = b"", 0

    def new(self) -> bytes:
        i = self.next
        if i >= len(self.pool):
            self.pool, i = binascii.hexlify(os.urandom(8 * self.BATCH)), 0
        self.next = i + 16
        return self.pool[i : i + 16]


_ids = _RequestIds()
os.register_at_fork(after_in_child=_ids.forget)


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
        headers: added to every response unless the application set a header of that name
            (the :func:`~tokenward.web.headers.security_headers`: one layer fewer than
            :class:`~tokenward.web.headers.SecurityHeaders` around this middleware).
    """

    __slots__ = ("app", "headers", "log_requests", "metrics", "names", "proxies")

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None,
        log_requests: bool = False,
        proxies: TrustedProxies | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self.proxies = proxies or TrustedProxies()
        self.headers = tuple(headers)
        self.names = frozenset(name for name, _ in self.headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call; only ``http`` scopes are observed."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        incoming: bytes | None = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_RAW:
                incoming = value  # the last one, should there be several
        rid_raw = incoming if incoming is not None and _SANE_ID(incoming) else _ids.new()
        rid = rid_raw.decode("ascii")
        state = scope.get("state")
        if state is None:
            scope["state"] = {"request_id": rid}
        else:
            state["request_id"] = rid
        token = request_id.set(rid)
        observed = _Observed(send, self, (_REQUEST_ID_RAW, rid_raw))
        try:
            await self.app(scope, receive, observed)
        finally:
            try:
                self._record(scope, observed, rid, started)
            finally:
                request_id.reset(token)

    def _record(self, scope: Scope, observed: _Observed, rid: str, started: float) -> None:
        seconds = perf_counter() - started
        method: str = scope["method"]
        if method not in _METHODS:
            method = "OTHER"
        route_obj: Any = scope.get("route")
        route = getattr(route_obj, "path", None) or UNMATCHED
        status = observed.status
        metrics = self.metrics
        if metrics is not None:
            metrics.observe_request(method, route, status, seconds)
            if method == "POST" and route in _COUNTED:
                outcome = _outcome(status, observed.location, observed.reused)
                if route == _LOGIN:
                    metrics.login(outcome)
                else:
                    metrics.refresh(outcome)
        if self.log_requests and access_log.isEnabledFor(logging.INFO):
            self._log(scope, method, route, status, seconds)

    def _log(self, scope: Scope, method: str, route: str, status: int, seconds: float) -> None:
        # Every X-Forwarded-For line, joined in order: a proxy may append its own.
        forwarded = [value for name, value in scope["headers"] if name == b"x-forwarded-for"]
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


class _Observed:
    """The ``send`` the application gets: adds the headers and the request id to the
    response start and notes what the metrics need (status, a redirect's location, a
    reused refresh).

    A callable object rather than a closure over ``nonlocal`` variables: the state is read
    back by :meth:`ObservabilityMiddleware._record` as plain attributes.
    """

    __slots__ = ("location", "middleware", "reused", "rid_header", "send", "status", "watch_body")

    def __init__(
        self, send: Send, middleware: ObservabilityMiddleware, rid_header: tuple[bytes, bytes]
    ) -> None:
        self.send = send
        self.middleware = middleware
        self.rid_header = rid_header
        self.status = 500
        self.location: bytes | None = None
        self.reused = False
        self.watch_body = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            status: int = message["status"]
            self.status = status
            headers = list(message.get("headers", ()))
            ours = self.middleware.headers
            if ours:
                names = self.middleware.names
                # Usually the app sets none of ours: one scan, then a plain extend.
                if any(name.lower() in names for name, _ in headers):
                    present = {name.lower() for name, _ in headers}
                    headers.extend(pair for pair in ours if pair[0] not in present)
                else:
                    headers.extend(ours)
            headers.append(self.rid_header)
            message = {**message, "headers": headers}
            if status == 303:
                self.location = next((v for k, v in headers if k == b"location"), None)
            elif status == 401:
                self.watch_body = True
        elif self.watch_body and message["type"] == "http.response.body":
            self.reused = self.reused or b"refresh-reused" in message.get("body", b"")
        await self.send(message)
