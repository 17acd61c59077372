"""The second-factor endpoints (docs/mfa.md). Each handler: read, call the core, render.

=====================================  =================================================
``POST /auth/login/mfa``               second step of a login: challenge + code -> session
``POST /auth/login/mfa/enroll``        ``TOKENWARD_MFA=required``: a secret for a user
                                       who has no factor yet, during the login
``GET /auth/mfa``                      the user's factors (no secrets), codes left
``POST /auth/mfa/totp/enroll``         a new TOTP secret (recent authentication)
``POST /auth/mfa/totp/confirm``        its first code: active; ten recovery codes, once
``DELETE /auth/mfa/totp``              remove it (and the codes); needs a recent MFA
``POST /auth/mfa/recovery-codes``      ten new codes; needs a recent MFA
``POST /auth/reauthenticate``          password and/or code again: new ``auth_time``
=====================================  =================================================

Registered only when ``TOKENWARD_MFA`` is not ``off`` (``/auth/reauthenticate`` always).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tokenward.authn import AMR_OTP, AMR_PWD, AuthLevel, combined_amr
from tokenward.errors import (
    InvalidCode,
    InvalidCredentials,
    MfaChallengeInvalid,
    NotFound,
    PasskeyInvalid,
    PolicyError,
    TokenwardError,
    WrongCode,
    WrongPassword,
)
from tokenward.events import EventKind
from tokenward.http.auth import (
    RequestAuth,
    apply_pending_cookies,
    authenticate,
    check_request_origin,
    client_of,
)
from tokenward.http.body import read_body
from tokenward.http.mfa_login import (
    PAGE_MFA,
    binding_of,
    clear_challenge_cookie,
    signin_binding,
)
from tokenward.http.problems import is_bearer_transport
from tokenward.http.routes import (
    NO_STORE,
    PAGE_AFTER_LOGIN,
    PAGE_LOGIN,
    AuthRoutes,
    json_response,
    rfc3339,
    signed_in_user,
    user_still_enabled,
)
from tokenward.http.schemas import MfaCode, MfaEnrollChallenge, MfaLogin, ReauthRequest
from tokenward.mfa import FACTOR_PASSKEY, FACTOR_RECOVERY, Enrolment, Redeemed, check_step_up
from tokenward.runtime import Tokenward
from tokenward.sessions import EndReason, Issued, UserRef

__all__ = ["MfaRoutes", "mfa_routes"]


def _enrolment_body(enrolment: Enrolment) -> dict[str, str]:
    return {"secret": enrolment.secret, "otpauth_uri": enrolment.uri, "qr_svg": enrolment.qr_svg}


class MfaRoutes:
    """The second-factor handlers of one :class:`~tokenward.runtime.Tokenward`."""

    def __init__(self, tw: Tokenward, auth: AuthRoutes) -> None:
        self.tw = tw
        self.auth = auth

    def _recent(self, auth: RequestAuth, *, mfa: bool = False) -> None:
        check_step_up(
            auth.principal.claims,
            mfa=mfa,
            max_age=self.tw.settings.reauth_max_age,
            now=self.tw.clock.now(),
        )

    async def login_mfa(self, request: Request) -> Response:
        """``POST /auth/login/mfa``: 200 with the session, as ``POST /auth/login``.

        An HTML form post (the code page) is answered 303 like a form login: to
        ``/account`` with the cookies, or back to the code page (``?error=<slug>``, the
        challenge in the fragment) after a wrong code, or to ``/login?error=<slug>`` when the
        challenge is gone.
        """
        body = await read_body(request, allow_form=True)
        if not body.form:
            return await self._login_mfa(request, body.parse(MfaLogin))
        challenge = ""
        try:
            req = body.parse(MfaLogin)
            challenge = req.challenge
            response = await self._login_mfa(request, req)
        except TokenwardError as exc:
            if isinstance(exc, MfaChallengeInvalid) or not challenge:
                page = f"{PAGE_LOGIN}?error={quote(exc.slug)}"
            else:
                page = f"{PAGE_MFA}?error={quote(exc.slug)}#challenge={quote(challenge)}"
            return RedirectResponse(page, status_code=303, headers=NO_STORE)
        redirect = RedirectResponse(PAGE_AFTER_LOGIN, status_code=303, headers=NO_STORE)
        for value in response.headers.getlist("set-cookie"):
            redirect.headers.append("set-cookie", value)
        return redirect

    async def open_session(
        self,
        request: Request,
        *,
        uid: str,
        email: str,
        user_created_at: int,
        email_verified: bool,
        epoch: int,
        level: AuthLevel,
        bearer: bool,
        now: int,
    ) -> Issued:
        """Open the session of a login whose last step just passed (a second factor, or a
        passkey): what ``POST /auth/login`` does after the password, with ``level``.
        ``email_verified`` is as the login found the user (the session renews the marker
        refreshes read)."""
        ip, agent = client_of(self.tw, request)
        issued = await self.tw.sessions.open(
            UserRef(uid, email, user_created_at, email_verified),
            ip=ip,
            user_agent=agent,
            now=now,
            level=level,
        )
        if issued.evicted:
            self.auth._ended(request, uid, list(issued.evicted), EndReason.EVICTED, now)
        if not await user_still_enabled(self.tw, issued, epoch=epoch, now=now):
            self.tw.events.login_failed(email, client=(ip, agent), now=now)
            raise InvalidCredentials("invalid email or password")
        if not bearer:
            await self.auth._end_replaced(request, now)
        self.tw.events.login_succeeded(uid, issued.sid, client=(ip, agent), now=now)
        return issued

    def session_response(
        self, issued: Issued, *, bearer: bool, extra: dict[str, Any] | None = None
    ) -> Response:
        """What a login answers: the session body (tokens in bearer mode, cookies else)."""
        out: dict[str, Any] = self.auth._session_body(issued, bearer=bearer)
        out.update(extra or {})
        response = json_response(out)
        if bearer:
            return response
        assert issued.csrf_token is not None  # noqa: S101 - open() always makes one
        return self.auth._with_cookies(response, issued, issued.csrf_token)

    async def _redeem(self, request: Request, req: MfaLogin, *, bearer: bool, now: int) -> Redeemed:
        ip, agent = client_of(self.tw, request)
        binding = binding_of(self.tw, request, bearer=bearer)
        try:
            if req.credential is not None:
                return await self.tw.passkeys.redeem_mfa(
                    self.tw.mfa, req.challenge, req.credential, binding=binding, now=now
                )
            if req.code is None:
                raise PolicyError("required", "field 'code' is required (or 'credential')")
            return await self.tw.mfa.redeem(
                req.challenge, req.code, binding=binding, ip=ip, now=now
            )
        except (InvalidCode, PasskeyInvalid) as exc:
            # The password was right: the owner should know someone may have it.
            if exc.uid is not None:
                clone = isinstance(exc, PasskeyInvalid) and exc.clone
                kind = EventKind.PASSKEY_CLONE_SUSPECTED if clone else EventKind.MFA_FAILED
                self.tw.events.mfa(kind, exc.uid, None, client=(ip, agent), now=now)
            raise

    async def _login_mfa(self, request: Request, req: MfaLogin) -> Response:
        bearer = is_bearer_transport(request)
        if not bearer:
            check_request_origin(self.tw, request)
        now = self.tw.clock.now()
        client = client_of(self.tw, request)
        done = await self._redeem(request, req, bearer=bearer, now=now)
        issued = await self.open_session(
            request,
            uid=done.uid,
            email=done.email,
            user_created_at=done.user_created_at,
            email_verified=done.email_verified,
            epoch=done.epoch,
            level=done.level,
            bearer=bearer,
            now=now,
        )
        events = self.tw.events
        if done.method == FACTOR_RECOVERY:
            detail = {"left": done.recovery_left}
            kind = EventKind.RECOVERY_CODE_USED
            events.mfa(kind, done.uid, issued.sid, client=client, now=now, detail=detail)
        if done.method == FACTOR_PASSKEY:
            events.mfa(EventKind.PASSKEY_USED, done.uid, issued.sid, client=client, now=now)
        if done.recovery_codes:
            events.mfa(EventKind.MFA_ENABLED, done.uid, issued.sid, client=client, now=now)
        extra: dict[str, Any] = {"recovery_codes_left": done.recovery_left}
        if done.recovery_codes:
            extra["recovery_codes"] = list(done.recovery_codes)
        response = self.session_response(issued, bearer=bearer, extra=extra)
        return response if bearer else clear_challenge_cookie(self.tw, response)

    async def login_mfa_enroll(self, request: Request) -> Response:
        """``POST /auth/login/mfa/enroll``: the TOTP secret of an enrolment challenge."""
        body = await read_body(request)
        bearer = is_bearer_transport(request)
        if not bearer:
            check_request_origin(self.tw, request)
        challenge = body.parse(MfaEnrollChallenge).challenge
        enrolment = await self.tw.mfa.enroll_on_challenge(
            challenge, binding=binding_of(self.tw, request, bearer=bearer), now=self.tw.clock.now()
        )
        return json_response(_enrolment_body(enrolment))

    async def status(self, request: Request) -> Response:
        """``GET /auth/mfa``: the policy, the factors (never a secret), codes left."""
        auth = await authenticate(self.tw, request)
        found = await self.tw.mfa.status(auth.principal.uid)
        factors = found["factors"]
        assert isinstance(factors, list)  # noqa: S101 - Mfa.status's shape
        body = {
            **found,
            "factors": [
                {
                    **row,
                    "created_at": rfc3339(row["created_at"]),
                    "last_used_at": None
                    if row["last_used_at"] is None
                    else rfc3339(row["last_used_at"]),
                }
                for row in factors
            ],
        }
        return apply_pending_cookies(request, json_response(body))

    async def totp_enroll(self, request: Request) -> Response:
        """``POST /auth/mfa/totp/enroll``: a pending TOTP secret; 201."""
        auth = await authenticate(self.tw, request)
        await read_body(request, allow_empty=True)
        self._recent(auth)
        user = await signed_in_user(self.tw, auth.principal)
        enrolment = await self.tw.mfa.start_enrolment(user.id, user.email, now=self.tw.clock.now())
        return apply_pending_cookies(request, json_response(_enrolment_body(enrolment), 201))

    async def totp_confirm(self, request: Request) -> Response:
        """``POST /auth/mfa/totp/confirm {code}``: active; the ten recovery codes, once."""
        auth = await authenticate(self.tw, request)
        code = (await read_body(request)).parse(MfaCode).code
        self._recent(auth)
        user = await signed_in_user(self.tw, auth.principal)
        now = self.tw.clock.now()
        client = client_of(self.tw, request)
        codes = await self.tw.mfa.confirm_enrolment(
            user.id, user.email, code, ip=client[0], now=now
        )
        p = auth.principal
        self.tw.events.mfa(EventKind.MFA_ENABLED, p.uid, p.sid, client=client, now=now)
        return apply_pending_cookies(request, json_response({"recovery_codes": codes}))

    async def totp_remove(self, request: Request) -> Response:
        """``DELETE /auth/mfa/totp``: remove the app and the recovery codes; 204."""
        auth = await authenticate(self.tw, request)
        self._recent(auth, mfa=True)
        now = self.tw.clock.now()
        p = auth.principal
        if not await self.tw.mfa.remove_totp(p.uid):
            raise NotFound("no authenticator app is enrolled")
        client = client_of(self.tw, request)
        self.tw.events.mfa(EventKind.MFA_REMOVED, p.uid, p.sid, client=client, now=now)
        return apply_pending_cookies(request, Response(status_code=204, headers=NO_STORE))

    async def recovery_codes(self, request: Request) -> Response:
        """``POST /auth/mfa/recovery-codes``: ten new codes; the old ones stop working."""
        auth = await authenticate(self.tw, request)
        await read_body(request, allow_empty=True)
        self._recent(auth, mfa=True)
        now = self.tw.clock.now()
        p = auth.principal
        codes = await self.tw.mfa.regenerate_recovery(p.uid, now=now)
        client = client_of(self.tw, request)
        kind = EventKind.RECOVERY_CODES_REGENERATED
        self.tw.events.mfa(kind, p.uid, p.sid, client=client, now=now)
        return apply_pending_cookies(request, json_response({"recovery_codes": codes}))

    async def reauthenticate(self, request: Request) -> Response:
        """``POST /auth/reauthenticate {password?, code?}``: the session's ``auth_time``
        becomes now and the methods given join its ``amr`` (``mfa`` once a password and a
        code are in); it is re-keyed (204 with new cookies; bearer: 200 with the new
        tokens)."""
        auth = await self.auth._current(request)
        req = (await read_body(request)).parse(ReauthRequest)
        if not req.password and not req.code and req.credential is None:
            raise PolicyError("required", "give the password, a code, both, or a passkey")
        now = self.tw.clock.now()
        p = auth.principal
        user = await signed_in_user(self.tw, p)
        client = client_of(self.tw, request)
        methods: list[str] = []
        used = ""
        if req.password:
            async with self.tw.throttle.login(user.email, client[0], now=now) as ticket:
                try:
                    await self.tw.users.authenticate(user.email, req.password, now=now)
                except InvalidCredentials:
                    # 403, not 401: the session is fine, only the password was wrong.
                    raise WrongPassword("the password is wrong") from None
                await ticket.succeeded(now=now)
            methods.append(AMR_PWD)
        if req.code:
            if self.tw.mfa.policy == "off":
                raise NotFound("second factors are off (TOKENWARD_MFA=off)")
            used = await self.tw.mfa.verify(p.uid, user.email, req.code, ip=client[0], now=now)
            methods.append(AMR_OTP)
        if req.credential is not None:
            methods += await self._reauth_passkey(request, p.uid, req.handle, req.credential)
        # A step-up adds to what the session proved at login: a password session that
        # gives a code now is a multi-factor session from now on.
        earlier = await self.tw.sessions.level(p.uid, p.sid, p.state)
        level = AuthLevel(combined_amr((*earlier.amr, *methods)), now, used or earlier.factor)
        issued = await self.tw.sessions.step_up(p.uid, p.sid, level, now=now)
        if req.code and used == FACTOR_RECOVERY:
            left = {"left": await self.tw.mfa.factors.recovery_left(p.uid)}
            kind = EventKind.RECOVERY_CODE_USED
            self.tw.events.mfa(kind, p.uid, p.sid, client=client, now=now, detail=left)
        detail = {"amr": " ".join(level.amr)}
        kind = EventKind.REAUTHENTICATED
        self.tw.events.mfa(kind, p.uid, p.sid, client=client, now=now, detail=detail)
        return self.auth._rekeyed(auth, issued)

    async def _reauth_passkey(
        self, request: Request, uid: str, handle: str | None, credential: dict[str, Any]
    ) -> tuple[str, ...]:
        """A passkey of ``uid`` again (options from ``POST /auth/login/passkey/options``);
        the ``amr`` it proves. A refusal is 403 ``invalid-code``, as a wrong code is: the
        session is fine."""
        if self.tw.mfa.policy == "off":
            raise NotFound("second factors are off (TOKENWARD_MFA=off)")
        if not handle:
            raise PolicyError("required", "field 'handle' is required with 'credential'")
        now = self.tw.clock.now()
        try:
            done = await self.tw.passkeys.signin(
                handle, credential, binding=signin_binding(self.tw, request), now=now
            )
        except PasskeyInvalid as exc:
            if exc.clone and exc.uid is not None:
                kind = EventKind.PASSKEY_CLONE_SUSPECTED
                self.tw.events.mfa(kind, exc.uid, None, client=client_of(self.tw, request), now=now)
            raise WrongCode(str(exc)) from None
        if done.uid != uid:
            raise WrongCode("this passkey belongs to another account")
        return done.level.amr


def mfa_routes(tw: Tokenward, auth: AuthRoutes) -> list[Route]:
    """The routes of :class:`MfaRoutes` for ``tw`` (none but re-authentication when off)."""
    handlers = MfaRoutes(tw, auth)
    routes = [Route("/auth/reauthenticate", handlers.reauthenticate, methods=["POST"])]
    if tw.settings.mfa == "off":
        return routes
    from tokenward.http.passkey_routes import passkey_routes  # builds on MfaRoutes

    return [
        *routes,
        *passkey_routes(tw, handlers),
        Route("/auth/login/mfa", handlers.login_mfa, methods=["POST"]),
        Route("/auth/login/mfa/enroll", handlers.login_mfa_enroll, methods=["POST"]),
        Route("/auth/mfa", handlers.status, methods=["GET"]),
        Route("/auth/mfa/totp/enroll", handlers.totp_enroll, methods=["POST"]),
        Route("/auth/mfa/totp/confirm", handlers.totp_confirm, methods=["POST"]),
        Route("/auth/mfa/totp", handlers.totp_remove, methods=["DELETE"]),
        Route("/auth/mfa/recovery-codes", handlers.recovery_codes, methods=["POST"]),
    ]
