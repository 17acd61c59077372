"""Fixtures of the store tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenward.stores.sql_users import create_engine, upgrade


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A migrated user database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'users.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    eng = create_engine(url)
    await upgrade(eng)
    yield eng
    await eng.dispose()
