"""Migration 0002 on a database created at revision 0001, on SQLite and PostgreSQL.

Before 0002 emails were only lower-cased, so accounts that fold to one address could exist
side by side (``strasse@`` and ``straße@``; ``σίσυφοσ@`` and ``σίσυφος@``). The migration
gives each account its case-folded ``email_key``; where several fold to one key the oldest
keeps it, the later ones get none (they cannot log in by email), one warning each is
logged, and ``tokenward users collisions`` lists them.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ops_support import OPS_PASSWORD, RunCli, ops_env
from sqlalchemy import make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenward.passwords import CHEAP_FOR_TESTS, PasswordHasher
from tokenward.stores.sql_users import MIGRATIONS, SqlUserStore, create_engine, upgrade
from tokenward.users import email_key


@pytest.fixture(params=["sqlite", "postgres"])
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database of its own (the session's PostgreSQL database is at
    the newest revision already, so PostgreSQL gets a new database for the test)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    base = make_url(request.getfixturevalue("postgres_url"))
    name = f"tw_mig_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.render_as_string(hide_password=False)).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def _upgrade_to(engine: AsyncEngine, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    def run(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def test_migration_0002_keys_the_oldest_and_lists_the_collisions(
    fresh_url: str,
    tmp_path: Path,
    redis_url: str,
    run_cli: RunCli,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two collisions among five accounts made at revision 0001: each oldest account keeps
    the key and logs in by any spelling; the later ones have no key, are each named in one
    warning and listed by ``users collisions``; a new registration of the address is 409."""
    tag = uuid.uuid4().hex[:8]
    password_hash = await PasswordHasher(CHEAP_FOR_TESTS).hash(OPS_PASSWORD)
    # (id, email as the old code stored it: NFKC + lower(), created_at)
    rows = [
        ("a" * 32, f"strasse-{tag}@example.com", 100),  # from STRASSE-... or strasse-...
        ("b" * 32, f"straße-{tag}@example.com", 200),  # folds onto a: no key
        ("c" * 32, f"σίσυφοσ-{tag}@example.gr", 150),  # medial sigma typed last
        ("d" * 32, f"σίσυφος-{tag}@example.gr", 300),  # from ΣΊΣΥΦΟΣ-...: folds onto c
        ("e" * 32, f"someone-{tag}@example.com", 50),
    ]
    engine = create_engine(fresh_url)
    try:
        await _upgrade_to(engine, "0001")
        async with engine.begin() as conn:
            for uid, email, created in rows:
                await conn.execute(
                    text(
                        "INSERT INTO tokenward_users (id, email, password_hash, created_at, "
                        "updated_at) VALUES (:id, :email, :hash, :created, :created)"
                    ),
                    {"id": uid, "email": email, "hash": password_hash, "created": created},
                )
        with caplog.at_level(logging.WARNING, logger="tokenward.migrations"):
            await upgrade(engine)
        warnings = [r.getMessage() for r in caplog.records if r.name == "tokenward.migrations"]
        assert len(warnings) == 2, warnings
        assert warnings[0].startswith(
            f"user {'b' * 32} folds to the email key of the older user {'a' * 32}"
        )
        assert warnings[1].startswith(
            f"user {'d' * 32} folds to the email key of the older user {'c' * 32}"
        )
        assert not any(tag in w for w in warnings), "warnings name users by id, not address"

        async with engine.connect() as conn:
            keys = dict(
                (await conn.execute(text("SELECT id, email_key FROM tokenward_users"))).all()
            )
            epochs = {
                e
                for (e,) in await conn.execute(text("SELECT credential_epoch FROM tokenward_users"))
            }
        assert keys == {
            "a" * 32: f"strasse-{tag}@example.com",
            "b" * 32: None,
            "c" * 32: email_key(f"σίσυφοσ-{tag}@example.gr"),
            "d" * 32: None,
            "e" * 32: f"someone-{tag}@example.com",
        }
        assert epochs == {0}
        store = SqlUserStore(engine)
        for spelling, holder in [
            (f"STRASSE-{tag}@example.com", "a"),
            (f"straße-{tag}@example.com", "a"),
            (f"ΣΊΣΥΦΟΣ-{tag}@example.gr", "c"),
            (f"σίσυφος-{tag}@example.gr", "c"),
        ]:
            found = await store.by_email(spelling)
            assert found is not None
            assert found.id == holder * 32, spelling
        assert [u.id for u in await store.without_email_key()] == ["b" * 32, "d" * 32]
    finally:
        await engine.dispose()

    env = ops_env(redis_url, tmp_path / "data", database_url=fresh_url)
    listed = await run_cli("users", "collisions", "--json", env=env)
    assert listed.code == 0, listed.err
    found = json.loads(listed.out)
    assert [(c["id"], c["key_held_by"]["id"]) for c in found] == [
        ("b" * 32, "a" * 32),
        ("d" * 32, "c" * 32),
    ]
    table = await run_cli("users", "collisions", env=env)
    assert table.code == 0, table.err
    assert "b" * 32 in table.out
    assert "a" * 32 in table.out
    again = await run_cli(
        "users", "create", f"STRASSE-{tag}@example.com", env=env, stdin=OPS_PASSWORD + "\n"
    )
    assert again.code == 1, again.out
    assert "already exists" in again.err
