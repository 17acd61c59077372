"""Cross-site request forgery defences, free of any web framework.

Two checks, both from OWASP's CSRF cheat sheet:

* **Origin**: an unsafe request whose ``Origin`` is not an allowed origin is refused, even
  with a valid token; ``Sec-Fetch-Site: cross-site`` counts as a foreign origin. A missing
  ``Origin`` is allowed (non-browser clients; older browsers on same-origin POSTs).
* **Double submit, bound to the session**: the ``X-CSRF-Token`` header must equal the
  ``csrf_token`` cookie, and the token's hash must be the one stored with the session, so a
  token planted by a sibling sub-domain for another session is useless.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from tokenward.errors import CsrfError

__all__ = ["check_origin", "check_token", "csrf_digest", "new_csrf_token"]


def new_csrf_token() -> str:
    """A fresh anti-CSRF token (256 bits)."""
    return secrets.token_urlsafe(32)


def csrf_digest(token: str) -> str:
    """Hex SHA-256 of a CSRF token, as stored with the session."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_origin(origin: str | None, fetch_site: str | None, allowed: tuple[str, ...]) -> None:
    """Refuse a request that shows it comes from another site.

    Raises:
        CsrfError: ``Origin`` is present and not allowed, or ``Sec-Fetch-Site`` is cross-site.
    """
    if fetch_site is not None and fetch_site.lower() == "cross-site":
        raise CsrfError("cross-site request refused")
    if origin is not None and origin.lower().rstrip("/") not in allowed:
        raise CsrfError("request from a foreign origin refused")


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
