"""Operator mistakes get one line that says what to do, never a traceback or a wrong hint."""

from __future__ import annotations

from pathlib import Path

import pytest
from ops_support import RunCli, ops_env

from tokenward import Tokenward, load_settings
from tokenward.errors import ConfigError


async def test_an_empty_password_on_stdin_is_a_usage_error(run_cli: RunCli, tmp_path: Path) -> None:
    """0.1.0 answered "must be at least 12 characters" to a script that sent nothing."""
    result = await run_cli("users", "create", "a@example.com", env=ops_env(None, tmp_path / "d"))
    assert result.code == 2, result.err
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("tokenward: usage error: no password on standard input")
    assert "12 characters" not in result.err


async def test_an_unreachable_database_names_the_setting_and_host(
    run_cli: RunCli, tmp_path: Path
) -> None:
    env = ops_env(
        None,
        tmp_path / "d",
        database_url="postgresql+asyncpg://bob:pg-s3cret@127.0.0.1:9/accounts",
        backend_timeout="0.5",
    )
    for argv in (["users", "list"], ["db", "upgrade"]):
        result = await run_cli(*argv, env=env)
        assert result.code == 3, result.err
        last = result.err.strip().splitlines()[-1]
        assert last == (
            "tokenward: unavailable: user database unreachable: TOKENWARD_DATABASE_URL, "
            "host 127.0.0.1:9, database accounts"
        ), argv
        assert "pg-s3cret" not in result.err + result.out
        assert "Traceback" not in result.err


def test_embedding_without_an_issuer_says_which_setting(tmp_path: Path) -> None:
    """0.1.0: a 30-line traceback advising a private method; nothing may be written first."""
    data = tmp_path / "app-data"
    settings = load_settings({"TOKENWARD_DATA_DIR": str(data)}, env_file=tmp_path / "no.env")
    with pytest.raises(ConfigError) as caught:
        Tokenward(settings)
    assert caught.value.detail.startswith("TOKENWARD_ISSUER: required when Tokenward runs")
    assert "resolved()" not in caught.value.detail
    assert not data.exists()
