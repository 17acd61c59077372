"""A password change (or disable, or revoke) locks out every login that knew the old password.

Issue 9 item 1: a login that verified the old password just before the change and opened
its session just after the change's ``end_all`` survived it, with a 90-day refresh token
(3-5 such sessions per run by hand). The login's re-check now compares the credential epoch
it authenticated under.

Two kinds of test, on SQLite and on PostgreSQL:

* the race itself: attackers loop logins with the old password while the owner changes it,
  30 rounds; afterwards no session but the owner's may be live;
* the one interleaving that matters, forced: the operation lands after ``authenticate``
  returned and before the session is opened (the login's ``authenticate`` is wrapped; the
  servers, the stores and every request are real).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from http_support import GENEROUS_LIMITS, MakeTw, isolated_client

from tokenward import admin
from tokenward.password_policy import is_common
from tokenward.passwords import Argon2Params
from tokenward.runtime import Tokenward
from tokenward.users import User
from tw_accounts import BEARER, PASSWORD, Accounts

#: dear enough (milliseconds) that logins are still hashing when the change lands
RACE_ARGON2 = Argon2Params(memory_kib=8192, time_cost=1, parallelism=1)
ROUNDS = 30
ATTACKERS = 4
#: an attacker stops at its first refusal; this bounds a round if the change never lands
MAX_LOGINS_PER_ATTACKER = 400


@pytest.fixture(params=["sqlite", "postgres"])
async def race_tw(request: pytest.FixtureRequest, make_tw: MakeTw) -> Tokenward:
    database: dict[str, str] = {}
    if request.param == "postgres":
        database["database_url"] = request.getfixturevalue("postgres_url")
    return await make_tw(argon2=RACE_ARGON2, max_sessions=10_000, **GENEROUS_LIMITS, **database)


def _new_password(round_: int) -> str:
    # The common-password filter refuses about 1 random password in 4,000 (its false
    # positives): draw again rather than fail the race on the policy.
    while is_common(candidate := f"rotating passphrase {round_} {secrets.token_hex(6)}"):
        pass
    return candidate


async def _live_sessions(tw: Tokenward, uid: str) -> set[str]:
    return {r.sid for r in await tw.session_store.list(uid, now=tw.clock.now())}


async def test_password_change_leaves_no_session_of_a_racing_login(race_tw: Tokenward) -> None:
    """Attackers loop logins with the old password while the owner changes it, 30 rounds:
    zero sessions opened with an old password survive the change."""
    tw = race_tw
    async with isolated_client(tw) as owner_client, isolated_client(tw) as attacker_client:
        email = await Accounts(owner_client).register()
        owner = await Accounts(owner_client).login_bearer(email)
        uid, owner_sid = owner["user"]["id"], owner["session"]["id"]
        owner_auth = {"Authorization": f"Bearer {owner['access_token']}"}
        password = PASSWORD
        survivors: list[str] = []
        attacker_logins = 0
        for round_ in range(ROUNDS):
            underway = asyncio.Event()

            async def attacker(known: str, underway: asyncio.Event) -> list[str]:
                opened: list[str] = []
                for _ in range(MAX_LOGINS_PER_ATTACKER):
                    r = await attacker_client.post(
                        "/auth/login", json={"email": email, "password": known}, headers=BEARER
                    )
                    underway.set()
                    if r.status_code != 200:
                        assert r.status_code == 401, r.text
                        return opened
                    opened.append(r.json()["session"]["id"])
                return opened

            tasks = [asyncio.create_task(attacker(password, underway)) for _ in range(ATTACKERS)]
            await asyncio.wait_for(underway.wait(), 30)
            new = _new_password(round_)
            r = await owner_client.post(
                "/auth/password",
                json={"current_password": password, "new_password": new},
                headers=owner_auth,
            )
            assert r.status_code == 200, r.text  # bearer: the kept session's new tokens
            assert r.json()["session"]["id"] == owner_sid
            owner_auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
            password = new
            opened = [sid for sids in await asyncio.gather(*tasks) for sid in sids]
            attacker_logins += len(opened)
            survivors += sorted((await _live_sessions(tw, uid)) - {owner_sid})
        assert attacker_logins > ROUNDS, "the attackers never got in before the change"
        assert survivors == [], f"{len(survivors)} sessions survived {ROUNDS} password changes"


# ------------------------------------------------------------ the interleaving, forced


Operation = Callable[[Tokenward, dict[str, Any]], Awaitable[None]]


async def _change_password(tw: Tokenward, owner: dict[str, Any]) -> None:
    async with isolated_client(tw) as c:
        r = await c.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": _new_password(0)},
            headers={"Authorization": f"Bearer {owner['access_token']}"},
        )
        assert r.status_code == 200, r.text


async def _revoke_all(tw: Tokenward, owner: dict[str, Any]) -> None:
    await admin.revoke_sessions(tw, owner["user"]["id"])


async def _disable(tw: Tokenward, owner: dict[str, Any]) -> None:
    await admin.disable_user(tw, owner["user"]["id"])


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(_change_password, id="password-change"),
        pytest.param(_revoke_all, id="sessions-revoke-user"),
        pytest.param(_disable, id="users-disable"),
    ],
)
async def test_operation_between_authenticate_and_session_refuses_the_login(
    race_tw: Tokenward, operation: Operation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operation lands after the login verified the password and before it opened its
    session (so after the operation's ``end_all``): the login is refused with the same 401
    as a wrong password, and its session does not survive."""
    tw = race_tw
    async with isolated_client(tw) as client:
        accounts = Accounts(client)
        email = await accounts.register()
        owner = await accounts.login_bearer(email)
        authenticate = tw.users.authenticate

        async def authenticate_then_operation(*args: Any, **kwargs: Any) -> User:
            user = await authenticate(*args, **kwargs)
            await operation(tw, owner)
            return user

        monkeypatch.setattr(tw.users, "authenticate", authenticate_then_operation)
        r = await client.post(
            "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
        )
        monkeypatch.undo()
        assert r.status_code == 401, r.text
        assert r.json()["type"] == "urn:tokenward:problem:invalid-credentials"
        left = await _live_sessions(tw, owner["user"]["id"])
        kept = {owner["session"]["id"]} if operation is _change_password else set()
        assert left == kept


async def test_login_after_a_revoke_is_not_refused(race_tw: Tokenward) -> None:
    """The epoch refuses only logins that straddle the operation: one that starts after a
    revoke (the password is unchanged) gets in."""
    tw = race_tw
    async with isolated_client(tw) as c:
        accounts = Accounts(c)
        email = await accounts.register()
        owner = await accounts.login_bearer(email)
        await admin.revoke_sessions(tw, email)
        again = await accounts.login_bearer(email)
        assert await _live_sessions(tw, owner["user"]["id"]) == {again["session"]["id"]}
