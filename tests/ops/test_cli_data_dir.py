"""The CLI finds the right deployment and never leaves an admin operation half done.

An operator ran ``tokenward users disable`` from another directory: it silently made a second,
empty data directory, answered "no user", and the real user stayed signed in. And ``users
disable`` with Redis down marked the user disabled, exited 3, and left their session
refreshing. These tests hold the CLI to: name what it uses, refuse a missing data directory
unless asked, and order its steps so a failure changes nothing unsafe and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from ops_support import OPS_PASSWORD, MakeOpsTw, RunCli, ops_client, ops_env, register_and_login

import tokenward

DEAD_REDIS = "redis://:s3cret-pass@127.0.0.1:9/0"


async def test_a_missing_data_directory_is_refused_not_created(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """Run from the wrong place: exit 2 with one line naming the directory, nothing made."""
    missing = tmp_path / "elsewhere" / ".tokenward"
    env = ops_env(None, missing)
    for argv in (
        ["users", "disable", "someone@example.com"],
        ["users", "list"],
        ["sessions", "revoke", "--user", "someone@example.com"],
        ["db", "upgrade"],
        ["keys", "list"],
    ):
        result = await run_cli(*argv, env=env, make_data_dir=False)
        assert result.code == 2, (argv, result.err)
        assert f"no data directory at {missing}" in result.err
        assert "--data-dir" in result.err
        assert len(result.err.strip().splitlines()) == 1, result.err
        assert not missing.exists()
        assert not missing.parent.exists()


async def test_create_data_dir_makes_a_new_deployment_when_asked(
    run_cli: RunCli, tmp_path: Path
) -> None:
    new = tmp_path / "fresh"
    env = ops_env(None, new)
    result = await run_cli("users", "list", "--create-data-dir", env=env, make_data_dir=False)
    assert result.code == 0, result.err
    assert new.is_dir()


async def test_data_dir_option_points_at_the_deployment(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str, tmp_path: Path
) -> None:
    """--data-dir wins over TOKENWARD_DATA_DIR; every command says what it uses."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        await register_and_login(client, "dir@example.com")
    data = tw.settings.data_dir.resolve()
    env = ops_env(redis_url, tmp_path / "wrong")
    listed = await run_cli(
        "users", "list", "--json", "--data-dir", str(data), env=env, make_data_dir=False
    )
    assert listed.code == 0, listed.err
    assert [u["email"] for u in json.loads(listed.out)] == ["dir@example.com"]
    assert f"tokenward: using data directory {data}; users sqlite+aiosqlite:///{data}/" in (
        listed.err
    )
    assert f"sessions {redis_url}" in listed.err
    assert not (tmp_path / "wrong").exists()


async def test_the_using_line_never_shows_a_password(run_cli: RunCli, tmp_path: Path) -> None:
    env = ops_env(DEAD_REDIS, tmp_path / "d", backend_timeout="0.3")
    result = await run_cli("sessions", "list", "--user", "x@example.com", env=env)
    assert "using data directory" in result.err
    assert "s3cret-pass" not in result.err + result.out
    assert "redis://:***@127.0.0.1:9/0" in result.err


async def test_version(run_cli: RunCli, tmp_path: Path) -> None:
    result = await run_cli("--version", env={})
    assert result.code == 0
    assert result.out.strip() == f"tokenward {tokenward.__version__}"


async def test_disable_with_redis_down_changes_nothing_and_a_rerun_completes_it(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str
) -> None:
    """Redis unreachable from the CLI: exit 3, the account is not half disabled and the
    message says nothing changed; the re-run disables it and ends the session."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        login = await register_and_login(client, "half@example.com")
        auth = {"Authorization": f"Bearer {login['access_token']}"}
        data = tw.settings.data_dir
        down = ops_env(DEAD_REDIS, data, backend_timeout="0.3")
        failed = await run_cli("users", "disable", "half@example.com", env=down)
        assert failed.code == 3, failed.err
        assert "nothing was changed" in failed.err
        assert "s3cret-pass" not in failed.err
        user = await tw.user_store.by_email("half@example.com")
        assert user is not None
        assert not user.disabled  # 0.1.0 had disabled it and left the session alive
        assert (await client.get("/auth/me", headers=auth)).status_code == 200

        done = await run_cli("users", "disable", "half@example.com", env=ops_env(redis_url, data))
        assert done.code == 0, done.err
        user = await tw.user_store.by_email("half@example.com")
        assert user is not None
        assert user.disabled
        assert await tw.session_store.list(user.id, now=tw.clock.now()) == []
        refused = await client.post(
            "/auth/login", json={"email": "half@example.com", "password": OPS_PASSWORD}
        )
        assert refused.status_code == 401
