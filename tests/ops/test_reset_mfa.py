"""``tokenward users reset-mfa``: an operator removes a user's second factors (a lost phone,
or a factor an intruder enrolled); the user's sessions end and the reset is recorded."""

from __future__ import annotations

import json
import time

import pytest
from ops_support import OPS_PASSWORD, MakeOpsTw, RunCli, ops_client, ops_env, register_and_login
from sqlalchemy import func, select

from soft_authenticator import SoftAuthenticator
from tokenward.admin import ADMIN_CLIENT
from tokenward.clock import FrozenClock
from tokenward.errors import PasskeyInvalid
from tokenward.events import EventKind
from tokenward.mfa import TOTP_PERIOD, totp_code
from tokenward.stores.sql_mfa import factors_table, recovery_table
from waiting import apoll_until

BEARER = {"X-Auth-Transport": "bearer"}


async def test_reset_mfa_removes_factors_ends_sessions_and_is_recorded(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str
) -> None:
    tw = await make_ops_tw()
    clock = tw.clock
    assert isinstance(clock, FrozenClock)
    async with ops_client(tw) as client:
        login = await register_and_login(client, "lost-phone@example.com")
        auth = {"Authorization": f"Bearer {login['access_token']}"}
        secret = (await client.post("/auth/mfa/totp/enroll", headers=auth)).json()["secret"]
        code = totp_code(secret, clock.now() // TOTP_PERIOD)
        r = await client.post("/auth/mfa/totp/confirm", json={"code": code}, headers=auth)
        assert r.status_code == 200, r.text
        credentials = {"email": "lost-phone@example.com", "password": OPS_PASSWORD}
        challenged = await client.post("/auth/login", json=credentials, headers=BEARER)
        assert challenged.json()["mfa_required"] is True

        env = ops_env(redis_url, tw.settings.data_dir)
        result = await run_cli("users", "reset-mfa", "lost-phone@example.com", "--json", env=env)
        assert result.code == 0, result.err
        body = json.loads(result.out)
        assert body["factors_removed"] == 1
        assert body["sessions_ended"] == [login["session"]["id"]]

        async def refused() -> bool:
            return (await client.get("/auth/me", headers=auth)).status_code == 401

        assert await apoll_until(refused, within=1.5)
        # The challenge handed out before the reset no longer leads anywhere.
        stale = await client.post(
            "/auth/login/mfa",
            json={"challenge": challenged.json()["challenge"], "code": code},
            headers=BEARER,
        )
        assert stale.status_code == 401
        # The next login is password-only again (TOKENWARD_MFA=optional).
        again = await client.post("/auth/login", json=credentials, headers=BEARER)
        assert "access_token" in again.json()

    async with tw.engine.connect() as conn:
        for table in (factors_table, recovery_table):
            count = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            assert count == 0
    events = await tw.event_log.for_user(login["user"]["id"], now=int(time.time()))
    resets = [e for e in events if e.kind is EventKind.MFA_RESET]
    assert len(resets) == 1
    assert (resets[0].ip, resets[0].user_agent) == ADMIN_CLIENT
    assert resets[0].detail == {"factors": 1, "sessions_ended": 1}
    assert resets[0].critical


async def test_reset_mfa_of_an_unknown_user_exits_1(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str
) -> None:
    tw = await make_ops_tw()
    env = ops_env(redis_url, tw.settings.data_dir)
    result = await run_cli("users", "reset-mfa", "ghost@example.com", env=env)
    assert result.code == 1
    assert "ghost@example.com" in result.err


async def test_reset_mfa_removes_passkeys_too(
    make_ops_tw: MakeOpsTw, run_cli: RunCli, redis_url: str
) -> None:
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        login = await register_and_login(client, "passkey-lost@example.com")
        uid = login["user"]["id"]
        device = SoftAuthenticator(tw.passkeys.rp.origins[0])
        options = await tw.passkeys.registration_options(uid, "x", now=tw.clock.now())
        await tw.passkeys.register(uid, "Phone", device.create(options), now=tw.clock.now())
        env = ops_env(redis_url, tw.settings.data_dir)
        result = await run_cli("users", "reset-mfa", "passkey-lost@example.com", "--json", env=env)
        assert result.code == 0, result.err
        assert json.loads(result.out)["factors_removed"] == 1
        assert await tw.passkeys.passkeys(uid) == []
        handle, request = await tw.passkeys.signin_options(binding="b", now=tw.clock.now())
        with pytest.raises(PasskeyInvalid, match="not registered"):
            await tw.passkeys.signin(handle, device.get(request), binding="b", now=tw.clock.now())
