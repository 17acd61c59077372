"""The ``/auth`` endpoints. Each handler: read the request, call the core, render.

Handlers never decide security questions themselves; they pick the transport (cookie or
bearer), call :mod:`tokenward.http.auth` and the core, and render what comes back.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tokenward.errors import (
    AuthError,
    CsrfError,
    EmailNotVerified,
    Forbidden,
    InvalidCredentials,
    NotFound,
    PolicyError,
    RefreshReused,
    SessionEnded,
    TokenExpired,
    TokenInvalid,
    TokenwardError,
    WrongPassword,
)
from tokenward.http.auth import (
    RequestAuth,
    apply_pending_cookies,
    authenticate,
    bearer_token,
    check_cookie_csrf,
    check_request_origin,
    client_of,
    cookie_candidates,
    csrf_cookie,
    csrf_header_matches,
    first_that_works,
    rotate_any,
    rotate_recorded,
)
from tokenward.http.body import read_body
from tokenward.http.mfa_login import begin_mfa_login, require_recent_for_credentials
from tokenward.http.problems import is_bearer_transport, render_error
from tokenward.http.schemas import (
    Credentials,
    LogoutAllRequest,
    PasswordChange,
    RefreshRequest,
    TokenRequest,
)
from tokenward.refresh import RefreshToken
from tokenward.runtime import Tokenward
from tokenward.sessions import EndReason, Issued, Principal, UserRef
from tokenward.users import still_current
from tokenward.web import alarm_cookie

__all__ = ["AuthRoutes", "rfc3339", "signed_in_user"]

NO_STORE = {"Cache-Control": "no-store"}
#: On a cookie-mode logout: the browser drops every cookie of the site, including one a
#: sibling sub-domain tossed in, which a ``Set-Cookie`` of ours cannot reach.
CLEAR_SITE_DATA = {"Clear-Site-Data": '"cookies"'}

#: Where form posts send the browser next (the pages are served by Tokenward itself).
PAGE_AFTER_LOGIN = "/account"
PAGE_LOGIN = "/login"
PAGE_REGISTER = "/register"


def rfc3339(epoch: int) -> str:
    """``2026-11-29T09:00:00Z``."""
    # time.strftime over gmtime: a third of datetime.strftime's cost (1.1 against 2.9 µs),
    # paid for each time in /auth/me and every row of a listing.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response that no cache keeps."""
    return Response(
        orjson.dumps(data),
        status_code=status,
        media_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


class AuthRoutes:
    """The handlers of one :class:`~tokenward.runtime.Tokenward`."""

    def __init__(self, tw: Tokenward) -> None:
        self.tw = tw

    def _client(self, request: Request) -> tuple[str, str]:
        return client_of(self.tw, request)

    def _login_origin_check(self, request: Request) -> None:
        check_request_origin(self.tw, request)

    def _session_body(self, issued: Issued, *, bearer: bool) -> dict[str, Any]:
        user: dict[str, str] = {"id": issued.uid}
        if issued.email is not None:  # a login: the user was read (sessions do not hold it)
            user["email"] = issued.email
        body: dict[str, Any] = {
            "user": user,
            "session": {"id": issued.sid, "expires_at": rfc3339(issued.session_expires_at)},
        }
        if bearer:
            body.update(
                access_token=issued.access_token,
                refresh_token=issued.refresh_token,
                token_type="Bearer",
                expires_in=self.tw.tokens.ttl,
                refresh_expires_in=issued.refresh_expires_in,
            )
        return body

    def _with_cookies(self, response: Response, issued: Issued, csrf: str) -> Response:
        for spec in self.tw.cookies.issue(
            access_token=issued.access_token,
            access_max_age=self.tw.tokens.ttl,
            refresh_token=issued.refresh_token,
            refresh_max_age=issued.refresh_expires_in,
            csrf_token=csrf,
        ):
            response.headers.append("set-cookie", spec.header())
        return response

    def _clear_cookies(self, response: Response, *, alarm: bool = False) -> Response:
        for spec in self.tw.cookies.clear():
            response.headers.append("set-cookie", spec.header())
        if alarm:
            # Ended for refresh reuse: the sign-in page shows its theft alarm only then.
            response.headers.append(
                "set-cookie", alarm_cookie(secure=self.tw.cookies.secure).header()
            )
        return response

    async def register(self, request: Request) -> Response:
        """``POST /auth/register``: 201 ``{id, email, created_at}``."""
        body = await read_body(request, allow_form=True)
        try:
            self._login_origin_check(request)
            credentials = body.parse(Credentials)
            email, password = credentials.email, credentials.password
            now = self.tw.clock.now()
            client = self._client(request)
            async with self.tw.throttle.register(client[0], now=now) as ticket:  # 503: refunded
                try:
                    user = await self.tw.users.register(email, password, now=now)
                except PolicyError:
                    await ticket.refund()  # refused before any hashing: cheap, reveals nothing
                    raise
            self.tw.events.registered(user.id, client=client, now=now)
            self.tw.email_flows.registered(user)
        except TokenwardError as exc:
            if body.form:
                return _form_redirect(PAGE_REGISTER, exc)
            raise
        if body.form:
            return RedirectResponse(f"{PAGE_LOGIN}?registered=1", status_code=303, headers=NO_STORE)
        created = {
            "id": user.id,
            "email": user.email,
            "created_at": rfc3339(user.created_at),
            "email_verified": user.email_verified,
        }
        return json_response(created, status=201)

    async def login(self, request: Request) -> Response:
        """``POST /auth/login``: 200 with the session (and tokens in bearer mode)."""
        body = await read_body(request, allow_form=True)
        bearer = is_bearer_transport(request)
        try:
            if not bearer:
                self._login_origin_check(request)
            credentials = body.parse(Credentials)
            email, password = credentials.email, credentials.password
            now = self.tw.clock.now()
            ip, agent = self._client(request)
            # Throttled before any hashing; unknown and existing accounts alike. A 503 (the
            # database is down) leaving the block refunds the attempt: no password was judged.
            async with self.tw.throttle.login(email, ip, now=now) as ticket:
                try:
                    user = await self.tw.users.authenticate(email, password, now=now)
                except InvalidCredentials:
                    self.tw.events.login_failed(email, client=(ip, agent), now=now)
                    raise
            # The right password clears the throttle's record in the same round trip as the
            # session's write (with a second factor, on its own while the factors are read).
            async with ticket.succeeding(now=now):
                if self.tw.settings.require_verified_email and not user.email_verified:
                    # Only after the password was right: it tells nothing to whoever guesses.
                    raise EmailNotVerified(
                        "verify your e-mail address first", resend="/auth/email/verify/resend"
                    )
                # A user with a second factor gets a challenge, and no session, here.
                second = await begin_mfa_login(
                    self.tw, request, user, bearer=bearer, form=body.form, now=now
                )
                if second is not None:
                    return second
                ref = UserRef(user.id, user.email, user.created_at, user.email_verified)
                issued = await self.tw.sessions.open(ref, ip=ip, user_agent=agent, now=now)
                if issued.evicted:
                    self._ended(request, user.id, list(issued.evicted), EndReason.EVICTED, now)
                if not await user_still_enabled(
                    self.tw, issued, epoch=user.credential_epoch, now=now
                ):
                    # Refused exactly as a disabled account is by ``Users.authenticate``.
                    self.tw.events.login_failed(email, client=(ip, agent), now=now)
                    raise InvalidCredentials("invalid email or password")
                if not bearer:
                    await self._end_replaced(request, now)
                self.tw.events.login_succeeded(user.id, issued.sid, client=(ip, agent), now=now)
        except TokenwardError as exc:
            if body.form:
                return _form_redirect(PAGE_LOGIN, exc)
            raise
        assert issued.csrf_token is not None  # noqa: S101 - open() always makes one
        if body.form:
            return self._with_cookies(
                RedirectResponse(PAGE_AFTER_LOGIN, status_code=303, headers=NO_STORE),
                issued,
                issued.csrf_token,
            )
        response = json_response(self._session_body(issued, bearer=bearer))
        if bearer:
            return response
        return self._with_cookies(response, issued, issued.csrf_token)

    async def refresh(self, request: Request) -> Response:
        """``POST /auth/refresh``: rotate the refresh token, issue a new access token."""
        now = self.tw.clock.now()
        if is_bearer_transport(request):
            # A missing token (no body, ``{}``, null, "") is a 401 like an unknown one; only
            # a body that is there but malformed (wrong type, media type, JSON) is a 4xx.
            body = await read_body(request, allow_empty=True)
            token = body.parse(RefreshRequest).refresh_token
            if not token:
                raise TokenInvalid("no refresh token")
            async with self.tw.throttle.refreshing(self._client(request)[0], now=now) as ticket:
                issued = await rotate_recorded(self.tw, request, ticket, token, None, now)
            return json_response(self._session_body(issued, bearer=True))
        await read_body(request, allow_empty=True)
        names = self.tw.cookies.names
        cookies = cookie_candidates(request, names.refresh)
        if not cookies:
            raise TokenInvalid("no refresh token")
        async with self.tw.throttle.refreshing(self._client(request)[0], now=now) as ticket:
            self._login_origin_check(request)
            csrf = csrf_cookie(self.tw, request)
            header = request.headers.get("x-csrf-token")
            if not csrf or not csrf_header_matches(header, csrf):
                raise CsrfError("missing or mismatched X-CSRF-Token")
            try:
                issued = await rotate_any(self.tw, request, ticket, cookies, csrf, now)
            except AuthError as exc:
                if len(cookies) > 1:  # one was tossed in: clearing ours would log the user out
                    raise
                await ticket.failed()  # counted as refused (429 if that fills the limit)
                return self._clear_cookies(render_error(exc), alarm=isinstance(exc, RefreshReused))
        return self._with_cookies(
            json_response(self._session_body(issued, bearer=False)), issued, csrf
        )

    def _ended(
        self, request: Request, uid: str, sids: list[str], reason: EndReason, now: int
    ) -> None:
        client = self._client(request)
        self.tw.events.sessions_ended(uid, sids, reason.value, client=client, now=now)

    async def _current(self, request: Request) -> RequestAuth:
        return await authenticate(self.tw, request)

    async def logout(self, request: Request) -> Response:
        """``POST /auth/logout``: end the current session; 204, cookies cleared."""
        now = self.tw.clock.now()
        token = bearer_token(request)
        if token is not None:
            # The body is not needed with a bearer token, but it must still be well formed.
            (await read_body(request, allow_empty=True)).parse(RefreshRequest)
            try:
                principal = await self.tw.sessions.authenticate(token, now=now)
                uid, sid = principal.uid, principal.sid
            except SessionEnded:
                # Perhaps a retry of a logout answered 503 that had ended it after all:
                # the token is genuine (verified), and end() below tells a repeat (204)
                # from a session that ended otherwise (401).
                claims = self.tw.tokens.verify(token, now=now)
                uid, sid = claims.sub, claims.sid
            await self._log_out(request, uid, sid, now)
            return Response(status_code=204, headers=NO_STORE)
        body = await read_body(request, allow_empty=True)
        body_token = body.parse(RefreshRequest).refresh_token
        if body_token is not None:
            try:
                uid, sid = await self._owner_of_refresh(request, body_token, now, ended=True)
            except SessionEnded:
                # Gone: only a repeat of a logout is a 204 (end() cannot end anything now)
                parsed = RefreshToken.parse(body_token)
                uid, sid = parsed.uid, parsed.sid
            await self._log_out(request, uid, sid, now)
            return Response(status_code=204, headers=NO_STORE)
        try:
            uid, sid = await self._cookie_session(request, now)
        except RefreshReused as exc:  # theft: the session is over, and so are its cookies
            return self._clear_cookies(render_error(exc), alarm=True)
        await self._log_out(request, uid, sid, now)
        return self._clear_cookies(
            Response(status_code=204, headers={**NO_STORE, **CLEAR_SITE_DATA})
        )

    async def _log_out(self, request: Request, uid: str, sid: str, now: int) -> None:
        """End the session as a logout. Idempotent, so that a client retrying a logout
        answered 503 (whose ending may have been made) gets its 204: a session already
        ended by a logout counts (confirmed as durably as the first ending); one that ended
        otherwise, or never was, is a 401."""
        try:
            await self.tw.sessions.end(uid, sid, EndReason.LOGOUT, now=now)
        except NotFound:
            raise SessionEnded("the session has ended") from None
        self._ended(request, uid, [sid], EndReason.LOGOUT, now)

    async def _owner_of_refresh(
        self, request: Request, token: str, now: int, *, ended: bool = False
    ) -> tuple[str, str]:
        """The session a logout's refresh token belongs to; a replaced token past its grace
        is theft (the session ended as ``refresh-reused``, recorded, 401), not a logout."""
        try:
            return await self.tw.sessions.owner_of_refresh(token, now=now, ended=ended)
        except RefreshReused:
            self.tw.events.refresh_reused(token, client=self._client(request), now=now)
            raise

    async def _end_replaced(self, request: Request, now: int) -> None:
        """A cookie login ends the session whose refresh cookie the browser still holds.

        The login's cookies overwrite that session's, so nothing could use or log out of it
        any more: it is ended as ``replaced``, whoever's it is (holding its refresh cookie is
        proof enough, as for a logout). A cookie that is no live session's token is ignored;
        a replaced one past its grace is theft, recorded as for a refresh. The login goes on
        either way.

        Every same-named refresh cookie is tried, not only the one ``request.cookies`` keeps
        (the last sent): a sibling sub-domain may have tossed in one of its own, and it must
        not shield ours from being ended. Each is judged alone; a tossed value is at worst
        the tosser's own session, ended.
        """
        for cookie in cookie_candidates(request, self.tw.cookies.names.refresh):
            try:
                uid, sid = await self.tw.sessions.end_by_refresh(
                    cookie, EndReason.REPLACED, csrf_token=None, now=now
                )
            except RefreshReused:
                self.tw.events.refresh_reused(cookie, client=self._client(request), now=now)
            except (AuthError, CsrfError):
                pass
            else:
                self._ended(request, uid, [sid], EndReason.REPLACED, now)

    def _rekeyed(self, auth: RequestAuth, issued: Issued) -> Response:
        """The answer of a request that gave its session new credentials: they go to the
        client (new cookies; in bearer mode, 200 with the login body and the new tokens)."""
        if auth.bearer:
            return json_response(self._session_body(issued, bearer=True))
        assert issued.csrf_token is not None  # noqa: S101 - rekey() always makes one
        response = Response(status_code=204, headers=NO_STORE)
        return self._with_cookies(response, issued, issued.csrf_token)

    async def _cookie_session(self, request: Request, now: int) -> tuple[str, str]:
        """The session of a cookie request, by access cookie or, failing that, refresh cookie."""
        names = self.tw.cookies.names
        access = request.cookies.get(names.access)
        uid_sid: tuple[str, str] | None = None
        if access:
            try:
                claims = self.tw.tokens.verify(access, now=now)
                uid_sid = (claims.sub, claims.sid)
            except (TokenExpired, TokenInvalid):
                uid_sid = None
        if uid_sid is None:
            refresh = cookie_candidates(request, names.refresh)
            if not refresh:
                raise TokenInvalid("no session cookie")
            uid_sid = await first_that_works(
                refresh, lambda token: self._owner_of_refresh(request, token, now)
            )
        state = await self.tw.sessions.state(*uid_sid, now=now)
        check_cookie_csrf(self.tw, request, state.csrf_digest)
        return uid_sid

    async def logout_all(self, request: Request) -> Response:
        """``POST /auth/logout-all``: end every session (or every other one)."""
        auth = await self._current(request)
        body = await read_body(request, allow_empty=True)
        keep_current = body.parse(LogoutAllRequest).keep_current
        now = self.tw.clock.now()
        p = auth.principal
        ended = await self.tw.sessions.end_all(
            p.uid, keep=p.sid if keep_current else None, reason=EndReason.LOGOUT_ALL, now=now
        )
        self._ended(request, p.uid, ended, EndReason.LOGOUT_ALL, now)
        if keep_current:
            # Whoever else held this session's tokens is cut off too: new credentials.
            return self._rekeyed(auth, await self.tw.sessions.rekey(p.uid, p.sid, now=now))
        response = Response(status_code=204, headers=NO_STORE)
        if not auth.bearer:
            # The session is over: no cookies a transparent refresh made for it go out.
            response.headers.update(CLEAR_SITE_DATA)
            return self._clear_cookies(response)
        return apply_pending_cookies(request, response)

    async def me(self, request: Request) -> Response:
        """``GET /auth/me``: ``{id, email, created_at}``, read from the user store by id.

        The session record holds no e-mail address, so this is one primary-key read; with
        the database down it is 503 ``unavailable`` (the session itself stays valid).
        """
        auth = await self._current(request)
        user = await signed_in_user(self.tw, auth.principal)
        body = {
            "id": user.id,
            "email": user.email,
            "created_at": rfc3339(user.created_at),
            "email_verified": user.email_verified,
        }
        return apply_pending_cookies(request, json_response(body))

    async def sessions(self, request: Request) -> Response:
        """``GET /auth/sessions``: the user's live sessions, most recently used first."""
        auth = await self._current(request)
        p = auth.principal
        rows = await self.tw.sessions.list(p.uid, current=p.sid, now=self.tw.clock.now())
        body = [
            {
                "id": info.record.sid,
                "created_at": rfc3339(info.record.created_at),
                "last_used_at": rfc3339(info.record.last_used_at),
                "expires_at": rfc3339(info.record.expires_at),
                "ip": info.record.ip,
                "user_agent": info.record.user_agent,
                "current": info.current,
                "amr": list(level.amr),
                "auth_time": rfc3339(level.auth_time),
                "second_factor": level.factor or None,
            }
            for info, level in ((info, info.record.auth_level()) for info in rows)
        ]
        return apply_pending_cookies(request, json_response(body))

    async def ended_sessions(self, request: Request) -> Response:
        """``GET /auth/sessions/ended``: recently ended sessions and why (theft shows here)."""
        auth = await self._current(request)
        rows = await self.tw.session_store.ended(auth.principal.uid)
        body = [{"id": sid, "reason": reason, "ended_at": rfc3339(at)} for sid, reason, at in rows]
        return apply_pending_cookies(request, json_response(body))

    async def end_session(self, request: Request) -> Response:
        """``DELETE /auth/sessions/{id}``: end one of the user's own sessions."""
        auth = await self._current(request)
        sid = request.path_params["sid"]
        p = auth.principal
        now = self.tw.clock.now()
        if not _looks_like_sid(sid):
            raise NotFound("no such session")
        # An ended session is gone: a second DELETE is a 404, as documented (not a repeat)
        await self.tw.sessions.end(p.uid, sid, EndReason.REVOKED, now=now, repeat_ok=False)
        self._ended(request, p.uid, [sid], EndReason.REVOKED, now)
        response = Response(status_code=204, headers=NO_STORE)
        if sid == p.sid and not auth.bearer:
            # The session is over: no cookies a transparent refresh made for it go out.
            return self._clear_cookies(response)
        return apply_pending_cookies(request, response)

    async def change_password(self, request: Request) -> Response:
        """``POST /auth/password``: check the current password, set a new one, end the others."""
        auth = await self._current(request)
        body = await read_body(request)
        change = body.parse(PasswordChange)
        current, new = change.current_password, change.new_password
        if hmac.compare_digest(current.encode(), new.encode()):
            # Said before anything is checked: the caller typed both, so it tells nothing.
            raise PolicyError("unchanged", "the new password must differ from the current one")
        now = self.tw.clock.now()
        p = auth.principal
        await require_recent_for_credentials(self.tw, p)
        user = await signed_in_user(self.tw, p)
        # Guessing the current password from a stolen session meets the login limits.
        async with self.tw.throttle.login(user.email, self._client(request)[0], now=now) as t:
            try:
                await self.tw.users.change_password(p.uid, current, new, now=now)
            except TokenwardError as exc:
                if not isinstance(exc, WrongPassword):
                    await t.refund()  # no wrong guess was made (a 503 included): it does not count
                raise
            await t.succeeded(now=now)
        ended = await self.tw.sessions.end_all(
            p.uid, keep=p.sid, reason=EndReason.PASSWORD_CHANGED, now=now
        )
        self.tw.events.password_changed(
            p.uid, p.sid, ended=len(ended), client=self._client(request), now=now
        )
        # The kept session gets new credentials: tokens stolen before the change die with it.
        return self._rekeyed(auth, await self.tw.sessions.rekey(p.uid, p.sid, now=now))

    async def service_token(self, request: Request) -> Response:
        """``POST /auth/token {audience}``: an access token for one of the deployment's other
        services (``TOKENWARD_AUDIENCES``), for the current session (:mod:`tokenward.audiences`).

        Bearer clients only: in cookie mode no token ever appears in a body.
        """
        auth = await self._current(request)
        if not auth.bearer:
            raise Forbidden("service tokens are for bearer clients (Authorization: Bearer)")
        audience = (await read_body(request)).parse(TokenRequest).audience
        now = self.tw.clock.now()
        token, claims = self.tw.service_tokens.issue(audience, auth.principal.claims, now=now)
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": claims.exp - claims.iat,
            "audience": claims.aud,
        }
        return json_response(body)

    async def security_events(self, request: Request) -> Response:
        """``GET /auth/events``: the user's own recent security events, newest first."""
        auth = await self._current(request)
        rows = await self.tw.events.for_user(auth.principal.uid, now=self.tw.clock.now())
        body = [
            {
                "id": e.id,
                "kind": e.kind.value,
                "at": rfc3339(e.at),
                "ip": e.ip,
                "user_agent": e.user_agent,
                "session_id": e.sid,
                "detail": dict(e.detail),
            }
            for e in rows
        ]
        return apply_pending_cookies(request, json_response(body))


async def signed_in_user(tw: Tokenward, principal: Principal) -> UserRef:
    """The user of an authenticated session, read by id through the per-process profile
    cache (:class:`~tokenward.users.Profiles`).

    Sessions keep no e-mail address (a Redis dump must not list the users'), so whatever
    shows it reads the user store, at most once every few seconds per user and process.

    Raises:
        SessionEnded: the user no longer exists or is disabled (its sessions are ending).
        Unavailable: the user database did not answer (503).
    """
    user = await tw.profiles.by_id(principal.uid)
    if user is None or user.disabled:
        raise SessionEnded("the session has ended")
    return UserRef(user.id, user.email, user.created_at, user.email_verified)


async def user_still_enabled(tw: Tokenward, issued: Issued, *, epoch: int, now: int) -> bool:
    """Whether the user of a session just opened at login may keep it; if not, end it.

    ``Users.authenticate`` reads the user (and its credential ``epoch``) before hashing the
    password. A password change, a disable or an operator's revoke moves the epoch, then
    ends the user's sessions; one that lands while a login is hashing would leave the
    session the login then opens alive. Reading the user again once the session exists
    closes that gap (:func:`~tokenward.users.still_current` argues why).
    """
    user = await tw.user_store.by_id(issued.uid)
    if still_current(user, epoch):
        return True
    disabled = user is None or user.disabled
    reason = EndReason.USER_DISABLED if disabled else EndReason.REVOKED
    with contextlib.suppress(NotFound):  # the operation's end_all may have got there first
        await tw.sessions.end(issued.uid, issued.sid, reason, now=now)
    return False


def _looks_like_sid(value: str) -> bool:
    return len(value) == 22 and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


def _form_redirect(page: str, exc: TokenwardError) -> Response:
    return RedirectResponse(f"{page}?error={quote(exc.slug)}", status_code=303, headers=NO_STORE)
