"""``repr(Settings)`` and ``str(Settings)`` never show a password of a back-end URL.

Settings end up in tracebacks (pydantic and pytest print locals), debug logs and bug
reports. Before the fix both showed ``redis_url`` and ``database_url`` in full.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenward.settings import load_settings, mask_url_password

SECRET = "hunter2-Secret"


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("TOKENWARD_REDIS_URL", f"redis://:{SECRET}@cache.internal:6379/0"),
        ("TOKENWARD_REDIS_URL", f"rediss://tokenward:{SECRET}@cache.internal:6380/1"),
        ("TOKENWARD_REDIS_URL", f"redis+sentinel://:{SECRET}@s1:26379,s2:26379/mymaster/0"),
        ("TOKENWARD_REDIS_URL", f"redis://cache.internal:6379/0?password={SECRET}"),
        ("TOKENWARD_DATABASE_URL", f"postgresql://tokenward:{SECRET}@db.internal/tokenward"),
        ("TOKENWARD_DATABASE_URL", f"postgresql+asyncpg://tw:{SECRET}@db/tw?sslmode=require"),
    ],
)
def test_repr_and_str_mask_url_passwords(tmp_path: Path, variable: str, url: str) -> None:
    settings = load_settings({variable: url}, env_file=tmp_path / "none.env")
    resolved = settings.resolved(host="127.0.0.1", port=8000)
    for shown in (repr(settings), str(settings), repr(resolved), f"{settings!r}", f"{settings}"):
        assert SECRET not in shown
        assert "***" in shown
    # The rest of the URL stays visible (what an operator debugging a connection needs) ...
    field = variable.removeprefix("TOKENWARD_").lower()
    value = getattr(settings, field)
    assert repr(mask_url_password(value)) in repr(settings)
    # ... and the value itself is untouched: only its display is masked.
    assert SECRET in value


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:pw@h", "redis://user:***@h"),
        ("redis://user@h", "redis://user@h"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:p@ss/w0rd@h/0", "redis://:***@h/0"),
        ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=***"),
        ("sqlite+aiosqlite:////var/lib/tw.db", "sqlite+aiosqlite:////var/lib/tw.db"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_password(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked
