"""The browser experience: Tokenward's own pages, its JavaScript client, security headers.

* :func:`page_routes` -- ``/``, ``/login``, ``/login/mfa`` (the second step of a sign-in),
  ``/register``, ``/account``,
  ``/account/sessions``, the pages of the mailed links (``/forgot-password``,
  ``/reset-password``, ``/verify-email``, ``/confirm-email``), their plain form posts, and
  the static files under ``/static`` (``/static/tokenward.js`` is the documented client,
  see ``docs/browser.md``).
* :func:`not_found_page` -- the HTML 404 a browser gets for an unknown address.
* :func:`alarm_cookie` -- the cookie that lets the sign-in page show the theft alarm.
* :class:`SecurityHeaders` -- ASGI middleware: CSP, ``frame-ancestors 'none'``,
  ``nosniff``, ``Referrer-Policy``, and HSTS when cookies are ``Secure``.
"""

from tokenward.web.headers import CONTENT_SECURITY_POLICY, SecurityHeaders
from tokenward.web.pages import alarm_cookie, not_found_page, page_routes, wants_html

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "SecurityHeaders",
    "alarm_cookie",
    "not_found_page",
    "page_routes",
    "wants_html",
]
