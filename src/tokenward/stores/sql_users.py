"""The SQL :class:`~tokenward.users.UserStore` (SQLAlchemy 2 async; SQLite and PostgreSQL).

The schema is owned by Alembic migrations (``tokenward/migrations``); :func:`upgrade`
applies them and runs at start-up and as ``tokenward db upgrade``. Any database failure
becomes :class:`~tokenward.errors.Unavailable` (503) with nothing half-written: each verb
is one statement in its own transaction.

Uniqueness and lookups go by ``email_key`` (:func:`~tokenward.users.email_key` of the email),
a unique column: the database, not a read-then-write, refuses a second spelling of one
address. ``email_key`` is ``NULL`` only for accounts that migration 0002 found folding onto
an older account's key (listed by :meth:`SqlUserStore.without_email_key`); they cannot log in
by email until an operator resolves the collision (docs/security-model.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    MetaData,
    String,
    Table,
    bindparam,
    column,
    exists,
    insert,
    select,
    table,
    update,
)
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql import Executable

from tokenward.errors import Conflict, Unavailable
from tokenward.users import User, email_key

__all__ = ["SqlUserStore", "create_engine", "metadata", "read", "reader", "upgrade", "users_table"]

metadata = MetaData()

users_table = Table(
    "tokenward_users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("email", String(254), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("credential_epoch", BigInteger, nullable=False, default=0),
    #: case folding can triple a character (at most 254 in the email): room for 3 x 254
    Column("email_key", String(762), nullable=True),
    Column("email_verified", Boolean, nullable=False, default=False),
    Index("ix_tokenward_users_email", "email", unique=True),
    Index("ix_tokenward_users_email_key", "email_key", unique=True),
)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def create_engine(url: str, *, timeout: float = 2.0) -> AsyncEngine:
    """An async engine with bounded connect and statement times.

    Pooled connections are not pinged before each use (the ping was a round trip, or on
    SQLite a thread hop, before every query: about half of a query's cost). After a
    restart of the database server the first statement on a connection it closed fails;
    SQLAlchemy then replaces every pooled connection, and :func:`read` runs a read once
    more, so only a write can meet that failure (a 503: nothing was written).
    """
    if url.startswith("sqlite"):
        return create_async_engine(url, connect_args={"timeout": timeout})
    connect_args = {"timeout": timeout, "command_timeout": timeout}
    return create_async_engine(url, connect_args=connect_args)


async def read(
    engine: AsyncEngine, query: Executable, params: dict[str, Any] | None = None
) -> CursorResult[Any]:
    """Run a read-only ``query`` with ``params`` (through :func:`reader`'s engine); its rows
    are buffered.

    A read that finds its pooled connection dead (the server restarted since it was
    opened) runs once more on a new one: reading twice changes nothing.

    Raises:
        Unavailable: the database did not answer.
    """
    async with _backend():
        try:
            async with engine.connect() as conn:
                return await conn.execute(query, params)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        async with engine.connect() as conn:
            return await conn.execute(query, params)


def reader(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for single read-only statements: without a transaction around each on a
    database server (no ``BEGIN`` and ``ROLLBACK`` round trips: about 0.6 ms a query on
    PostgreSQL); SQLite, whose transactions cost nothing and whose isolation setting is
    one more thread hop, is used as it is. Shares ``engine``'s pool."""
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration."""
    from alembic import command
    from alembic.config import Config

    def run(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with _backend(), engine.begin() as conn:
        await conn.run_sync(run)


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    try:
        yield
    except IntegrityError:
        raise
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise Unavailable("user database unreachable") from exc


#: The second factors' table as far as this store reads it (owned by
#: :mod:`tokenward.stores.sql_mfa`, created by the same migrations).
_factors = table("tokenward_mfa_factors", column("user_id"), column("confirmed_at"))
_HAS_SECOND_FACTOR = (
    exists()
    .where(_factors.c.user_id == users_table.c.id, _factors.c.confirmed_at.is_not(None))
    .label("has_second_factor")
)


# The two reads on the login path, built once with bound parameters: a statement built per
# call is compiled from the SQL cache each time, but its cache key is computed anew, which
# cost about as much as the database's answer (bench/inprocess.py --database-reads).
_BY_EMAIL_KEY = select(users_table, _HAS_SECOND_FACTOR).where(
    users_table.c.email_key == bindparam("email_key")
)
_BY_ID = select(users_table).where(users_table.c.id == bindparam("id"))


def _user(row: Any, has_second_factor: bool | None = None) -> User:
    return User(
        id=row.id,
        email=row.email,
        password_hash=row.password_hash,
        created_at=int(row.created_at),
        disabled=bool(row.disabled),
        credential_epoch=int(row.credential_epoch),
        email_verified=bool(row.email_verified),
        has_second_factor=has_second_factor,
    )


class SqlUserStore:
    """Users in one table, ``tokenward_users``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reader = reader(engine)

    async def add(self, user: User) -> None:
        """See :meth:`tokenward.users.UserStore.add`."""
        try:
            async with _backend(), self.engine.begin() as conn:
                await conn.execute(
                    insert(users_table).values(
                        id=user.id,
                        email=user.email,
                        password_hash=user.password_hash,
                        created_at=user.created_at,
                        updated_at=user.created_at,
                        disabled=user.disabled,
                        credential_epoch=user.credential_epoch,
                        email_key=email_key(user.email),
                        email_verified=user.email_verified,
                    )
                )
        except IntegrityError:
            raise Conflict("an account with this email already exists") from None

    async def by_email(self, email: str) -> User | None:
        """See :meth:`tokenward.users.UserStore.by_email`; also whether the user has a
        confirmed second factor (``User.has_second_factor``), in the same query: a login
        then needs no query of its own to know whether a second step follows."""
        row = (await read(self._reader, _BY_EMAIL_KEY, {"email_key": email_key(email)})).first()
        return None if row is None else _user(row, bool(row.has_second_factor))

    async def by_id(self, user_id: str) -> User | None:
        """See :meth:`tokenward.users.UserStore.by_id`."""
        row = (await read(self._reader, _BY_ID, {"id": user_id})).first()
        return None if row is None else _user(row)

    async def set_password_hash(
        self, user_id: str, password_hash: str, *, expected_hash: str, bump_epoch: bool, now: int
    ) -> bool:
        """See :meth:`tokenward.users.UserStore.set_password_hash`.

        One ``UPDATE ... WHERE id = ? AND password_hash = ?``: the row lock makes a
        concurrent writer wait and then re-check the condition (PostgreSQL), or the writers
        are serialised (SQLite), so of two swaps from one hash exactly one applies.
        """
        values: dict[str, Any] = {"password_hash": password_hash, "updated_at": now}
        if bump_epoch:
            values["credential_epoch"] = users_table.c.credential_epoch + 1
        return await self._update(user_id, values, users_table.c.password_hash == expected_hash)

    async def set_disabled(self, user_id: str, disabled: bool, *, now: int) -> bool:
        """See :meth:`tokenward.users.UserStore.set_disabled`."""
        values: dict[str, Any] = {"disabled": disabled, "updated_at": now}
        if disabled:
            values["credential_epoch"] = users_table.c.credential_epoch + 1
        return await self._update(user_id, values)

    async def bump_credential_epoch(self, user_id: str, *, now: int) -> bool:
        """See :meth:`tokenward.users.UserStore.bump_credential_epoch`."""
        values = {"credential_epoch": users_table.c.credential_epoch + 1, "updated_at": now}
        return await self._update(user_id, values)

    async def set_email_verified(self, user_id: str, email: str, *, now: int) -> bool:
        """See :meth:`tokenward.users.UserStore.set_email_verified`."""
        values = {"email_verified": True, "updated_at": now}
        return await self._update(user_id, values, users_table.c.email == email)

    async def set_email(self, user_id: str, email: str, *, expected_email: str, now: int) -> bool:
        """See :meth:`tokenward.users.UserStore.set_email` (one conditional ``UPDATE``; the
        unique index on ``email_key`` refuses a taken address)."""
        values = {
            "email": email,
            "email_key": email_key(email),
            "email_verified": True,
            "updated_at": now,
        }
        try:
            return await self._update(user_id, values, users_table.c.email == expected_email)
        except IntegrityError:
            raise Conflict("an account with this email already exists") from None

    async def _update(self, user_id: str, values: dict[str, Any], *conditions: Any) -> bool:
        query = update(users_table).where(users_table.c.id == user_id, *conditions)
        async with _backend(), self.engine.begin() as conn:
            result = await conn.execute(query.values(**values))
        return bool(result.rowcount)

    async def without_email_key(self) -> list[User]:
        """Accounts whose email folds onto an older account's key, oldest first.

        Only migration 0002 makes them (from accounts registered before keys existed);
        every account registered since has a key.
        """
        query = (
            select(users_table)
            .where(users_table.c.email_key.is_(None))
            .order_by(users_table.c.created_at, users_table.c.id)
        )
        rows = (await read(self._reader, query)).all()
        return [_user(r) for r in rows]

    async def list(self, *, limit: int = 100, offset: int = 0) -> list[User]:
        """See :meth:`tokenward.users.UserStore.list`."""
        query = select(users_table).order_by(users_table.c.created_at, users_table.c.id)
        rows = (await read(self._reader, query.limit(limit).offset(offset))).all()
        return [_user(r) for r in rows]

    async def ping(self) -> None:
        """Raise ``Unavailable`` unless the database answers."""
        await read(self._reader, select(1))
