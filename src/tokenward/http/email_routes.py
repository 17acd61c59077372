"""The e-mail endpoints: verification, forgotten password, e-mail change.

Each handler reads the request, calls :class:`~tokenward.email_flows.EmailFlows` and
renders. The ones that take no session (the e-mailed link is the proof, or nobody is signed
in) make the Origin check of a login for browser requests (cookie transport), so another
site cannot post to them from a visitor's browser; signed-in ones authenticate like every
protected route (CSRF included in cookie mode).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tokenward.http.auth import apply_pending_cookies, authenticate, check_request_origin, client_of
from tokenward.http.body import read_body
from tokenward.http.problems import is_bearer_transport
from tokenward.http.routes import NO_STORE, json_response
from tokenward.http.schemas import (
    EmailChange,
    EmailRequest,
    LinkToken,
    PasswordReset,
    ResendRequest,
)
from tokenward.runtime import Tokenward

__all__ = ["ACCEPTED", "EmailRoutes"]

#: Every 202 of these routes: one body, whatever happened behind it.
ACCEPTED = {"status": "accepted"}


class EmailRoutes:
    """The e-mail handlers of one :class:`~tokenward.runtime.Tokenward`."""

    def __init__(self, tw: Tokenward) -> None:
        self.tw = tw

    def _origin(self, request: Request) -> None:
        if not is_bearer_transport(request) and "authorization" not in request.headers:
            check_request_origin(self.tw, request)

    async def verify(self, request: Request) -> Response:
        """``POST /auth/email/verify {token}``: 200 ``{email, email_verified: true}``."""
        body = await read_body(request)
        self._origin(request)
        token = body.parse(LinkToken).token
        now = self.tw.clock.now()
        user = await self.tw.email_flows.verify(token, client=client_of(self.tw, request), now=now)
        await self.tw.profile_changed(user.id)
        return json_response({"email": user.email, "email_verified": True})

    async def resend(self, request: Request) -> Response:
        """``POST /auth/email/verify/resend``: ``{}`` signed in, or ``{email}``; 202."""
        body = await read_body(request, allow_empty=True)
        email = body.parse(ResendRequest).email
        now = self.tw.clock.now()
        ip = client_of(self.tw, request)[0]
        if email is None:
            auth = await authenticate(self.tw, request)
            await self.tw.email_flows.resend_for_user(auth.principal.uid, ip=ip, now=now)
            return apply_pending_cookies(request, json_response(ACCEPTED, status=202))
        self._origin(request)
        await self.tw.email_flows.resend_for_address(email, ip=ip, now=now)
        return json_response(ACCEPTED, status=202)

    async def forgot(self, request: Request) -> Response:
        """``POST /auth/password/forgot {email}``: 202, the same whether or not an account
        has the address."""
        body = await read_body(request)
        self._origin(request)
        email = body.parse(EmailRequest).email
        now = self.tw.clock.now()
        await self.tw.email_flows.forgot(email, ip=client_of(self.tw, request)[0], now=now)
        return json_response(ACCEPTED, status=202)

    async def reset(self, request: Request) -> Response:
        """``POST /auth/password/reset {token, new_password}``: 204; every session ended."""
        body = await read_body(request)
        self._origin(request)
        reset = body.parse(PasswordReset)
        now = self.tw.clock.now()
        client = client_of(self.tw, request)
        # The ended sessions are in the ``password.reset`` event the flow records.
        user, _ = await self.tw.email_flows.reset(
            reset.token, reset.new_password, client=client, now=now
        )
        await self.tw.profile_changed(user.id)  # a reset verifies the address too
        return Response(status_code=204, headers=NO_STORE)

    async def change(self, request: Request) -> Response:
        """``POST /auth/email/change {new_email, password}``: 202; a link to the new address."""
        auth = await authenticate(self.tw, request)
        body = await read_body(request)
        change = body.parse(EmailChange)
        now = self.tw.clock.now()
        await self.tw.email_flows.request_change(
            auth.principal.uid,
            change.new_email,
            change.password,
            ip=client_of(self.tw, request)[0],
            now=now,
        )
        return apply_pending_cookies(request, json_response(ACCEPTED, status=202))

    async def confirm_change(self, request: Request) -> Response:
        """``POST /auth/email/change/confirm {token}``: 200 ``{email}`` (the new address)."""
        body = await read_body(request)
        self._origin(request)
        token = body.parse(LinkToken).token
        now = self.tw.clock.now()
        user = await self.tw.email_flows.confirm_change(
            token, client=client_of(self.tw, request), now=now
        )
        await self.tw.profile_changed(user.id)
        return json_response({"email": user.email})
