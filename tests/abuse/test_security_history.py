"""The owner's security history cannot be flushed with routine events.

An intruder who logged in from a new device used to hide it by logging in (and out) 100
times: the capped per-user stream kept only the newest 100 events. Security-critical
events are now kept apart, under a cap of their own that routine events never reach.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from abuse_support import GENEROUS_LIMITS, Accounts, MakeTw, client_for, fresh_ip, login

from tokenward.events import EventKind, SecurityEvent

#: Routine events the intruder makes after the new-device login: each round is one login
#: and one logout (two events), so the routine stream is overrun well past its cap.
ROUNDS = 120
INTRUDER_AGENT = {"user-agent": "IntruderBrowser/1.0"}


async def events_of(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    r = await client.get("/auth/events", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def order(row: dict[str, Any]) -> tuple[int, int]:
    ms, _, seq = row["id"].partition("-")
    return int(ms), int(seq)


async def test_an_intruders_new_device_survives_their_routine_logins(make_tw: MakeTw) -> None:
    """The intruder logs in from a new device, then logs in and out 120 times (240 routine
    events, and failed guesses on top): the owner still sees the intruder's
    ``login.new-device``, and the history is still newest first and bounded."""
    tw = await make_tw(**GENEROUS_LIMITS)  # TOKENWARD_EVENTS_PER_USER: the default, 100
    per_user = tw.settings.events_per_user
    home, away = fresh_ip(), fresh_ip()
    async with client_for(tw, home) as owner, client_for(tw, away) as intruder:
        email = await Accounts(owner).register()
        mine = await Accounts(owner).login_bearer(email)
        first = await Accounts(intruder).login_bearer(email, headers=INTRUDER_AGENT)
        for _ in range(ROUNDS):
            tokens = await Accounts(intruder).login_bearer(email, headers=INTRUDER_AGENT)
            auth = {"Authorization": f"Bearer {tokens['access_token']}", **INTRUDER_AGENT}
            assert (await intruder.post("/auth/logout", headers=auth)).status_code == 204
        for _ in range(5):
            assert (await login(intruder, email, "not the password 1")).status_code == 401
        rows = await events_of(owner, mine["access_token"])
    new_devices = [row for row in rows if row["kind"] == "login.new-device"]
    assert [(row["ip"], row["session_id"]) for row in new_devices] == [
        (away, first["session"]["id"]),
        (home, mine["session"]["id"]),
    ]
    assert new_devices[0]["user_agent"] == INTRUDER_AGENT["user-agent"]
    assert rows == sorted(rows, key=order, reverse=True)
    assert len({row["id"] for row in rows}) == len(rows)
    routine = [row for row in rows if row["kind"] != "login.new-device"]
    assert len(routine) == per_user  # the routine history is capped as before
    assert len(rows) == per_user + len(new_devices)


def event(kind: EventKind, **kw: Any) -> SecurityEvent:
    return SecurityEvent(kind, 1_000, "u1", None, kw.pop("ip", "192.0.2.1"), "ua", **kw)


@pytest.mark.parametrize(
    ("made", "critical"),
    [
        (event(EventKind.NEW_DEVICE), True),
        (event(EventKind.REFRESH_REUSED), True),
        (event(EventKind.PASSWORD_CHANGED, detail={"sessions_ended": 2}), True),
        (event(EventKind.SESSIONS_ENDED, detail={"reason": "user-disabled", "count": 1}), True),
        (event(EventKind.SESSIONS_ENDED, detail={"reason": "password-changed", "count": 3}), True),
        (event(EventKind.SESSIONS_ENDED, detail={"reason": "refresh-reused", "count": 1}), True),
        # an operator's `tokenward sessions revoke`: the CLI has no client address
        (event(EventKind.SESSIONS_ENDED, ip="", detail={"reason": "revoked", "count": 1}), True),
        # what anyone signed in can repeat at will is routine
        (event(EventKind.SESSIONS_ENDED, detail={"reason": "revoked", "count": 1}), False),
        (event(EventKind.SESSIONS_ENDED, detail={"reason": "logout", "count": 1}), False),
        (event(EventKind.SESSIONS_ENDED, detail={"reason": "logout-all", "count": 4}), False),
        (event(EventKind.SESSIONS_ENDED, detail={"reason": "session-limit", "count": 1}), False),
        (event(EventKind.SESSIONS_ENDED, detail={"reason": "replaced", "count": 1}), False),
        # a tab's replay in the grace window: at most one per session an hour, but every
        # session of a busy owner makes them; one per login for an intruder
        (event(EventKind.REFRESH_REPLAYED), False),
        (event(EventKind.LOGIN_SUCCEEDED), False),
        (event(EventKind.LOGIN_FAILED), False),
        (event(EventKind.THROTTLED, detail={"limit": "login-pair"}), False),
        (event(EventKind.REGISTERED), False),
    ],
)
def test_which_events_are_security_critical(made: SecurityEvent, critical: bool) -> None:
    """Critical: what shows an intrusion or an operator's action. Routine: what an intruder
    (or anyone) can make by the hundred without raising an alarm of its own."""
    assert made.critical is critical
