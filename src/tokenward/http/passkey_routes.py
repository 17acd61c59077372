"""The passkey (WebAuthn) endpoints (docs/mfa.md, "Passkeys"). Each handler: read, call
:mod:`tokenward.passkeys`, render.

==========================================  ============================================
``POST /auth/passkeys/register/options``    creation options (recent authentication)
``POST /auth/passkeys/register``            ``{name, credential}``: 201, the passkey
``GET /auth/passkeys``                      the user's passkeys (never a key)
``PATCH /auth/passkeys/{id}``               ``{name}``: rename one
``DELETE /auth/passkeys/{id}``              remove one; needs a recent second factor
``POST /auth/login/passkey/options``        request options for a sign-in with no e-mail
                                            and the ``handle`` to send back
``POST /auth/login/passkey``                ``{handle, credential}``: what a login answers
``POST /auth/login/mfa/passkey/options``    ``{challenge}``: request options for the second
                                            step of a login (the user's passkeys)
==========================================  ============================================

Registered with the second-factor routes, only when ``TOKENWARD_MFA`` is not ``off``. The
second step itself is ``POST /auth/login/mfa {challenge, credential}``
(:mod:`tokenward.http.mfa_routes`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenward.errors import EmailNotVerified, InvalidCredentials, PasskeyInvalid
from tokenward.events import EventKind
from tokenward.http.auth import (
    apply_pending_cookies,
    authenticate,
    check_request_origin,
    client_of,
)
from tokenward.http.body import read_body
from tokenward.http.mfa_login import binding_of, signin_binding
from tokenward.http.mfa_routes import MfaRoutes
from tokenward.http.problems import is_bearer_transport
from tokenward.http.routes import NO_STORE, json_response, rfc3339, signed_in_user
from tokenward.http.schemas import (
    MfaPasskeyOptions,
    PasskeyRegistration,
    PasskeyRename,
    PasskeySignIn,
)
from tokenward.passkeys import Passkey
from tokenward.runtime import Tokenward

__all__ = ["PasskeyRoutes", "passkey_routes"]


def _row(passkey: Passkey) -> dict[str, object]:
    return {
        "id": passkey.id,
        "name": passkey.name,
        "created_at": rfc3339(passkey.created_at),
        "last_used_at": None if passkey.last_used_at is None else rfc3339(passkey.last_used_at),
        "synced": passkey.synced,
    }


class PasskeyRoutes:
    """The passkey handlers of one :class:`~tokenward.runtime.Tokenward`."""

    def __init__(self, tw: Tokenward, mfa: MfaRoutes) -> None:
        self.tw = tw
        self.mfa = mfa

    def _expires_in(self) -> int:
        # What the browser is told: a little less than the server keeps the challenge.
        return self.tw.passkeys.challenge_ttl - 10

    async def register_options(self, request: Request) -> Response:
        """``POST /auth/passkeys/register/options``: creation options for a new passkey."""
        auth = await authenticate(self.tw, request)
        await read_body(request, allow_empty=True)
        self.mfa._recent(auth)
        user = await signed_in_user(self.tw, auth.principal)
        options = await self.tw.passkeys.registration_options(
            user.id, user.email, now=self.tw.clock.now()
        )
        body = {"publicKey": options, "expires_in": self._expires_in()}
        return apply_pending_cookies(request, json_response(body, headers=NO_STORE))

    async def register(self, request: Request) -> Response:
        """``POST /auth/passkeys/register {name, credential}``: 201 with the passkey."""
        auth = await authenticate(self.tw, request)
        req = (await read_body(request)).parse(PasskeyRegistration)
        self.mfa._recent(auth)
        now = self.tw.clock.now()
        p = auth.principal
        passkey = await self.tw.passkeys.register(p.uid, req.name, req.credential, now=now)
        client = client_of(self.tw, request)
        self.tw.events.mfa(EventKind.PASSKEY_ADDED, p.uid, p.sid, client=client, now=now)
        return apply_pending_cookies(request, json_response(_row(passkey), 201))

    async def list(self, request: Request) -> Response:
        """``GET /auth/passkeys``: the user's passkeys, oldest first."""
        auth = await authenticate(self.tw, request)
        rows = [_row(k) for k in await self.tw.passkeys.passkeys(auth.principal.uid)]
        return apply_pending_cookies(request, json_response({"passkeys": rows}))

    async def one(self, request: Request) -> Response:
        """``/auth/passkeys/{id}``: ``PATCH`` renames, ``DELETE`` removes."""
        if request.method == "PATCH":
            return await self.rename(request)
        return await self.remove(request)

    async def rename(self, request: Request) -> Response:
        """``PATCH /auth/passkeys/{id} {name}``: 200 with the passkey; 404 for an unknown
        or someone else's."""
        auth = await authenticate(self.tw, request)
        name = (await read_body(request)).parse(PasskeyRename).name
        passkey_id = str(request.path_params["id"])
        passkey = await self.tw.passkeys.rename(auth.principal.uid, passkey_id, name)
        return apply_pending_cookies(request, json_response(_row(passkey)))

    async def remove(self, request: Request) -> Response:
        """``DELETE /auth/passkeys/{id}``: 204; 404 for an unknown or someone else's."""
        auth = await authenticate(self.tw, request)
        self.mfa._recent(auth, mfa=True)
        p = auth.principal
        await self.tw.passkeys.remove(p.uid, str(request.path_params["id"]))
        now = self.tw.clock.now()
        client = client_of(self.tw, request)
        self.tw.events.mfa(EventKind.PASSKEY_REMOVED, p.uid, p.sid, client=client, now=now)
        return apply_pending_cookies(request, Response(status_code=204, headers=NO_STORE))

    async def signin_options(self, request: Request) -> Response:
        """``POST /auth/login/passkey/options``: request options (no ``allowCredentials``:
        the browser offers the passkeys it holds for the rp id) and a handle."""
        await read_body(request, allow_empty=True)
        if not is_bearer_transport(request):
            check_request_origin(self.tw, request)
        handle, options = await self.tw.passkeys.signin_options(
            binding=signin_binding(self.tw, request), now=self.tw.clock.now()
        )
        body = {"publicKey": options, "expires_in": self._expires_in(), "handle": handle}
        return json_response(body, headers=NO_STORE)

    async def signin(self, request: Request) -> Response:
        """``POST /auth/login/passkey {handle, credential}``: exactly what a login answers."""
        body = await read_body(request)
        bearer = is_bearer_transport(request)
        if not bearer:
            check_request_origin(self.tw, request)
        req = body.parse(PasskeySignIn)
        now = self.tw.clock.now()
        client = client_of(self.tw, request)
        try:
            # Refused passkeys count as failed logins of the address, as wrong passwords do.
            async with self.tw.throttle.passkey(client[0], now=now) as ticket:
                done = await self.tw.passkeys.signin(
                    req.handle, req.credential, binding=signin_binding(self.tw, request), now=now
                )
                await ticket.refund()
        except PasskeyInvalid as exc:
            if exc.clone and exc.uid is not None:
                kind = EventKind.PASSKEY_CLONE_SUSPECTED
                self.tw.events.mfa(kind, exc.uid, None, client=client, now=now)
            raise
        user = await self.tw.user_store.by_id(done.uid)
        if user is None or user.disabled:
            raise InvalidCredentials("this account cannot sign in")
        if self.tw.settings.require_verified_email and not user.email_verified:
            raise EmailNotVerified(
                "verify your e-mail address first", resend="/auth/email/verify/resend"
            )
        issued = await self.mfa.open_session(
            request,
            uid=user.id,
            email=user.email,
            user_created_at=user.created_at,
            email_verified=user.email_verified,
            epoch=user.credential_epoch,
            level=done.level,
            bearer=bearer,
            now=now,
        )
        self.tw.events.mfa(EventKind.PASSKEY_USED, user.id, issued.sid, client=client, now=now)
        return self.mfa.session_response(issued, bearer=bearer)

    async def mfa_options(self, request: Request) -> Response:
        """``POST /auth/login/mfa/passkey/options {challenge}``: request options for the
        second step of a login, allowing the user's passkeys."""
        body = await read_body(request)
        bearer = is_bearer_transport(request)
        if not bearer:
            check_request_origin(self.tw, request)
        challenge = body.parse(MfaPasskeyOptions).challenge
        options = await self.tw.passkeys.mfa_options(
            self.tw.mfa,
            challenge,
            binding=binding_of(self.tw, request, bearer=bearer),
            now=self.tw.clock.now(),
        )
        return json_response(
            {"publicKey": options, "expires_in": self._expires_in()}, headers=NO_STORE
        )


def passkey_routes(tw: Tokenward, mfa: MfaRoutes) -> list[Route]:
    """The routes of :class:`PasskeyRoutes` for ``tw``."""
    handlers = PasskeyRoutes(tw, mfa)
    return [
        Route("/auth/passkeys/register/options", handlers.register_options, methods=["POST"]),
        Route("/auth/passkeys/register", handlers.register, methods=["POST"]),
        Route("/auth/passkeys", handlers.list, methods=["GET"]),
        # One route for both methods: a 405 there lists them both in its Allow header.
        Route("/auth/passkeys/{id}", handlers.one, methods=["PATCH", "DELETE"]),
        Route("/auth/login/passkey/options", handlers.signin_options, methods=["POST"]),
        Route("/auth/login/passkey", handlers.signin, methods=["POST"]),
        Route("/auth/login/mfa/passkey/options", handlers.mfa_options, methods=["POST"]),
    ]
