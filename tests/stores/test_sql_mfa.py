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


def _passkey(uid: str, credential_id: str, **overrides: object) -> Factor:
    return _factor(
        uid,
        kind="passkey",
        label="Laptop",
        secret=b'{"pk":"x"}',
        confirmed_at=NOW,
        credential_id=credential_id,
        **overrides,
    )


async def test_passkeys_unique_credential_ids_and_a_limit(engine: AsyncEngine) -> None:
    store = SqlFactorStore(engine)
    ann, bob = uuid.uuid4().hex, uuid.uuid4().hex
    cred = uuid.uuid4().hex
    assert await store.add_passkey(_passkey(ann, cred, sign_count=3), limit=2) == "ok"
    # The same authenticator credential, for anyone: refused by the unique index.
    assert await store.add_passkey(_passkey(bob, cred), limit=2) == "exists"
    assert await store.add_passkey(_passkey(ann, uuid.uuid4().hex), limit=2) == "ok"
    assert await store.add_passkey(_passkey(ann, uuid.uuid4().hex), limit=2) == "limit"
    found = await store.by_credential(cred)
    assert found is not None
    assert (found.uid, found.kind, found.sign_count) == (ann, "passkey", 3)
    assert await store.by_credential("unknown") is None
    assert not await store.rename_factor(bob, found.id, "passkey", "Bob's")  # not bob's
    assert await store.rename_factor(ann, found.id, "passkey", "Phone")
    assert [f.label for f in await store.factors(ann) if f.id == found.id] == ["Phone"]
    assert not await store.remove_factor(bob, found.id, "passkey")  # not bob's
    assert not await store.remove_factor(ann, found.id, "totp")  # not of that kind
    assert await store.remove_factor(ann, found.id, "passkey")
    assert await store.by_credential(cred) is None


async def test_concurrent_passkey_registrations_stay_within_the_limit(
    engine: AsyncEngine,
) -> None:
    """Each registration counts the user's passkeys and then inserts; unserialized,
    concurrent ones (PostgreSQL, READ COMMITTED) all count below the limit and all insert.
    Locked on the user's row, exactly ``limit`` of them are added, whatever the rounds."""
    store = SqlFactorStore(engine)
    limit = 3
    for _ in range(5):
        uid = await _user(engine)
        assert await store.add_passkey(_passkey(uid, uuid.uuid4().hex), limit=limit) == "ok"
        results = await asyncio.gather(
            *(store.add_passkey(_passkey(uid, uuid.uuid4().hex), limit=limit) for _ in range(10))
        )
        assert sorted(results) == ["limit"] * (11 - limit) + ["ok"] * (limit - 1)
        assert len(await store.factors(uid)) == limit


async def test_a_passkey_counter_moves_forward_once(engine: AsyncEngine) -> None:
    store = SqlFactorStore(engine)
    uid = uuid.uuid4().hex
    key = _passkey(uid, uuid.uuid4().hex, sign_count=5)
    assert await store.add_passkey(key, limit=20) == "ok"
    assert not await store.use_passkey(key.id, 5, now=NOW)  # not greater
    assert not await store.use_passkey(key.id, 0, now=NOW)  # went back to zero
    results = await asyncio.gather(*(store.use_passkey(key.id, 9, now=NOW + 1) for _ in range(5)))
    assert sorted(results) == [False] * 4 + [True]
    (row,) = await store.factors(uid)
    assert (row.sign_count, row.last_used_at) == (9, NOW + 1)
    # An authenticator that counts nothing: zero stays usable.
    still = _passkey(uid, uuid.uuid4().hex)
    assert await store.add_passkey(still, limit=20) == "ok"
    assert await store.use_passkey(still.id, 0, now=NOW)
    assert await store.use_passkey(still.id, 0, now=NOW)


async def test_removing_the_app_keeps_the_passkeys(engine: AsyncEngine) -> None:
    store = SqlFactorStore(engine)
    uid = uuid.uuid4().hex
    assert await store.add_confirmed(_factor(uid, confirmed_at=NOW), codes=["a"], now=NOW)
    assert await store.add_passkey(_passkey(uid, uuid.uuid4().hex), limit=20) == "ok"
    assert await store.remove_kind(uid, "totp", codes=True) == 1
    assert [f.kind for f in await store.factors(uid)] == ["passkey"]
    assert await store.recovery_left(uid) == 0
    assert await store.remove_all(uid) == 1


async def test_the_user_read_at_login_says_whether_a_second_factor_is_confirmed(
    engine: AsyncEngine,
) -> None:
    """``by_email`` (the login's read) carries ``has_second_factor``: not for a pending
    factor, yes once one is confirmed (an app or a passkey), no again once they are
    removed; the other reads do not look (``None``)."""
    from tokenward.stores.sql_users import SqlUserStore

    users, factors = SqlUserStore(engine), SqlFactorStore(engine)
    uid = await _user(engine)
    email = f"{uid}@example.com"

    async def flag() -> bool | None:
        user = await users.by_email(email)
        assert user is not None
        return user.has_second_factor

    assert await flag() is False
    pending = _factor(uid)
    await factors.put_pending(pending)
    assert await flag() is False
    assert await factors.confirm(uid, pending.id, codes=["c"], now=NOW)
    assert await flag() is True
    assert (await users.by_id(uid)).has_second_factor is None  # type: ignore[union-attr]
    assert await factors.remove_all(uid) == 1
    assert await flag() is False
    assert await factors.add_passkey(_passkey(uid, "cred-login-flag"), limit=5) == "ok"
    assert await flag() is True
