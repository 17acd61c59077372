"""Credential writes on real SQLite and PostgreSQL: compare-and-swap and the credential epoch.

The race of issue 9 item 2: the argon2 cost was raised, so a login with the old password
rehashes it; a password change racing that login must win, always. Before the fix the
rehash wrote unconditionally, and the old password came back (3 of 4 runs by hand).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenward.errors import InvalidCredentials
from tokenward.password_policy import PasswordPolicy
from tokenward.passwords import CHEAP_FOR_TESTS, Argon2Params, PasswordHasher
from tokenward.stores.sql_users import SqlUserStore
from tokenward.users import User, Users

NOW = 1_800_000_000
OLD_PASSWORD = "violet tractor 42 umbrella"
NEW_PASSWORD = "violet tractor umbrella kettle"
#: the raised cost: dearer than CHEAP_FOR_TESTS, so a rehash takes a while
RAISED = Argon2Params(memory_kib=2048, time_cost=1, parallelism=1)
RACE_ROUNDS = 25
LOGINS_PER_ROUND = 4


@pytest.fixture
def store(engine: AsyncEngine) -> SqlUserStore:
    return SqlUserStore(engine)


def _email() -> str:
    return f"cas-{uuid.uuid4().hex[:12]}@example.com"


async def _old_cost_user(store: SqlUserStore, hasher: PasswordHasher) -> User:
    user = User(
        id=uuid.uuid4().hex,
        email=_email(),
        password_hash=await hasher.hash(OLD_PASSWORD),
        created_at=NOW,
    )
    await store.add(user)
    return user


async def _works(users: Users, email: str, password: str) -> bool:
    try:
        await users.authenticate(email, password, now=NOW)
    except InvalidCredentials:
        return False
    return True


async def test_compare_and_swap_applies_only_over_the_expected_hash(store: SqlUserStore) -> None:
    """A swap from a hash that is no longer stored changes nothing and says so."""
    user = await _old_cost_user(store, PasswordHasher(CHEAP_FOR_TESTS))
    assert not await store.set_password_hash(
        user.id, "$argon2id$x", expected_hash="$argon2id$other", bump_epoch=True, now=NOW
    )
    assert await store.by_id(user.id) == user
    assert await store.set_password_hash(
        user.id, "$argon2id$x", expected_hash=user.password_hash, bump_epoch=True, now=NOW
    )
    found = await store.by_id(user.id)
    assert found is not None
    assert (found.password_hash, found.credential_epoch) == ("$argon2id$x", 1)


async def test_rehash_keeps_the_epoch_disable_and_revoke_move_it(store: SqlUserStore) -> None:
    """Only changes that must lock out the old credentials move the epoch."""
    user = await _old_cost_user(store, PasswordHasher(CHEAP_FOR_TESTS))

    async def epoch() -> int:
        found = await store.by_id(user.id)
        assert found is not None
        return found.credential_epoch

    assert await store.set_password_hash(
        user.id, "$argon2id$r", expected_hash=user.password_hash, bump_epoch=False, now=NOW
    )
    assert await epoch() == 0
    assert await store.set_disabled(user.id, True, now=NOW)
    assert await epoch() == 1
    assert await store.set_disabled(user.id, False, now=NOW)
    assert await epoch() == 1
    assert await store.bump_credential_epoch(user.id, now=NOW)
    assert await epoch() == 2
    assert not await store.bump_credential_epoch(uuid.uuid4().hex, now=NOW)


async def test_concurrent_swaps_from_one_hash_exactly_one_applies(store: SqlUserStore) -> None:
    """Eight writers swap from the same hash at once, 10 rounds: one applies each round."""
    hasher = PasswordHasher(CHEAP_FOR_TESTS)
    for _ in range(10):
        user = await _old_cost_user(store, hasher)
        applied = await asyncio.gather(
            *(
                store.set_password_hash(
                    user.id,
                    f"$argon2id$writer{i}",
                    expected_hash=user.password_hash,
                    bump_epoch=True,
                    now=NOW,
                )
                for i in range(8)
            )
        )
        assert sum(applied) == 1, applied
        found = await store.by_id(user.id)
        assert found is not None
        assert found.password_hash == f"$argon2id$writer{applied.index(True)}"
        assert found.credential_epoch == 1


async def test_rehash_at_login_never_overwrites_a_password_change(store: SqlUserStore) -> None:
    """Issue 9 item 2. The cost was raised after the password was set; logins with the old
    password (each rehashes it) race a change to a new one, 25 rounds of 4 logins and one
    change started together. Afterwards the new password works and the old one does not,
    every round."""
    old_hasher = PasswordHasher(CHEAP_FOR_TESTS)
    users = Users(store, PasswordHasher(RAISED), PasswordPolicy())
    lost: list[int] = []
    for round_ in range(RACE_ROUNDS):
        user = await _old_cost_user(store, old_hasher)
        logins = [_works(users, user.email, OLD_PASSWORD) for _ in range(LOGINS_PER_ROUND)]
        change = users.change_password(user.id, OLD_PASSWORD, NEW_PASSWORD, now=NOW)
        await asyncio.gather(change, *logins)
        new_works = await _works(users, user.email, NEW_PASSWORD)
        old_works = await _works(users, user.email, OLD_PASSWORD)
        if old_works or not new_works:
            lost.append(round_)
    assert not lost, f"the change was overwritten in rounds {lost} of {RACE_ROUNDS}"
