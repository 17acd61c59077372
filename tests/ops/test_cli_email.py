"""The e-mail commands of the CLI: ``users verify``, ``users reset-link`` and
``mail list|show`` (the development outbox), text and ``--json``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ops_support import OPS_PASSWORD, MakeOpsTw, RunCli, ops_client, ops_env, register_and_login

from waiting import await_until

_TOKEN = re.compile(r"\?token=([A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{43})")


async def test_mail_list_and_show_read_the_outbox(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "d"
    tw = await make_ops_tw(data_dir)
    async with ops_client(tw) as client:
        await register_and_login(client, "reader@example.com")
    await tw.email_flows.drain()
    env = ops_env(redis_url, data_dir)
    listed = await run_cli("mail", "list", "--json", env=env)
    assert listed.code == 0, listed.err
    [entry] = json.loads(listed.out)
    assert entry["to"] == "reader@example.com"
    assert entry["subject"] == "Confirm your e-mail address"
    shown = await run_cli("mail", "show", entry["id"], "--json", env=env)
    assert shown.code == 0, shown.err
    mail = json.loads(shown.out)
    assert "https://ops.test/verify-email?token=" in mail["text"]
    assert "https://ops.test/verify-email?token=" in mail["html"]
    text = await run_cli("mail", "show", "last", env=env)
    assert text.code == 0
    assert "Subject: Confirm your e-mail address" in text.out
    table = await run_cli("mail", "list", env=env)
    assert "reader@example.com" in table.out
    for missing in ("0000000000-0000000000000000", "../../etc/passwd"):
        nothing = await run_cli("mail", "show", missing, env=env)
        assert nothing.code == 1
        assert "no mail" in nothing.err


async def test_users_verify_marks_the_address_verified(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "d"
    tw = await make_ops_tw(data_dir)
    async with ops_client(tw) as client:
        login = await register_and_login(client, "support@example.com")
        auth = {"Authorization": f"Bearer {login['access_token']}"}
        assert (await client.get("/auth/me", headers=auth)).json()["email_verified"] is False
        done = await run_cli(
            "users", "verify", "Support@Example.com", "--json", env=ops_env(redis_url, data_dir)
        )
        assert done.code == 0, done.err
        assert json.loads(done.out)["user"]["email_verified"] is True

        async def shown() -> bool:
            return bool((await client.get("/auth/me", headers=auth)).json()["email_verified"])

        # The running server had the profile cached (300 s while its feed is up): the
        # command's announcement on the revocation feed is what makes it show the change.
        await await_until(shown, within=2.5, what="/auth/me shows the verified address")
    missing = await run_cli(
        "users", "verify", "nobody@example.com", env=ops_env(redis_url, data_dir)
    )
    assert missing.code == 1


async def test_users_reset_link_prints_a_working_single_use_link(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "d"
    tw = await make_ops_tw(data_dir)
    env = ops_env(redis_url, data_dir)
    async with ops_client(tw) as client:
        await register_and_login(client, "locked-out@example.com")
        done = await run_cli("users", "reset-link", "locked-out@example.com", "--json", env=env)
        assert done.code == 0, done.err
        out = json.loads(done.out)
        assert out["link"].startswith("https://ops.test/reset-password?token=")
        assert out["expires_in"] == 1800
        plain = await run_cli("users", "reset-link", "locked-out@example.com", env=env)
        assert plain.code == 0
        [newer] = _TOKEN.findall(plain.out)
        [older] = _TOKEN.findall(out["link"])
        new_password = "granite kettle 19 sparrow"
        r = await client.post(
            "/auth/password/reset", json={"token": older, "new_password": new_password}
        )
        assert r.status_code == 400  # superseded by the second link
        r = await client.post(
            "/auth/password/reset", json={"token": newer, "new_password": new_password}
        )
        assert r.status_code == 204
        r = await client.post(
            "/auth/login", json={"email": "locked-out@example.com", "password": new_password}
        )
        assert r.status_code == 200
        r = await client.post(
            "/auth/login", json={"email": "locked-out@example.com", "password": OPS_PASSWORD}
        )
        assert r.status_code == 401
    missing = await run_cli("users", "reset-link", "nobody@example.com", env=env)
    assert missing.code == 1
