"""The first step of a two-step login, and the recent-authentication rule, for the handlers.

Kept apart from :mod:`tokenward.http.mfa_routes` (which builds on
:class:`~tokenward.http.routes.AuthRoutes`) so that the password login and the password
change can call it without an import cycle.

After a right password, :func:`begin_mfa_login` answers a user who must give a second
factor with **200** and a body with no session in it::

    {"mfa_required": true, "challenge": "...", "factors": ["totp", "recovery"],
     "expires_in": 300, "enrollment_required": false}

In cookie mode it also sets the challenge cookie (``__Secure-mfa_challenge``, HttpOnly,
``SameSite=Strict``, ``Path=/auth``) whose digest the challenge is bound to, beside the
client's user agent and address prefix. An HTML form post is sent to ``/login/mfa`` with the
challenge in the URL fragment (fragments never reach a server or a ``Referer``) and, for the
page without JavaScript, in a cookie only that page receives
(:func:`~tokenward.web.pages.mfa_page_cookie`).
"""

from __future__ import annotations

import secrets

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tokenward.cookies import CookieSpec
from tokenward.http.auth import client_of
from tokenward.mfa import challenge_binding, check_step_up
from tokenward.runtime import Tokenward
from tokenward.sessions import Principal
from tokenward.users import User
from tokenward.web.pages import MFA_PAGE, mfa_page_cookie

__all__ = [
    "PAGE_MFA",
    "begin_mfa_login",
    "binding_of",
    "challenge_cookie_name",
    "clear_challenge_cookie",
    "require_recent_for_credentials",
    "signin_binding",
]

#: Where a form login that needs a code sends the browser (the JSON API does not need it).
PAGE_MFA = MFA_PAGE
_NO_STORE = {"Cache-Control": "no-store"}


def challenge_cookie_name(tw: Tokenward) -> str:
    """``__Secure-mfa_challenge`` (``mfa_challenge`` without ``TOKENWARD_COOKIE_SECURE``)."""
    return "__Secure-mfa_challenge" if tw.cookies.secure else "mfa_challenge"


def _challenge_cookie(tw: Tokenward, value: str, max_age: int) -> CookieSpec:
    return CookieSpec(
        challenge_cookie_name(tw), value, max_age, "/auth", True, tw.cookies.secure, "Strict"
    )


def signin_binding(tw: Tokenward, request: Request) -> str:
    """The binding of a passkey sign-in: the client's user agent and address prefix (the
    passkey's signature is the proof; this only keeps a handle to the client it went to)."""
    ip, agent = client_of(tw, request)
    return challenge_binding(ip, agent, None)


def binding_of(tw: Tokenward, request: Request, *, bearer: bool) -> str:
    """The binding of the client of ``request`` (its cookie only in cookie mode)."""
    ip, agent = client_of(tw, request)
    cookie = None if bearer else request.cookies.get(challenge_cookie_name(tw))
    return challenge_binding(ip, agent, cookie)


async def begin_mfa_login(
    tw: Tokenward, request: Request, user: User, *, bearer: bool, form: bool, now: int
) -> Response | None:
    """After a right password: the challenge response, or ``None`` to open the session."""
    if tw.mfa.policy == "off":
        return None
    ip, agent = client_of(tw, request)
    cookie = None if bearer else secrets.token_urlsafe(24)
    challenge = await tw.mfa.begin_login(
        user.id,
        user.email,
        user_created_at=user.created_at,
        epoch=user.credential_epoch,
        binding=challenge_binding(ip, agent, cookie),
        now=now,
        email_verified=user.email_verified,
        has_factor=user.has_second_factor,
    )
    if challenge is None:
        return None
    response: Response
    if form:
        fragment = f"challenge={challenge.token}"
        if challenge.enrollment_required:
            fragment += "&enroll=1"
        if "passkey" in challenge.factors:
            fragment += "&factors=" + ",".join(challenge.factors)
        response = RedirectResponse(f"{PAGE_MFA}#{fragment}", status_code=303, headers=_NO_STORE)
        if not bearer:
            # The page without JavaScript cannot read the fragment: see mfa_page_cookie.
            page_cookie = mfa_page_cookie(
                secure=tw.cookies.secure,
                challenge=challenge.token,
                max_age=challenge.expires_in,
                enroll=challenge.enrollment_required,
            )
            response.headers.append("set-cookie", page_cookie.header())
    else:
        body = {
            "mfa_required": True,
            "challenge": challenge.token,
            "factors": list(challenge.factors),
            "expires_in": challenge.expires_in,
            "enrollment_required": challenge.enrollment_required,
        }
        response = Response(orjson.dumps(body), media_type="application/json", headers=_NO_STORE)
    if cookie is not None:
        spec = _challenge_cookie(tw, cookie, challenge.expires_in)
        response.headers.append("set-cookie", spec.header())
    return response


def clear_challenge_cookie(tw: Tokenward, response: Response) -> Response:
    """Drop the challenge cookie and the code page's (the login is done)."""
    response.headers.append("set-cookie", _challenge_cookie(tw, "", 0).header())
    response.headers.append("set-cookie", mfa_page_cookie(secure=tw.cookies.secure).header())
    return response


async def require_recent_for_credentials(tw: Tokenward, principal: Principal) -> None:
    """A password change by a user with a second factor needs a session that used it,
    recently (``TOKENWARD_REAUTH_MAX_AGE``): the current password alone, from a stolen
    session, must not be enough to take the account over.

    Raises:
        MfaRequired, ReauthenticationRequired: 403.
    """
    if tw.mfa.policy == "off" or not await tw.mfa.has_factor(principal.uid):
        return
    check_step_up(
        principal.claims, mfa=True, max_age=tw.settings.reauth_max_age, now=tw.clock.now()
    )
