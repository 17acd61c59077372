"""Cross-site request forgery defences, free of any web framework.

Two checks, both from OWASP's CSRF cheat sheet:

* **Origin**: an unsafe request whose ``Origin`` is not an allowed origin is refused, even
  with a valid token; ``Sec-Fetch-Site: cross-site`` counts as a foreign origin. Without
  ``Origin`` (older browsers, some privacy extensions and proxies strip it) the origin of
  the ``Referer`` is checked the same way, so a request that still names a foreign page is
  refused; one that is malformed or not http(s) is refused too. Without either header the
  request passes this check (non-browser clients send neither) and meets the next one.
* **Double submit, bound to the session**: the ``X-CSRF-Token`` header must equal the
  ``csrf_token`` cookie, and the token's hash must be the one stored with the session, so a
  token planted by a sibling sub-domain for another session is useless.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from tokenward.errors import CsrfError
from tokenward.refresh import stored_digest

__all__ = ["check_origin", "check_token", "csrf_digest", "new_csrf_token", "referer_origin"]


def new_csrf_token() -> str:
    """A fresh anti-CSRF token (256 bits)."""
    return secrets.token_urlsafe(32)


def csrf_digest(token: str) -> str:
    """A CSRF token as stored with the session (:func:`tokenward.refresh.stored_digest`)."""
    return stored_digest(token.encode())


def check_origin(
    origin: str | None,
    fetch_site: str | None,
    allowed: tuple[str, ...],
    referer: str | None = None,
) -> None:
    """Refuse a request that shows it comes from another site.

    Args:
        origin: the ``Origin`` header.
        fetch_site: the ``Sec-Fetch-Site`` header.
        allowed: the allowed origins, serialised as browsers send ``Origin``.
        referer: the ``Referer`` header, consulted only when ``Origin`` is absent.

    Raises:
        CsrfError: ``Origin`` is present and not allowed; or, ``Origin`` being absent,
            ``Referer`` is present and its origin is not allowed; or ``Sec-Fetch-Site`` is
            cross-site.
    """
    if fetch_site is not None and fetch_site.lower() == "cross-site":
        raise CsrfError("cross-site request refused")
    if origin is not None:
        if origin.lower().rstrip("/") not in allowed:
            raise CsrfError("request from a foreign origin refused")
    elif referer is not None and referer_origin(referer) not in allowed:
        raise CsrfError("request from a foreign page (Referer) refused")


def referer_origin(referer: str) -> str | None:
    """The origin of a ``Referer`` URL as a browser would send it in ``Origin``.

    ``scheme://host[:port]``, lower case, without a default port, IPv6 in brackets;
    ``None`` when it is not an absolute http(s) URL (such a ``Referer`` is refused).
    """
    try:
        parts = urlsplit(referer.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def check_token(header: str | None, cookie: str | None, session_digest: str) -> None:
    """Check the double-submitted token against the cookie and the session, in constant time.

    Raises:
        CsrfError: the header is missing, differs from the cookie, or is not this session's.
    """
    if not header or not cookie:
        raise CsrfError("missing X-CSRF-Token header or csrf_token cookie")
    same = hmac.compare_digest(header.encode(), cookie.encode())
    ours = hmac.compare_digest(csrf_digest(header), session_digest)
    if not (same and ours):
        raise CsrfError("CSRF token does not match this session")
