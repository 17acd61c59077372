"""Every failed login costs the same, also after the argon2 cost was raised (issue 9 item 3).

An account whose hash predates the raise is cheaper to check than the dummy an unknown email
is checked against: before the fix a wrong password on such an account answered in 178 ms
where an unknown email took 325 ms (ratio 1.83), which tells a guesser the account exists.

This is the one test that times something, because the issue is a duration. It is built to
hold on a loaded machine: argon2 costs of tens of milliseconds (so scheduling noise is
small against them), the two kinds of attempt interleaved (so load hits both alike), and
medians over many rounds.
"""

from __future__ import annotations

import statistics
import time
import uuid

import httpx
from http_support import GENEROUS_LIMITS, MakeTw, isolated_client

from tokenward.passwords import Argon2Params, PasswordHasher
from tokenward.users import User
from tw_accounts import BEARER, PASSWORD

#: the cost in force: OWASP's minimum (tens of milliseconds per verification)
CURRENT = Argon2Params(memory_kib=19_456, time_cost=2, parallelism=1)
#: what the account's hash was made with, before the raise (a few milliseconds)
BEFORE = Argon2Params(memory_kib=4_096, time_cost=1, parallelism=1)
WARM_UP = 3
ROUNDS = 31
#: measurements made at most (see the test's docstring)
ATTEMPTS = 3


async def _failed_login(client: httpx.AsyncClient, email: str) -> float:
    started = time.perf_counter()
    r = await client.post(
        "/auth/login", json={"email": email, "password": "not the password 1234"}, headers=BEARER
    )
    took = time.perf_counter() - started
    assert r.status_code == 401, r.text
    return took


async def _measure(client: httpx.AsyncClient, email: str) -> tuple[float, float]:
    """Median seconds of a failed login: (unknown email, the old-cost account)."""
    unknown: list[float] = []
    existing: list[float] = []
    for round_ in range(WARM_UP + ROUNDS):
        nobody = f"nobody-{uuid.uuid4().hex[:12]}@example.com"
        # Interleaved, alternating which goes first, so that load hits both alike.
        if round_ % 2:
            pair = (await _failed_login(client, nobody), await _failed_login(client, email))
        else:
            took_existing = await _failed_login(client, email)
            pair = (await _failed_login(client, nobody), took_existing)
        if round_ >= WARM_UP:
            unknown.append(pair[0])
            existing.append(pair[1])
    return statistics.median(unknown), statistics.median(existing)


async def test_old_cost_account_fails_as_slowly_as_an_unknown_email(make_tw: MakeTw) -> None:
    """Median of 31 wrong-password logins on an account hashed at a lower cost, against 31
    logins of unknown emails, interleaved: the ratio is within 0.9-1.1.

    A machine whose load swings hard during the 2-3 s of a measurement can push one
    measurement out by itself, so up to three are made; the leak this test is about (a
    ratio of 0.24-0.29 before the fix here) is outside the bounds every time.
    """
    tw = await make_tw(argon2=CURRENT, **GENEROUS_LIMITS)
    email = f"old-cost-{uuid.uuid4().hex[:12]}@example.com"
    old_hash = await PasswordHasher(BEFORE).hash(PASSWORD)
    await tw.user_store.add(
        User(id=uuid.uuid4().hex, email=email, password_hash=old_hash, created_at=0)
    )
    assert tw.hasher.needs_rehash(old_hash)
    measured: list[str] = []
    async with isolated_client(tw) as client:
        for _ in range(ATTEMPTS):
            unknown, existing = await _measure(client, email)
            ratio = existing / unknown
            measured.append(
                f"{existing * 1000:.1f} ms (old-cost account) against {unknown * 1000:.1f} ms "
                f"(unknown email): ratio {ratio:.2f}"
            )
            if 0.9 <= ratio <= 1.1:
                break
        else:
            raise AssertionError("; ".join(measured))
    stored = await tw.user_store.by_email(email)
    assert stored is not None
    assert stored.password_hash == old_hash  # failures never rehash
