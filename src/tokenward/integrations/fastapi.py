"""FastAPI integration: Tokenward's routes in your app, and dependencies for your routes.

::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from tokenward import Tokenward, UserRef, load_settings
    from tokenward.integrations.fastapi import TokenwardFastAPI

    tw = Tokenward(load_settings())
    auth = TokenwardFastAPI(tw)
    app = FastAPI()
    auth.install(app)      # /auth/*, the JWKS, error mapping, lifespan

    @app.get("/hello")
    async def hello(user: Annotated[UserRef, Depends(auth.current_user)]) -> dict[str, str]:
        return {"hello": user.email}

    @app.get("/notes")
    async def notes(session: Annotated[Principal, Depends(auth.current_session)]) -> list[str]:
        return await load_notes(session.uid)   # no user-database read

:meth:`TokenwardFastAPI.current_session` checks the token and the live session only (Redis,
usually the process's cache); :meth:`TokenwardFastAPI.current_user` adds one read of the
user store by id, for the e-mail address, which sessions do not hold. Hot paths that need
only the user id use ``current_session``.

One implementation, not two: the routes are the standalone server's app (served by
:class:`~tokenward.integrations.asgi.TokenwardMiddleware`), the dependencies call the
server's :func:`~tokenward.http.auth.authenticate` (bearer or cookie, CSRF, transparent
refresh) and errors are rendered by the server's problem mapping.

Authorization beyond "who is this" is the app's: :meth:`TokenwardFastAPI.require_scope`
asks the ``scopes_for`` callback the app supplies (access tokens carry no scopes).

Step-up: :meth:`TokenwardFastAPI.require_mfa` lets a route through only for a session
that signed in (or re-authenticated) with a second factor, 403 ``mfa-required`` otherwise;
:meth:`TokenwardFastAPI.require_recent_auth` only for one that authenticated in the last
``max_age`` seconds, 403 ``reauthentication-required`` otherwise (docs/mfa.md)::

    @app.post("/billing")
    async def billing(session: Annotated[Principal, Depends(auth.require_mfa(max_age=600))]):
        ...

An app that is one of the deployment's *other* services passes its name,
``TokenwardFastAPI(tw, audience="notes")`` (one of ``TOKENWARD_AUDIENCES``): its
dependencies then accept only bearer tokens minted for ``notes`` (``POST /auth/token``),
never Tokenward's own or another service's (see :mod:`tokenward.audiences`).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from tokenward.errors import ConfigError, Forbidden, TokenwardError
from tokenward.http.problems import handle_tokenward_error
from tokenward.http.routes import signed_in_user
from tokenward.integrations.asgi import (
    TokenwardMiddleware,
    authenticate_once,
    presents_credentials,
)
from tokenward.mfa import check_step_up
from tokenward.runtime import Tokenward
from tokenward.sessions import Principal, UserRef

__all__ = ["ScopeResolver", "TokenwardFastAPI"]

#: ``scopes_for(principal)``: the scopes the app grants this user, sync or async.
ScopeResolver = Callable[[Principal], Collection[str] | Awaitable[Collection[str]]]


class TokenwardFastAPI:
    """Tokenward for one FastAPI app.

    Args:
        tw: the service.
        scopes_for: what a user may do, for :meth:`require_scope`; called once per request
            that needs it, so cache in the callback if the answer is costly.
        audience: this app's service name (one of ``TOKENWARD_AUDIENCES``); tokens for any
            other audience are refused. Default: ``TOKENWARD_AUDIENCE``, Tokenward's own.

    Raises:
        ConfigError: ``audience`` is not configured.
    """

    def __init__(
        self,
        tw: Tokenward,
        *,
        scopes_for: ScopeResolver | None = None,
        audience: str | None = None,
    ) -> None:
        if audience is not None and not tw.service_tokens.allows(audience):
            raise ConfigError(f"audience: {audience!r} is not in TOKENWARD_AUDIENCES")
        self.tw = tw
        self.scopes_for = scopes_for
        self.audience = audience

    def install(self, app: FastAPI, *, manage_lifespan: bool = True) -> None:
        """Serve Tokenward's routes in ``app`` and render its errors as problem+json.

        Call before the app starts. Adds :class:`TokenwardMiddleware` (which answers
        ``/auth/*`` and ``/.well-known/jwks.json``; the host's own routes must live
        elsewhere), an exception handler for :class:`~tokenward.errors.TokenwardError`, and,
        with ``manage_lifespan``, starts the service before the app's own lifespan and
        stops it after, so the app's startup code can already use it.
        """
        app.add_middleware(TokenwardMiddleware, tw=self.tw, serve_routes=True)
        app.add_exception_handler(TokenwardError, handle_tokenward_error)
        if manage_lifespan:
            app.router.lifespan_context = self._wrap_lifespan(app.router.lifespan_context)

    def _wrap_lifespan(
        self, inner: Callable[[Any], AbstractAsyncContextManager[Any]]
    ) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            await self.tw.start()
            try:
                async with inner(app) as state:
                    yield state
            finally:
                await self.tw.stop()

        return lifespan

    async def current_session(self, request: Request) -> Principal:
        """Dependency: the authenticated session (claims and live state); no database read.

        ``.uid`` is the user id. Prefer it on hot paths: :meth:`current_user` also reads
        the user store.

        Raises:
            TokenExpired, TokenInvalid, SessionEnded: 401; CsrfError: 403;
            BadRequest: 400; Unavailable: 503.
        """
        return (await authenticate_once(self.tw, request, self.audience)).principal

    async def current_user(self, request: Request) -> UserRef:
        """Dependency: the signed-in user (id, email, created_at), read from the user store.

        One primary-key read per request (sessions keep no e-mail address). With the user
        database down this is 503 ``unavailable``; a user deleted or disabled while the
        session was live is 401 ``unauthenticated``.

        Raises:
            The same errors as :meth:`current_session`.
        """
        return await signed_in_user(self.tw, await self.current_session(request))

    async def optional_user(self, request: Request) -> UserRef | None:
        """Dependency: the signed-in user, or ``None`` when the request has no credentials.

        Credentials that are present but wrong (expired, ended, a cookie request without
        its CSRF token) still fail, so the client learns to refresh or log in.
        """
        if not presents_credentials(self.tw, request):
            return None
        return await self.current_user(request)

    def require_mfa(
        self, *, max_age: int | None = None
    ) -> Callable[[Request], Awaitable[Principal]]:
        """Dependency factory: the session, if it used a second factor (``amr`` holds
        ``mfa``) and, with ``max_age``, authenticated at most that many seconds ago.

        Raises:
            MfaRequired: (403 ``mfa-required``) no second factor in this session.
            ReauthenticationRequired: (403 ``reauthentication-required``) too long ago.
        """
        return self._step_up(mfa=True, max_age=max_age)

    def require_recent_auth(
        self, max_age: int | None = None
    ) -> Callable[[Request], Awaitable[Principal]]:
        """Dependency factory: the session, if it authenticated (logged in, or
        ``POST /auth/reauthenticate``) at most ``max_age`` seconds ago
        (default ``TOKENWARD_REAUTH_MAX_AGE``).

        Raises:
            ReauthenticationRequired: (403 ``reauthentication-required``) too long ago.
        """
        return self._step_up(mfa=False, max_age=max_age or self.tw.settings.reauth_max_age)

    def _step_up(
        self, *, mfa: bool, max_age: int | None
    ) -> Callable[[Request], Awaitable[Principal]]:
        async def stepped_up_session(request: Request) -> Principal:
            principal = await self.current_session(request)
            check_step_up(principal.claims, mfa=mfa, max_age=max_age, now=self.tw.clock.now())
            return principal

        return stepped_up_session

    def require_scope(self, *scopes: str) -> Callable[[Request], Awaitable[Principal]]:
        """Dependency factory: the session, if ``scopes_for`` grants every one of ``scopes``.

        Raises:
            ConfigError: now, when no ``scopes_for`` was given.
            Forbidden: (403, at request time) a scope is missing.
        """
        resolver = self.scopes_for
        if resolver is None:
            raise ConfigError("require_scope: pass scopes_for= to TokenwardFastAPI")
        needed = frozenset(scopes)

        async def scoped_session(request: Request) -> Principal:
            principal = await self.current_session(request)
            granted = resolver(principal)
            if inspect.isawaitable(granted):
                granted = await granted
            missing = needed.difference(granted)
            if missing:
                raise Forbidden(f"missing scope: {' '.join(sorted(missing))}")
            return principal

        return scoped_session
