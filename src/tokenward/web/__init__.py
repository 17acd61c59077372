"""The browser experience: Tokenward's own pages, its JavaScript client, security headers.

* :func:`page_routes` -- ``/``, ``/login``, ``/register``, ``/account``,
  ``/account/sessions`` and the static files under ``/static`` (``/static/tokenward.js`` is
  the documented client, see ``docs/browser.md``).
* :class:`SecurityHeaders` -- ASGI middleware: CSP, ``frame-ancestors 'none'``,
  ``nosniff``, ``Referrer-Policy``, and HSTS when cookies are ``Secure``.
"""

from tokenward.web.headers import CONTENT_SECURITY_POLICY, SecurityHeaders
from tokenward.web.pages import page_routes

__all__ = ["CONTENT_SECURITY_POLICY", "SecurityHeaders", "page_routes"]
