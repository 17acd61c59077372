"""Secrets at rest: the data directory is 0700 and the SQLite user database 0600.

Before the fix a data directory that already existed kept its mode (``mkdir`` with
``exist_ok`` changes nothing), and SQLite created ``tokenward.db`` with the umask's mode:
with the usual umask 022, password hashes readable by every local user. The tests pin the
umask to 022 (restored after), start a real Tokenward on the real Redis, and look.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward, default_database_url
from tokenward.settings import load_settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def _start(env: dict[str, str], tmp_path: Path) -> Tokenward:
    settings = load_settings(env, env_file=tmp_path / "none.env")
    tw = Tokenward(settings, argon2=CHEAP_FOR_TESTS)
    await tw.start()
    return tw


@pytest.mark.usefixtures("usual_umask")
async def test_loose_data_dir_and_sqlite_file_become_private(
    redis_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # made by an operator or an image, before Tokenward ever ran
    tw = await _start(
        {
            "TOKENWARD_REDIS_URL": redis_url,
            "TOKENWARD_DATA_DIR": str(data),
            "TOKENWARD_ISSUER": "https://tokenward.test",
        },
        tmp_path,
    )
    try:
        await tw.users.register("perm@example.com", "violet tractor 42 umbrella", now=1)
    finally:
        await tw.stop()
    assert mode(data) == 0o700
    database = data / "tokenward.db"
    assert database.stat().st_size > 0, "the schema was written into the pre-created file"
    assert mode(database) == 0o600
    loose = {p.name: oct(mode(p)) for p in data.rglob("*") if mode(p) & 0o077}
    assert loose == {}, f"readable by others: {loose}"


@pytest.mark.usefixtures("usual_umask")
async def test_an_existing_world_readable_database_is_tightened(
    redis_url: str, tmp_path: Path
) -> None:
    """A database an older version created 0644 is made 0600 at the next start."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    database = data / "tokenward.db"
    database.touch()
    database.chmod(0o644)
    tw = await _start(
        {
            "TOKENWARD_REDIS_URL": redis_url,
            "TOKENWARD_DATA_DIR": str(data),
            "TOKENWARD_ISSUER": "https://tokenward.test",
        },
        tmp_path,
    )
    await tw.stop()
    assert mode(database) == 0o600


@pytest.mark.usefixtures("usual_umask")
async def test_configured_sqlite_file_is_created_private(redis_url: str, tmp_path: Path) -> None:
    """``TOKENWARD_DATABASE_URL=sqlite+aiosqlite:///...``: the file is 0600 too (its
    directory is the operator's and keeps its mode)."""
    shared = tmp_path / "srv"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    database = shared / "users.db"
    tw = await _start(
        {
            "TOKENWARD_REDIS_URL": redis_url,
            "TOKENWARD_DATA_DIR": str(tmp_path / "data"),
            "TOKENWARD_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "TOKENWARD_ISSUER": "https://tokenward.test",
        },
        tmp_path,
    )
    await tw.stop()
    assert mode(database) == 0o600
    assert mode(shared) == 0o755


@pytest.mark.usefixtures("usual_umask")
def test_default_database_url_prepares_the_file_for_every_caller(tmp_path: Path) -> None:
    """``tokenward serve`` migrates in its supervising process and ``tokenward db`` runs
    alone: both get the URL here, so the file exists 0600 before SQLite opens it."""
    data = tmp_path / "fresh" / "data"
    url = default_database_url(data)
    assert url.endswith("/tokenward.db")
    assert mode(data) == 0o700
    assert mode(data / "tokenward.db") == 0o600
