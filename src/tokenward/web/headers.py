"""Security headers on every response: a strict CSP, no framing, no sniffing, no
cross-origin embedding, HSTS.

The pages Tokenward serves load only their own scripts and styles (no inline code, no CDN),
so the policy can be strict: ``script-src 'self'`` and ``style-src 'self'`` with no
``'unsafe-inline'``, nothing may frame a page (``frame-ancestors 'none'``, the modern
``X-Frame-Options: DENY``), and forms may only post back to this origin. JSON responses get
the same headers: they cost nothing there and make a response rendered as a document inert.

A pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: it only appends
pre-encoded header pairs to ``http.response.start``, about a microsecond a response.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "HSTS", "SecurityHeaders", "security_headers"]

#: Same-origin scripts, styles, images and fetches only; nothing else (fonts, frames,
#: plugins, workers) is needed by the pages, so ``default-src 'none'`` refuses it.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)

#: Two years, as hstspreload.org recommends; sent only when cookies are ``Secure``
#: (``TOKENWARD_COOKIE_SECURE=true``), i.e. when the deployment is served over HTTPS.
HSTS = "max-age=63072000; includeSubDomains"


def security_headers(*, hsts: bool) -> list[tuple[bytes, bytes]]:
    """The header pairs added to every response.

    Args:
        hsts: include ``Strict-Transport-Security``.
    """
    headers = [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        # No Referer leaves the origin. Not "no-referrer": with it, browsers send
        # "Origin: null" on the pages' own form posts, which the Origin check must refuse.
        ("referrer-policy", "same-origin"),
        # A page opened from another site cannot reach back into ours (window.opener).
        ("cross-origin-opener-policy", "same-origin"),
        # Another origin cannot load our responses as a script, image or style (no-cors):
        # the API's JSON never lands in a cross-origin process to be read by a Spectre
        # attack. CORS fetches (a verifier reading the JWKS) and navigations are unaffected.
        ("cross-origin-resource-policy", "same-origin"),
        ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=()"),
    ]
    if hsts:
        headers.append(("strict-transport-security", HSTS))
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


class SecurityHeaders:
    """ASGI middleware adding :func:`security_headers` to every HTTP response.

    A header the application already set (say a route's own ``Content-Security-Policy``)
    is left as it is.

    Args:
        app: the wrapped ASGI application.
        hsts: send ``Strict-Transport-Security`` (when cookies are ``Secure``).
    """

    __slots__ = ("app", "headers", "names")

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = security_headers(hsts=hsts)
        self.names = frozenset(name for name, _ in self.headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the wrapped app, adding the headers to its response start message."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _WithHeaders(send, self.headers, self.names))


class _WithHeaders:
    """The ``send`` of one response: adds the headers to its start message."""

    __slots__ = ("headers", "names", "send")

    def __init__(
        self, send: Send, headers: list[tuple[bytes, bytes]], names: frozenset[bytes]
    ) -> None:
        self.send = send
        self.headers = headers
        self.names = names

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            raw = list(message.get("headers", ()))
            names = self.names
            # Usually none of ours is set by the app: one scan, then a plain extend.
            if any(name.lower() in names for name, _ in raw):
                present = {name.lower() for name, _ in raw}
                raw.extend(pair for pair in self.headers if pair[0] not in present)
            else:
                raw.extend(self.headers)
            message = {**message, "headers": raw}
        await self.send(message)
