"""The administrative CLI: users, sessions, db; exit codes; the embedded Redis of a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from ops_support import (
    OPS_PASSWORD,
    MakeOpsTw,
    RunCli,
    ops_client,
    ops_env,
    register_and_login,
)

from tokenward.admin import ADMIN_CLIENT, running_embedded_redis
from tokenward.clock import FrozenClock
from tokenward.events import EventKind
from tokenward.stores.embedded_redis import EmbeddedRedis
from waiting import apoll_until


async def _refused_within(client: httpx.AsyncClient, auth: dict[str, str]) -> bool:
    """Whether /auth/me refuses within a second: the CLI is another instance, and the
    contract lets other instances learn of an ended session within one second."""

    async def refused() -> bool:
        return (await client.get("/auth/me", headers=auth)).status_code == 401

    return await apoll_until(refused, within=1.5)


async def test_users_create_reads_the_password_from_stdin(
    run_cli: RunCli, redis_url: str, tmp_path: Path
) -> None:
    """users create: password from stdin (never argv); the user can then log in."""
    env = ops_env(redis_url, tmp_path / "d")
    created = await run_cli(
        "users", "create", "Admin@Example.com", "--json", env=env, stdin=OPS_PASSWORD + "\n"
    )
    assert created.code == 0, created.err
    user = json.loads(created.out)
    assert user["email"] == "admin@example.com"
    assert user["disabled"] is False
    assert OPS_PASSWORD not in created.out + created.err
    listed = await run_cli("users", "list", "--json", env=env)
    assert [u["id"] for u in json.loads(listed.out)] == [user["id"]]


async def test_users_create_errors_exit_1_without_echoing_the_password(
    run_cli: RunCli, redis_url: str, tmp_path: Path
) -> None:
    """A refused password or a taken email exits 1 with a one-line reason."""
    env = ops_env(redis_url, tmp_path / "d")
    weak = await run_cli("users", "create", "a@example.com", env=env, stdin="hunter2\n")
    assert weak.code == 1
    assert "hunter2" not in weak.err
    assert weak.err.strip()
    ok = await run_cli("users", "create", "a@example.com", env=env, stdin=OPS_PASSWORD)
    assert ok.code == 0
    taken = await run_cli("users", "create", "a@example.com", env=env, stdin=OPS_PASSWORD)
    assert taken.code == 1
    assert "already exists" in taken.err


async def test_disabling_a_user_ends_their_sessions_at_once(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str
) -> None:
    """users disable: a running server refuses the user's access token on the next request,
    and their next login."""
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        login = await register_and_login(client, "mallory@example.com")
        auth = {"Authorization": f"Bearer {login['access_token']}"}
        assert (await client.get("/auth/me", headers=auth)).status_code == 200

        env = ops_env(redis_url, tw.settings.data_dir)
        result = await run_cli("users", "disable", "mallory@example.com", "--json", env=env)
        assert result.code == 0, result.err
        body = json.loads(result.out)
        assert body["sessions_ended"] == [login["session"]["id"]]
        assert body["user"]["disabled"] is True

        assert await _refused_within(client, auth)
        again = await client.post(
            "/auth/login", json={"email": "mallory@example.com", "password": OPS_PASSWORD}
        )
        assert again.status_code == 401
        ended = await tw.session_store.ended(login["user"]["id"])
        assert ended[0][:2] == (login["session"]["id"], "user-disabled")

        enabled = await run_cli("users", "enable", login["user"]["id"], env=env)
        assert enabled.code == 0, enabled.err
        back = await client.post(
            "/auth/login", json={"email": "mallory@example.com", "password": OPS_PASSWORD}
        )
        assert back.status_code == 200


async def test_sessions_list_and_revoke(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str
) -> None:
    """sessions list shows a user's sessions; revoke --session ends one, revoke ends all."""
    tw = await make_ops_tw()
    env = ops_env(redis_url, tw.settings.data_dir)
    async with ops_client(tw) as client:
        first = await register_and_login(client, "s@example.com")
        clock = tw.clock
        assert isinstance(clock, FrozenClock)
        clock.advance(1)  # the listing is most recently used first
        r = await client.post(
            "/auth/login",
            json={"email": "s@example.com", "password": OPS_PASSWORD},
            headers={"X-Auth-Transport": "bearer", "User-Agent": "second-device"},
        )
        second = r.json()
        listed = await run_cli("sessions", "list", "--user", "s@example.com", "--json", env=env)
        assert listed.code == 0, listed.err
        sessions = json.loads(listed.out)["sessions"]
        assert {s["id"] for s in sessions} == {first["session"]["id"], second["session"]["id"]}
        assert sessions[0]["user_agent"] == "second-device"

        one = await run_cli(
            "sessions", "revoke", "--user", "s@example.com",
            "--session", first["session"]["id"], env=env,
        )  # fmt: skip
        assert one.code == 0, one.err
        first_auth = {"Authorization": f"Bearer {first['access_token']}"}
        second_auth = {"Authorization": f"Bearer {second['access_token']}"}
        assert await _refused_within(client, first_auth)
        assert (await client.get("/auth/me", headers=second_auth)).status_code == 200

        # A re-run (say after a 503) is idempotent: the session stays ended, exit 0.
        again = await run_cli(
            "sessions", "revoke", "--user", "s@example.com",
            "--session", first["session"]["id"], env=env,
        )  # fmt: skip
        assert again.code == 0, again.err
        assert await _refused_within(client, first_auth)
        unknown = await run_cli(
            "sessions", "revoke", "--user", "s@example.com", "--session", "no-such-sid", env=env
        )
        assert unknown.code == 1
        assert "no such session" in unknown.err

        everything = await run_cli(
            "sessions", "revoke", "--user", first["user"]["id"], "--json", env=env
        )
        assert json.loads(everything.out) == {"sessions_ended": [second["session"]["id"]]}
        assert await _refused_within(client, second_auth)


async def test_operator_actions_are_recorded_as_security_events(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str
) -> None:
    """sessions revoke and users disable leave a sessions.ended event in the user's stream
    (written before the CLI exits), naming the cause and the CLI as the client."""
    tw = await make_ops_tw()
    env = ops_env(redis_url, tw.settings.data_dir)
    async with ops_client(tw) as client:
        first = await register_and_login(client, "ev@example.com")
        second = await client.post(
            "/auth/login",
            json={"email": "ev@example.com", "password": OPS_PASSWORD},
            headers={"X-Auth-Transport": "bearer"},
        )
        assert second.status_code == 200
    uid, sid = first["user"]["id"], first["session"]["id"]
    revoked = await run_cli("sessions", "revoke", "--user", uid, "--session", sid, env=env)
    assert revoked.code == 0, revoked.err
    disabled = await run_cli("users", "disable", "ev@example.com", env=env)
    assert disabled.code == 0, disabled.err

    events = await tw.event_log.for_user(uid, now=int(time.time()))
    ended = [e for e in events if e.kind is EventKind.SESSIONS_ENDED]
    assert [(e.detail, e.sid) for e in ended] == [
        ({"reason": "user-disabled", "count": 1}, second.json()["session"]["id"]),
        ({"reason": "revoked", "count": 1}, sid),
    ]
    assert {(e.ip, e.user_agent) for e in ended} == {ADMIN_CLIENT}


async def test_unknown_user_exits_1(run_cli: RunCli, redis_url: str, tmp_path: Path) -> None:
    """Naming a user that does not exist is an operation failure (1), for every command."""
    env = ops_env(redis_url, tmp_path / "d")
    for args in (
        ("users", "disable", "ghost@example.com"),
        ("users", "enable", "0" * 32),
        ("sessions", "list", "--user", "ghost@example.com"),
        ("sessions", "revoke", "--user", "not an email"),
    ):
        result = await run_cli(*args, env=env)
        assert result.code == 1, args
        assert "no user" in result.err


async def test_db_upgrade_reports_the_revision(run_cli: RunCli, tmp_path: Path) -> None:
    """db upgrade creates the schema (SQLite in the data dir) and is idempotent."""
    env = ops_env(None, tmp_path / "d")
    for _ in range(2):
        result = await run_cli("db", "upgrade", "--json", env=env)
        assert result.code == 0, result.err
        assert json.loads(result.out)["revision"]
    assert (tmp_path / "d" / "tokenward.db").is_file()


async def test_db_upgrade_on_postgres(run_cli: RunCli, postgres_url: str, tmp_path: Path) -> None:
    """db upgrade works on PostgreSQL too."""
    env = ops_env(None, tmp_path / "d", database_url=postgres_url)
    result = await run_cli("db", "upgrade", env=env)
    assert result.code == 0, result.err
    assert "revision" in result.out


async def test_exit_codes_for_usage_config_and_unavailable(run_cli: RunCli, tmp_path: Path) -> None:
    """2 for usage and configuration errors, 3 when a back end does not answer."""
    env = ops_env(None, tmp_path / "d")
    assert (await run_cli("users", env=env)).code == 2
    assert (await run_cli("users", "list", "--limit", "0", env=env)).code == 2
    assert (await run_cli("users", "list", env={**env, "TOKENWARD_ACCESS_TTL": "0"})).code == 2
    bad = await run_cli("users", "list", env={**env, "TOKENWARD_NOPE": "1"})
    assert bad.code == 2
    assert "TOKENWARD_NOPE" in bad.err
    down = {
        **env,
        "TOKENWARD_REDIS_URL": "redis://127.0.0.1:9/0",
        "TOKENWARD_BACKEND_TIMEOUT": "0.5",
    }
    # The user database answers, so creating a user works; listing sessions needs Redis.
    created = await run_cli("users", "create", "x@example.com", env=down, stdin=OPS_PASSWORD)
    assert created.code == 0, created.err
    result = await run_cli("sessions", "list", "--user", "x@example.com", env=down)
    assert result.code == 3
    assert "unavailable" in result.err
    db_down = {
        **env,
        "TOKENWARD_DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1:9/x",
        "TOKENWARD_BACKEND_TIMEOUT": "0.5",
    }
    assert (await run_cli("db", "upgrade", env=db_down)).code == 3


async def test_cli_joins_the_embedded_redis_of_a_running_server(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, tmp_path: Path
) -> None:
    """With no TOKENWARD_REDIS_URL and a server owning the data dir's embedded Redis, the CLI
    uses that server's socket (it cannot start a second one) and its revocations land."""
    data = tmp_path / "embedded"
    with EmbeddedRedis(data) as embedded:
        assert running_embedded_redis(data) == embedded.url
        tw = await make_ops_tw(data_dir=data, redis_url=embedded.url)
        async with ops_client(tw) as client:
            login = await register_and_login(client, "e@example.com")
            env = ops_env(None, data)
            listed = await run_cli("sessions", "list", "--user", "e@example.com", "--json", env=env)
            assert listed.code == 0, listed.err
            assert [s["id"] for s in json.loads(listed.out)["sessions"]] == [login["session"]["id"]]
            revoked = await run_cli("sessions", "revoke", "--user", "e@example.com", env=env)
            assert revoked.code == 0, revoked.err
            auth = {"Authorization": f"Bearer {login['access_token']}"}
            assert (await client.get("/auth/me", headers=auth)).status_code == 401
        await tw.stop()
    assert running_embedded_redis(data) is None  # socket gone, lock free


async def test_cli_starts_its_own_embedded_redis_when_no_server_runs(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """With nothing running, the CLI starts the embedded Redis for the command and stops it."""
    env = ops_env(None, tmp_path / "alone")
    result = await run_cli("sessions", "revoke", "--user", "nobody@example.com", env=env)
    assert result.code == 1  # got as far as looking the user up
    assert running_embedded_redis(tmp_path / "alone") is None


def test_console_script_reads_password_from_stdin(redis_url: str, tmp_path: Path) -> None:
    """The installed `tokenward` script: --help exits 0, users create takes stdin."""
    script = Path(sys.executable).parent / "tokenward"
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOKENWARD_")}
    env = {**clean, **ops_env(redis_url, tmp_path / "d")}
    (tmp_path / "d").mkdir()
    run = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
    )
    assert run.returncode == 0
    assert "exit codes" in run.stdout
    run = subprocess.run(
        [str(script), "users", "create", "cli@example.com"],
        input=OPS_PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "cli@example.com" in run.stdout
    assert OPS_PASSWORD not in run.stdout + run.stderr


@pytest.mark.parametrize("argv", [["users", "create"], ["sessions", "revoke"], ["keys", "spin"]])
async def test_incomplete_commands_are_usage_errors(
    run_cli: RunCli, tmp_path: Path, argv: list[str]
) -> None:
    """Missing arguments or unknown actions exit 2 before anything is touched."""
    result = await run_cli(*argv, env=ops_env(None, tmp_path / "d"))
    assert result.code == 2
    assert not any((tmp_path / "d").iterdir())


async def test_failed_start_releases_the_embedded_redis(run_cli: RunCli, tmp_path: Path) -> None:
    """The database refusing after the CLI started its embedded Redis: exit 3, and the data
    dir is free again (the next command, or a server, can start it)."""
    data = tmp_path / "half"
    env = ops_env(
        None,
        data,
        database_url="postgresql+asyncpg://u@127.0.0.1:9/x",
        backend_timeout="0.5",
    )
    result = await run_cli("users", "list", env=env)
    assert result.code == 3, result.err
    assert running_embedded_redis(data) is None
    with EmbeddedRedis(data) as embedded:
        assert running_embedded_redis(data) == embedded.url


async def test_a_session_id_beginning_with_a_dash_is_taken_as_the_id(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str
) -> None:
    """Session ids are random base64url: 1 in 64 begins with "-". ``--session -Abc`` is
    that id (here no session of the user: exit 1, "no such session"), not a usage error
    (exit 2, "expected one argument"), which a CI run once met with a real id."""
    tw = await make_ops_tw()
    env = ops_env(redis_url, tw.settings.data_dir)
    async with ops_client(tw) as client:
        await register_and_login(client, "dash@example.com")
    result = await run_cli(
        "sessions", "revoke", "--user", "dash@example.com", "--session", "-Abc", env=env
    )
    assert result.code == 1, result.err
    assert "no such session" in result.err
