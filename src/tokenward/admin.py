"""Administrative operations: what ``tokenward users|sessions|db`` do, without the printing.

:func:`admin_runtime` builds a :class:`~tokenward.runtime.Tokenward` from the same settings as
the server. With no ``TOKENWARD_REDIS_URL`` the server owns an embedded Redis in the data
directory; when one runs (its socket exists and its lock is held) the CLI connects to its
socket instead of starting a second one, so that what the CLI does (ending sessions) reaches
the running server's invalidation feed at once. When none runs, the CLI starts the embedded
Redis itself for the duration of the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenward.errors import NotFound, PolicyError, Unavailable
from tokenward.events import Client, EventKind
from tokenward.runtime import Tokenward, database_whereabouts, default_database_url
from tokenward.sessions import EndReason, SessionRecord
from tokenward.settings import Settings
from tokenward.stores.embedded_redis import LOCK_NAME, SOCKET_NAME, EmbeddedRedisError
from tokenward.users import User, email_key, normalize_email

__all__ = [
    "ADMIN_CLIENT",
    "EmailCollision",
    "UserSessions",
    "admin_runtime",
    "create_user",
    "db_upgrade",
    "disable_user",
    "email_collisions",
    "enable_user",
    "find_user",
    "list_sessions",
    "list_users",
    "reset_mfa",
    "revoke_sessions",
    "running_embedded_redis",
]

#: The ``(ip, user_agent)`` of the security events the admin CLI causes: no address, and
#: ``tokenward-cli`` as the User-Agent, so the owner sees that an operator ended a session.
ADMIN_CLIENT: Client = ("", "tokenward-cli")


def running_embedded_redis(data_dir: Path) -> str | None:
    """The URL of the embedded Redis a server runs for ``data_dir``, or ``None``.

    It runs when its socket exists and its lock file is locked (``flock``) by someone: a
    socket with an unlocked lock file is a leftover of a crashed run.
    """
    data_dir = Path(data_dir).resolve()
    socket_path = data_dir / SOCKET_NAME
    try:
        if not stat.S_ISSOCK(socket_path.lstat().st_mode):
            return None
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"unix://{socket_path}"
    finally:
        os.close(fd)  # also releases the shared lock if we got it
    return None


@contextlib.asynccontextmanager
async def admin_runtime(settings: Settings) -> AsyncIterator[Tokenward]:
    """A started :class:`Tokenward` for one administrative command; stopped afterwards.

    Applies pending database migrations, as ``tokenward serve`` does.

    Raises:
        Unavailable: the embedded Redis could not be started.
    """
    if settings.issuer is None:
        # Admin commands issue no tokens; any issuer will do.
        settings = settings.resolved(host="127.0.0.1", port=8000)
    if settings.redis_url is None:
        url = running_embedded_redis(settings.data_dir)
        if url is not None:
            settings = settings.model_copy(update={"redis_url": url})
    tw = Tokenward(settings)
    try:
        await tw.start()
    except BaseException as exc:
        # A half-done start (e.g. the database refused after the embedded Redis started)
        # is not "started", so stop() would skip it: release the embedded Redis here.
        if tw.embedded is not None:
            await asyncio.to_thread(tw.embedded.stop)
        if isinstance(exc, EmbeddedRedisError):
            raise Unavailable(f"embedded Redis: {exc}") from None
        raise
    try:
        yield tw
    finally:
        await tw.stop()


async def db_upgrade(settings: Settings) -> str | None:
    """Apply pending migrations; return the database's revision afterwards.

    Raises:
        Unavailable: the database did not answer.
    """
    from sqlalchemy.engine import Connection
    from sqlalchemy.exc import SQLAlchemyError

    from tokenward.stores.sql_users import create_engine, upgrade

    url = settings.database_url or default_database_url(settings.data_dir)
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = create_engine(url, timeout=settings.backend_timeout)

    def current(connection: Connection) -> str | None:
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(connection).get_current_revision()

    try:
        try:
            await upgrade(engine)
        except Unavailable as exc:
            raise Unavailable(f"{exc.detail}: {database_whereabouts(settings)}") from exc
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(current)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"user database unreachable: {database_whereabouts(settings)}"
            ) from exc
    finally:
        await engine.dispose()


async def find_user(tw: Tokenward, ref: str) -> User:
    """The user named by an email address (it has an ``@``) or an id.

    Raises:
        NotFound: no such user.
    """
    if "@" in ref:
        try:
            address: str | None = normalize_email(ref)
        except PolicyError:
            address = None
        user = await tw.user_store.by_email(address) if address else None
    else:
        user = await tw.user_store.by_id(ref)
    if user is None:
        raise NotFound(f"no user {ref!r}")
    return user


async def create_user(tw: Tokenward, email: str, password: str) -> User:
    """Register a user (the same email and password rules as ``POST /auth/register``).

    Raises:
        PolicyError: bad email or password.
        Conflict: the email is taken.
    """
    return await tw.users.register(email, password, now=tw.clock.now())


async def list_users(tw: Tokenward, *, limit: int, offset: int) -> list[User]:
    """Users, oldest first."""
    return await tw.user_store.list(limit=limit, offset=offset)


async def disable_user(tw: Tokenward, ref: str) -> tuple[User, list[str]]:
    """Disable a user and end all their sessions; returns the user and the ids ended.

    The steps are ordered so that a back end failing half-way leaves a safe state and a
    re-run completes it:

    1. end the user's sessions (Redis). Redis down: nothing has changed at all;
    2. disable the account, moving its credential epoch (the database). Down: the sessions
       are ended but the user could log in again, and the error says so;
    3. end the sessions again: a login that checked the user before step 2 and opened its
       session after step 1 is caught here, or by its own re-check after opening
       (:func:`~tokenward.users.still_current`), so no session of a disabled user survives.

    Ending the sessions is announced on the invalidation feed, so running servers refuse
    their access tokens from the next request on, and is recorded as a ``sessions.ended``
    security event (reason ``user-disabled``, client :data:`ADMIN_CLIENT`).

    Raises:
        NotFound: no such user.
        Unavailable: a back end failed; the message says what was and was not done.
    """
    user = await find_user(tw, ref)
    now = tw.clock.now()
    reason = EndReason.USER_DISABLED
    try:
        ended = await tw.sessions.end_all(user.id, keep=None, reason=reason, now=now)
    except Unavailable as exc:
        raise Unavailable(
            f"{exc.detail}: nothing was changed ({user.id} is not disabled); run the command "
            "again when the session store is back"
        ) from exc
    try:
        await tw.user_store.set_disabled(user.id, True, now=now)
    except Unavailable as exc:
        tw.events.sessions_ended(user.id, ended, reason.value, client=ADMIN_CLIENT, now=now)
        raise Unavailable(
            f"{exc.detail}: ended {len(ended)} session(s) of {user.id} but did NOT disable "
            "the account (the user can log in again); run the command again"
        ) from exc
    try:
        ended += await tw.sessions.end_all(user.id, keep=None, reason=reason, now=now)
    except Unavailable as exc:
        tw.events.sessions_ended(user.id, ended, reason.value, client=ADMIN_CLIENT, now=now)
        raise Unavailable(
            f"{exc.detail}: disabled {user.id} and ended {len(ended)} session(s), but the "
            "final sweep failed: a session opened during the command may remain; run the "
            "command again"
        ) from exc
    tw.events.sessions_ended(user.id, ended, reason.value, client=ADMIN_CLIENT, now=now)
    return user, ended


async def enable_user(tw: Tokenward, ref: str) -> User:
    """Allow a disabled user to log in again."""
    user = await find_user(tw, ref)
    await tw.user_store.set_disabled(user.id, False, now=tw.clock.now())
    return user


@dataclass(frozen=True, slots=True)
class UserSessions:
    """A user and their live sessions, most recently used first."""

    user: User
    sessions: Sequence[SessionRecord]


async def list_sessions(tw: Tokenward, ref: str) -> UserSessions:
    """The live sessions of a user."""
    user = await find_user(tw, ref)
    return UserSessions(user, await tw.session_store.list(user.id, now=tw.clock.now()))


async def revoke_sessions(tw: Tokenward, ref: str, sid: str | None = None) -> list[str]:
    """End one session of a user (``sid``) or all of them; returns the ids ended.

    Ending all of them first moves the user's credential epoch, so that a login which
    verified the password before and opens its session after ``end_all`` is refused by
    its re-check, as for a disable. Recorded as a ``sessions.ended`` security event (reason
    ``revoked``, client :data:`ADMIN_CLIENT`).

    Raises:
        NotFound: no such user, or ``sid`` is not one of their live sessions.
    """
    user = await find_user(tw, ref)
    now = tw.clock.now()
    if sid is not None:
        await tw.sessions.end(user.id, sid, EndReason.REVOKED, now=now)
        ended = [sid]
    else:
        await tw.user_store.bump_credential_epoch(user.id, now=now)
        try:
            ended = await tw.sessions.end_all(user.id, keep=None, reason=EndReason.REVOKED, now=now)
        except Unavailable as exc:
            raise Unavailable(
                f"{exc.detail}: no session of {user.id} was ended (logins in flight were "
                "refused); run the command again when the session store is back"
            ) from exc
    tw.events.sessions_ended(user.id, ended, EndReason.REVOKED.value, client=ADMIN_CLIENT, now=now)
    return ended


async def reset_mfa(tw: Tokenward, ref: str) -> tuple[User, int, list[str]]:
    """Remove a user's second factors and recovery codes and end all their sessions (a
    lost phone, or a factor an intruder enrolled); returns the user, the number of factors
    removed and the session ids ended.

    The credential epoch moves first, so a login between password and code (or one that
    opens its session while this runs) is refused by its re-check, as for a revoke. The
    user's next login is password-only (``optional``) or enrols a new factor
    (``required``). Recorded as ``mfa.reset`` and ``sessions.ended`` (reason ``revoked``),
    client :data:`ADMIN_CLIENT`.

    Raises:
        NotFound: no such user.
        Unavailable: a back end failed; the message says what was done.
    """
    user = await find_user(tw, ref)
    now = tw.clock.now()
    await tw.user_store.bump_credential_epoch(user.id, now=now)
    removed = await tw.mfa.remove_all(user.id)
    try:
        ended = await tw.sessions.end_all(user.id, keep=None, reason=EndReason.REVOKED, now=now)
    except Unavailable as exc:
        tw.events.mfa(EventKind.MFA_RESET, user.id, None, client=ADMIN_CLIENT, now=now)
        raise Unavailable(
            f"{exc.detail}: removed {removed} factor(s) of {user.id} but ended no session; "
            "run the command again when the session store is back"
        ) from exc
    detail = {"factors": removed, "sessions_ended": len(ended)}
    tw.events.mfa(EventKind.MFA_RESET, user.id, None, client=ADMIN_CLIENT, now=now, detail=detail)
    tw.events.sessions_ended(user.id, ended, EndReason.REVOKED.value, client=ADMIN_CLIENT, now=now)
    return user, removed, ended


@dataclass(frozen=True, slots=True)
class EmailCollision:
    """An account whose email folds onto an older account's key (see migration 0002).

    ``holder`` logs in with that address; ``user`` cannot log in by email until an operator
    resolves it (docs/security-model.md). ``holder`` is ``None`` if it has gone since.
    """

    key: str
    user: User
    holder: User | None


async def email_collisions(tw: Tokenward) -> list[EmailCollision]:
    """The accounts without an email key, oldest first, each with the key's holder."""
    found = []
    for user in await tw.user_store.without_email_key():
        key = email_key(user.email)
        found.append(EmailCollision(key, user, await tw.user_store.by_email(key)))
    return found
