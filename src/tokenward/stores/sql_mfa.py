"""The SQL :class:`~tokenward.mfa.FactorStore`: second factors and recovery codes.

Two tables (migration 0004), on the same engine as the users:

* ``tokenward_mfa_factors``: one row per factor. ``kind`` ``totp``: ``secret`` is the
  sealed TOTP secret (:class:`~tokenward.secretbox.SecretBox`), never the plain one;
  ``confirmed_at`` is ``NULL`` while an enrolment waits for its first code. ``kind``
  ``passkey`` (:mod:`tokenward.passkeys`): ``secret`` holds the public key (and transports,
  backup flag), ``credential_id`` the credential id (base64url, unique) and ``sign_count``
  the authenticator's last signature counter.
* ``tokenward_mfa_recovery_codes``: ``(user_id, digest)``, ``used_at`` once used.

Any database failure is :class:`~tokenward.errors.Unavailable` (503); each verb is one
transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenward.errors import Unavailable
from tokenward.mfa import Factor
from tokenward.stores.sql_users import metadata, read, reader, users_table

__all__ = ["SqlFactorStore", "factors_table", "recovery_table"]

factors_table = Table(
    "tokenward_mfa_factors",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("label", String(64), nullable=False),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("confirmed_at", BigInteger, nullable=True),
    Column("last_used_at", BigInteger, nullable=True),
    #: passkeys (WebAuthn): the credential id and the authenticator's signature counter
    Column("credential_id", String(255), nullable=True),
    Column("sign_count", BigInteger, nullable=False, default=0),
    Index("ix_tokenward_mfa_factors_user", "user_id"),
    Index("ix_tokenward_mfa_factors_credential", "credential_id", unique=True),
)

recovery_table = Table(
    "tokenward_mfa_recovery_codes",
    metadata,
    Column("user_id", String(32), primary_key=True),
    Column("digest", String(64), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
)


@asynccontextmanager
async def _backend() -> AsyncIterator[None]:
    try:
        yield
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise Unavailable("user database unreachable") from exc


def _factor(row: Any) -> Factor:
    return Factor(
        id=row.id,
        uid=row.user_id,
        kind=row.kind,
        label=row.label,
        secret=bytes(row.secret),
        created_at=int(row.created_at),
        confirmed_at=None if row.confirmed_at is None else int(row.confirmed_at),
        last_used_at=None if row.last_used_at is None else int(row.last_used_at),
        credential_id=row.credential_id,
        sign_count=int(row.sign_count or 0),
    )


def _factor_values(factor: Factor) -> dict[str, Any]:
    return {
        "id": factor.id,
        "user_id": factor.uid,
        "kind": factor.kind,
        "label": factor.label,
        "secret": factor.secret,
        "created_at": factor.created_at,
        "confirmed_at": factor.confirmed_at,
        "last_used_at": factor.last_used_at,
        "credential_id": factor.credential_id,
        "sign_count": factor.sign_count,
    }


async def _lock_user(conn: Any, uid: str) -> None:
    """Serialize the enrolment verbs of one user: a no-op ``UPDATE`` of the user's row,
    first thing in the transaction. PostgreSQL holds its row lock to the commit; SQLite
    (whose driver would run a leading ``SELECT`` outside the transaction) takes the
    database's write lock. ``SELECT ... FOR UPDATE`` would do the first only.

    Without it, two concurrent enrolment starts each delete the pending rows they can see
    (none: the other's insert is not committed yet) and insert their own: two pending
    secrets, and the first code typed confirms whichever the listing names first. With it
    the later start replaces the earlier, so only the last secret shown can be confirmed
    (``test_concurrent_enrolment_starts_leave_one_pending``), and two confirmations of two
    login challenges cannot both add a confirmed factor. Passkey registrations take it
    too, so that their count-then-insert cannot pass the limit.
    """
    await conn.execute(
        update(users_table)
        .where(users_table.c.id == uid)
        .values(updated_at=users_table.c.updated_at)
    )


class SqlFactorStore:
    """Factors and recovery codes in two tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reader = reader(engine)

    async def factors(self, uid: str) -> list[Factor]:
        """See :meth:`tokenward.mfa.FactorStore.factors`."""
        query = (
            select(factors_table)
            .where(factors_table.c.user_id == uid)
            .order_by(factors_table.c.created_at, factors_table.c.id)
        )
        rows = (await read(self._reader, query)).all()
        return [_factor(r) for r in rows]

    async def put_pending(self, factor: Factor) -> None:
        """See :meth:`tokenward.mfa.FactorStore.put_pending`."""
        async with _backend(), self.engine.begin() as conn:
            await _lock_user(conn, factor.uid)
            await conn.execute(
                delete(factors_table).where(
                    factors_table.c.user_id == factor.uid,
                    factors_table.c.kind == factor.kind,
                    factors_table.c.confirmed_at.is_(None),
                )
            )
            await conn.execute(insert(factors_table).values(**_factor_values(factor)))

    async def confirm(self, uid: str, factor_id: str, *, codes: Sequence[str], now: int) -> bool:
        """See :meth:`tokenward.mfa.FactorStore.confirm`.

        ``UPDATE ... WHERE confirmed_at IS NULL``: of two concurrent confirmations one
        applies; the other's transaction changes nothing.
        """
        async with _backend(), self.engine.begin() as conn:
            await _lock_user(conn, uid)
            # A factor of the same kind confirmed meanwhile (a login under ``required``)
            # wins: one active authenticator app per user.
            kinds = select(factors_table.c.kind).where(factors_table.c.id == factor_id)
            active = await conn.execute(
                select(func.count())
                .select_from(factors_table)
                .where(
                    factors_table.c.user_id == uid,
                    factors_table.c.kind == kinds.scalar_subquery(),
                    factors_table.c.confirmed_at.is_not(None),
                )
            )
            if active.scalar_one():
                return False
            result = await conn.execute(
                update(factors_table)
                .where(
                    factors_table.c.id == factor_id,
                    factors_table.c.user_id == uid,
                    factors_table.c.confirmed_at.is_(None),
                )
                .values(confirmed_at=now, last_used_at=now)
            )
            if not result.rowcount:
                return False
            await self._replace_codes(conn, uid, codes, now)
        return True

    async def add_confirmed(self, factor: Factor, *, codes: Sequence[str], now: int) -> bool:
        """See :meth:`tokenward.mfa.FactorStore.add_confirmed`."""
        async with _backend(), self.engine.begin() as conn:
            await _lock_user(conn, factor.uid)
            existing = await conn.execute(
                select(func.count())
                .select_from(factors_table)
                .where(
                    factors_table.c.user_id == factor.uid,
                    factors_table.c.kind == factor.kind,
                    factors_table.c.confirmed_at.is_not(None),
                )
            )
            if existing.scalar_one():
                return False
            await conn.execute(insert(factors_table).values(**_factor_values(factor)))
            await self._replace_codes(conn, factor.uid, codes, now)
        return True

    @staticmethod
    async def _replace_codes(conn: Any, uid: str, codes: Sequence[str], now: int) -> None:
        await conn.execute(delete(recovery_table).where(recovery_table.c.user_id == uid))
        if codes:
            await conn.execute(
                insert(recovery_table),
                [{"user_id": uid, "digest": d, "created_at": now, "used_at": None} for d in codes],
            )

    async def touch(self, factor_id: str, *, now: int) -> None:
        """See :meth:`tokenward.mfa.FactorStore.touch`."""
        async with _backend(), self.engine.begin() as conn:
            await conn.execute(
                update(factors_table)
                .where(factors_table.c.id == factor_id)
                .values(last_used_at=now)
            )

    async def use_recovery(self, uid: str, digest: str, *, now: int) -> bool:
        """See :meth:`tokenward.mfa.FactorStore.use_recovery` (one conditional UPDATE)."""
        async with _backend(), self.engine.begin() as conn:
            result = await conn.execute(
                update(recovery_table)
                .where(
                    recovery_table.c.user_id == uid,
                    recovery_table.c.digest == digest,
                    recovery_table.c.used_at.is_(None),
                )
                .values(used_at=now)
            )
        return bool(result.rowcount)

    async def replace_recovery(self, uid: str, codes: Sequence[str], *, now: int) -> None:
        """See :meth:`tokenward.mfa.FactorStore.replace_recovery`."""
        async with _backend(), self.engine.begin() as conn:
            await self._replace_codes(conn, uid, codes, now)

    async def recovery_left(self, uid: str) -> int:
        """See :meth:`tokenward.mfa.FactorStore.recovery_left`."""
        query = (
            select(func.count())
            .select_from(recovery_table)
            .where(recovery_table.c.user_id == uid, recovery_table.c.used_at.is_(None))
        )
        return int((await read(self._reader, query)).scalar_one())

    async def remove_all(self, uid: str) -> int:
        """See :meth:`tokenward.mfa.FactorStore.remove_all`."""
        async with _backend(), self.engine.begin() as conn:
            result = await conn.execute(delete(factors_table).where(factors_table.c.user_id == uid))
            await conn.execute(delete(recovery_table).where(recovery_table.c.user_id == uid))
        return int(result.rowcount)

    async def remove_kind(self, uid: str, kind: str, *, codes: bool) -> int:
        """See :meth:`tokenward.mfa.FactorStore.remove_kind`."""
        async with _backend(), self.engine.begin() as conn:
            result = await conn.execute(
                delete(factors_table).where(
                    factors_table.c.user_id == uid, factors_table.c.kind == kind
                )
            )
            if codes:
                await conn.execute(delete(recovery_table).where(recovery_table.c.user_id == uid))
        return int(result.rowcount)

    # -- passkeys (tokenward.passkeys.PasskeyStore) -------------------------------------

    async def by_credential(self, credential_id: str) -> Factor | None:
        """See :meth:`tokenward.passkeys.PasskeyStore.by_credential`."""
        query = select(factors_table).where(factors_table.c.credential_id == credential_id)
        row = (await read(self._reader, query)).first()
        return None if row is None else _factor(row)

    async def add_passkey(self, factor: Factor, *, limit: int) -> str:
        """See :meth:`tokenward.passkeys.PasskeyStore.add_passkey`."""
        try:
            async with self.engine.begin() as conn:
                # Unlocked, concurrent registrations all count below the limit and all
                # insert (test_concurrent_passkey_registrations_stay_within_the_limit).
                await _lock_user(conn, factor.uid)
                count = await conn.execute(
                    select(func.count())
                    .select_from(factors_table)
                    .where(
                        factors_table.c.user_id == factor.uid,
                        factors_table.c.kind == factor.kind,
                    )
                )
                if count.scalar_one() >= limit:
                    return "limit"
                await conn.execute(insert(factors_table).values(**_factor_values(factor)))
        except IntegrityError:
            # The unique index on credential_id: that authenticator is registered already.
            return "exists"
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise Unavailable("user database unreachable") from exc
        return "ok"

    async def use_passkey(self, factor_id: str, sign_count: int, *, now: int) -> bool:
        """See :meth:`tokenward.passkeys.PasskeyStore.use_passkey`.

        One conditional ``UPDATE``: of two concurrent uses reporting one counter value,
        one moves it; the other finds it no longer below and is refused.
        """
        counter = factors_table.c.sign_count
        # An authenticator that counts nothing reports 0 every time; one that counts must
        # report more than last time.
        moves = counter == 0 if sign_count == 0 else counter < sign_count
        async with _backend(), self.engine.begin() as conn:
            result = await conn.execute(
                update(factors_table)
                .where(factors_table.c.id == factor_id, moves)
                .values(sign_count=sign_count, last_used_at=now)
            )
        return bool(result.rowcount)

    async def rename_factor(self, uid: str, factor_id: str, kind: str, label: str) -> bool:
        """See :meth:`tokenward.passkeys.PasskeyStore.rename_factor`."""
        async with _backend(), self.engine.begin() as conn:
            result = await conn.execute(
                update(factors_table)
                .where(
                    factors_table.c.id == factor_id,
                    factors_table.c.user_id == uid,
                    factors_table.c.kind == kind,
                )
                .values(label=label)
            )
        return bool(result.rowcount)

    async def remove_factor(self, uid: str, factor_id: str, kind: str) -> bool:
        """See :meth:`tokenward.passkeys.PasskeyStore.remove_factor`."""
        async with _backend(), self.engine.begin() as conn:
            result = await conn.execute(
                delete(factors_table).where(
                    factors_table.c.id == factor_id,
                    factors_table.c.user_id == uid,
                    factors_table.c.kind == kind,
                )
            )
        return bool(result.rowcount)
