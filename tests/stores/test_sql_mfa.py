"""The SQL factor store (migration 0004) on SQLite and PostgreSQL: pending and confirmed
factors, and recovery codes that work once even when used concurrently."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenward.mfa import Factor
from tokenward.stores.sql_mfa import SqlFactorStore

NOW = 1_800_000_000


def _factor(uid: str, **overrides: object) -> Factor:
    values: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "uid": uid,
        "kind": "totp",
        "label": "Authenticator app",
        "secret": b"\x01sealed",
        "created_at": NOW,
    }
    values.update(overrides)
    return Factor(**values)  # type: ignore[arg-type]


async def test_migration_creates_both_tables(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"tokenward_mfa_factors", "tokenward_mfa_recovery_codes"} <= names


async def test_pending_then_confirmed_once(engine: AsyncEngine) -> None:
    store = SqlFactorStore(engine)
    uid = uuid.uuid4().hex
    first, second = _factor(uid), _factor(uid)
    await store.put_pending(first)
    await store.put_pending(second)  # replaces the first pending one
    assert [f.id for f in await store.factors(uid)] == [second.id]
    results = await asyncio.gather(
        *(store.confirm(uid, second.id, codes=[f"d{i}"], now=NOW) for i in range(5))
    )
    assert sorted(results) == [False] * 4 + [True]
    (row,) = await store.factors(uid)
    assert row.confirmed_at == NOW
    assert bytes(row.secret) == b"\x01sealed"
    assert await store.recovery_left(uid) == 1
    assert not await store.add_confirmed(_factor(uid), codes=["x"], now=NOW)


async def test_recovery_codes_work_once_under_concurrency(engine: AsyncEngine) -> None:
    store = SqlFactorStore(engine)
    uid = uuid.uuid4().hex
    assert await store.add_confirmed(_factor(uid), codes=["a", "b", "c"], now=NOW)
    for digest in ("a", "b"):
        results = await asyncio.gather(
            *(store.use_recovery(uid, digest, now=NOW) for _ in range(6))
        )
        assert sorted(results) == [False] * 5 + [True]
    assert await store.recovery_left(uid) == 1
    assert not await store.use_recovery("someone-else", "c", now=NOW)
    await store.replace_recovery(uid, ["d", "e"], now=NOW)
    assert not await store.use_recovery(uid, "c", now=NOW)
    assert await store.recovery_left(uid) == 2
    assert await store.remove_all(uid) == 1
    assert await store.factors(uid) == []
    assert await store.recovery_left(uid) == 0


async def _user(engine: AsyncEngine) -> str:
    """A user row (the enrolment verbs lock it)."""
    from sqlalchemy import insert

    from tokenward.stores.sql_users import users_table

    uid = uuid.uuid4().hex
    async with engine.begin() as conn:
        await conn.execute(
            insert(users_table).values(
                id=uid, email=f"{uid}@example.com", email_key=f"{uid}@example.com",
                password_hash="x", created_at=NOW, updated_at=NOW,
            )
        )  # fmt: skip
    return uid


async def test_concurrent_enrolment_starts_leave_one_pending(engine: AsyncEngine) -> None:
    """Each start deletes the pending rows it sees and inserts its own; unserialized, two
    concurrent ones (PostgreSQL, READ COMMITTED) each see none and both insert: two pending
    secrets. Locked on the user's row, the later replaces the earlier."""
    store = SqlFactorStore(engine)
    uid = await _user(engine)
    factors = [_factor(uid) for _ in range(8)]
    await asyncio.gather(*(store.put_pending(f) for f in factors))
    rows = await store.factors(uid)
    assert len(rows) == 1
    assert rows[0].id in {f.id for f in factors}


async def test_concurrent_confirmations_add_one_active_factor(engine: AsyncEngine) -> None:
    """Two login challenges enrolling one user at once (``required``), and an account-page
    confirmation racing them: one active authenticator app, never two."""
    store = SqlFactorStore(engine)
    uid = await _user(engine)
    pending = _factor(uid)
    await store.put_pending(pending)
    results = await asyncio.gather(
        *(store.add_confirmed(_factor(uid, confirmed_at=NOW), codes=["x"], now=NOW)
          for _ in range(4)),
        store.confirm(uid, pending.id, codes=["y"], now=NOW),
    )  # fmt: skip
    assert sum(results) == 1
    active = [f for f in await store.factors(uid) if f.confirmed_at is not None]
    assert len(active) == 1
