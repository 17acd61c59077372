"""The SQL user store on real SQLite and PostgreSQL, and the user rules over it.

Every test runs on both back ends. The PostgreSQL database is shared by the whole session,
so tests use fresh random emails instead of emptying tables.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenward.errors import Conflict, InvalidCredentials, PolicyError
from tokenward.password_policy import PasswordPolicy
from tokenward.passwords import CHEAP_FOR_TESTS, Argon2Params, PasswordHasher
from tokenward.stores.sql_users import SqlUserStore, upgrade
from tokenward.users import User, Users

NOW = 1_800_000_000
PASSWORD = "violet tractor 42 umbrella"


@pytest.fixture
def store(engine: AsyncEngine) -> SqlUserStore:
    return SqlUserStore(engine)


@pytest.fixture
def users(store: SqlUserStore) -> Users:
    return Users(store, PasswordHasher(CHEAP_FOR_TESTS), PasswordPolicy())


def _email() -> str:
    return f"u-{uuid.uuid4().hex[:12]}@example.com"


def _user(email: str | None = None, **overrides: object) -> User:
    fields: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "email": email or _email(),
        "password_hash": "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        "created_at": NOW,
    }
    fields.update(overrides)
    return User(**fields)  # type: ignore[arg-type]


async def test_add_then_find_by_email_and_id(store: SqlUserStore) -> None:
    """A stored user is found by email and by id, all fields intact."""
    user = _user()
    await store.add(user)
    assert await store.by_email(user.email) == user
    assert await store.by_id(user.id) == user


async def test_unknown_user_is_none(store: SqlUserStore) -> None:
    """Lookups of unknown users return None (no exception)."""
    assert await store.by_email(_email()) is None
    assert await store.by_id(uuid.uuid4().hex) is None


async def test_same_email_twice_is_a_conflict(store: SqlUserStore) -> None:
    """The unique index refuses a second user with the same email."""
    user = _user()
    await store.add(user)
    with pytest.raises(Conflict):
        await store.add(_user(user.email))
    assert await store.by_email(user.email) == user


async def test_concurrent_registrations_one_wins(users: Users) -> None:
    """Eight simultaneous registrations of one email: exactly one account, seven 409s."""
    email = _email()
    results = await asyncio.gather(
        *(users.register(email, PASSWORD, now=NOW) for _ in range(8)), return_exceptions=True
    )
    created = [r for r in results if isinstance(r, User)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(created) == 1, results
    assert len(conflicts) == 7, results
    found = await users.store.by_email(email)
    assert found is not None
    assert found.id == created[0].id


async def test_set_password_hash_replaces_it(store: SqlUserStore, engine: AsyncEngine) -> None:
    """set_password_hash stores the new hash and moves updated_at."""
    user = _user()
    await store.add(user)
    assert await store.set_password_hash(
        user.id, "$argon2id$new", expected_hash=user.password_hash, bump_epoch=False, now=NOW + 5
    )
    found = await store.by_id(user.id)
    assert found is not None
    assert found.password_hash == "$argon2id$new"
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT updated_at FROM tokenward_users WHERE id = :id"), {"id": user.id}
            )
        ).one()
    assert row.updated_at == NOW + 5


async def test_disabled_user_cannot_log_in(store: SqlUserStore, users: Users) -> None:
    """set_disabled marks the account, and its owner is then refused like a wrong password."""
    user = await users.register(_email(), PASSWORD, now=NOW)
    assert await store.set_disabled(user.id, True, now=NOW) is True
    found = await store.by_id(user.id)
    assert found is not None
    assert found.disabled
    with pytest.raises(InvalidCredentials):
        await users.authenticate(user.email, PASSWORD, now=NOW)
    assert await store.set_disabled(user.id, False, now=NOW) is True
    assert (await users.authenticate(user.email, PASSWORD, now=NOW)).id == user.id


async def test_set_disabled_of_unknown_user_is_false(store: SqlUserStore) -> None:
    """Disabling nobody reports False."""
    assert await store.set_disabled(uuid.uuid4().hex, True, now=NOW) is False


async def test_migrations_are_idempotent(engine: AsyncEngine) -> None:
    """Running the migrations again changes nothing and breaks nothing."""
    await upgrade(engine)
    await upgrade(engine)
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("tokenward_users"))
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert "tokenward_users" in tables
    assert any(ix["unique"] and ix["column_names"] == ["email"] for ix in indexes)
    assert len(versions) == 1


async def test_emails_are_normalised_and_unique_case_insensitively(users: Users) -> None:
    """Alice@X and alice@x are one account: stored lower-cased, the second is a conflict."""
    local = uuid.uuid4().hex[:8]
    user = await users.register(f"  Alice-{local}@Example.COM ", PASSWORD, now=NOW)
    assert user.email == f"alice-{local}@example.com"
    with pytest.raises(Conflict):
        await users.register(f"alice-{local}@example.com", PASSWORD, now=NOW)
    found = await users.authenticate(f"ALICE-{local}@EXAMPLE.com", PASSWORD, now=NOW)
    assert found.id == user.id


@pytest.mark.parametrize("bad", ["", "no-at-sign", "a@b", "two@@example.com", "sp ace@x.com"])
async def test_invalid_emails_are_refused(users: Users, bad: str) -> None:
    """Registration refuses what is not an email address (422 validation)."""
    with pytest.raises(PolicyError):
        await users.register(bad, PASSWORD, now=NOW)


async def test_stored_hash_is_argon2id_not_the_password(users: Users, engine: AsyncEngine) -> None:
    """The database row holds an argon2id hash and never the password."""
    user = await users.register(_email(), PASSWORD, now=NOW)
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT password_hash FROM tokenward_users WHERE id = :id"), {"id": user.id}
            )
        ).scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


async def test_hash_is_upgraded_at_login_when_parameters_change(
    store: SqlUserStore, users: Users
) -> None:
    """After the cost parameters change, the next successful login rehashes with them."""
    user = await users.register(_email(), PASSWORD, now=NOW)
    assert "m=64,t=1,p=1" in user.password_hash
    stronger = Users(store, PasswordHasher(Argon2Params(128, 2, 1)), PasswordPolicy())
    await stronger.authenticate(user.email, PASSWORD, now=NOW + 1)
    found = await store.by_id(user.id)
    assert found is not None
    assert "m=128,t=2,p=1" in found.password_hash
    assert (await stronger.authenticate(user.email, PASSWORD, now=NOW + 2)).id == user.id


async def test_wrong_password_does_not_rehash(store: SqlUserStore, users: Users) -> None:
    """A failed login never writes a hash."""
    user = await users.register(_email(), PASSWORD, now=NOW)
    stronger = Users(store, PasswordHasher(Argon2Params(128, 2, 1)), PasswordPolicy())
    with pytest.raises(InvalidCredentials):
        await stronger.authenticate(user.email, PASSWORD + "!", now=NOW + 1)
    found = await store.by_id(user.id)
    assert found is not None
    assert found.password_hash == user.password_hash


async def test_list_orders_by_creation(store: SqlUserStore) -> None:
    """list() pages users by creation time."""
    marker = NOW + 10_000_000 + int(uuid.uuid4().int % 1_000_000) * 10
    a, b = _user(created_at=marker), _user(created_at=marker + 1)
    await store.add(b)
    await store.add(a)
    listed = [u.id for u in await store.list(limit=100_000) if u.id in (a.id, b.id)]
    assert listed == [a.id, b.id]


async def test_email_verified_is_set_only_for_the_current_address(store: SqlUserStore) -> None:
    user = _user()
    await store.add(user)
    assert (await store.by_id(user.id)).email_verified is False  # type: ignore[union-attr]
    assert not await store.set_email_verified(user.id, _email(), now=NOW)
    assert (await store.by_id(user.id)).email_verified is False  # type: ignore[union-attr]
    assert await store.set_email_verified(user.id, user.email, now=NOW)
    assert (await store.by_id(user.id)).email_verified is True  # type: ignore[union-attr]


async def test_set_email_is_a_compare_and_swap_and_refuses_a_taken_key(
    store: SqlUserStore,
) -> None:
    user, other = _user(), _user()
    await store.add(user)
    await store.add(other)
    new = _email()
    assert not await store.set_email(user.id, new, expected_email=_email(), now=NOW)
    with pytest.raises(Conflict):
        await store.set_email(user.id, other.email.upper(), expected_email=user.email, now=NOW)
    assert await store.set_email(user.id, new, expected_email=user.email, now=NOW)
    moved = await store.by_email(new.upper())
    assert moved is not None
    assert (moved.id, moved.email, moved.email_verified) == (user.id, new, True)
    assert await store.by_email(user.email) is None


async def test_two_resets_from_one_hash_exactly_one_applies(
    store: SqlUserStore, users: Users
) -> None:
    """``Users.reset_password`` is a compare-and-swap on the hash it was given the user
    with: of two concurrent resets, one wins, the other is refused."""
    from tokenward.errors import Forbidden

    user = await users.register(_email(), PASSWORD, now=NOW)
    results = await asyncio.gather(
        users.reset_password(user, "first new 42 passphrase", now=NOW),
        users.reset_password(user, "second new 42 passphrase", now=NOW),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Forbidden", "User"]
    assert any(isinstance(r, Forbidden) for r in results)
    stored = await store.by_id(user.id)
    assert stored is not None
    assert stored.credential_epoch == user.credential_epoch + 1
