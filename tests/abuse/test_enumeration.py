"""Login never tells whether an account exists: same bytes, and the same time within noise."""

from __future__ import annotations

import random
import statistics
import time

import httpx
import pytest
from abuse_support import (
    BEARER,
    GENEROUS_LIMITS,
    PASSWORD,
    Accounts,
    MakeTw,
    client_for,
    fresh_ip,
    new_email,
    without_volatile,
)

SAMPLES = 50
#: Generous on purpose (shared, noisy machines); a real leak (skipping argon2 for unknown
#: accounts) makes the ratio 20x or more with OWASP parameters.
TIMING_BOUND = 1.5


@pytest.mark.parametrize(
    ("mode", "kwargs"),
    [
        ("bearer", {"headers": BEARER}),
        ("cookie", {}),
    ],
)
async def test_unknown_email_and_wrong_password_answer_byte_for_byte_alike(
    make_tw: MakeTw, mode: str, kwargs: dict[str, dict[str, str]]
) -> None:
    """Status, body and every header (but Date and the random request id) are identical."""
    tw = await make_tw()
    async with client_for(tw, fresh_ip()) as a, client_for(tw, fresh_ip()) as b:
        email = await Accounts(a).register()
        wrong = await a.post(
            "/auth/login", json={"email": email, "password": "Wr0ng!pass"}, **kwargs
        )
        unknown = await b.post(
            "/auth/login", json={"email": new_email(), "password": "Wr0ng!pass"}, **kwargs
        )
    assert wrong.status_code == unknown.status_code == 401, mode
    assert wrong.json()["type"] == "urn:tokenward:problem:invalid-credentials"
    assert wrong.content == unknown.content
    assert without_volatile(wrong.headers) == without_volatile(unknown.headers)


async def test_form_posts_redirect_alike(make_tw: MakeTw) -> None:
    """An HTML form gets the same redirect whether or not the account exists."""
    tw = await make_tw()
    async with client_for(tw, fresh_ip()) as a, client_for(tw, fresh_ip()) as b:
        email = await Accounts(a).register()
        wrong = await a.post("/auth/login", data={"email": email, "password": "Wr0ng!pass"})
        unknown = await b.post("/auth/login", data={"email": new_email(), "password": "Wr0ng!pass"})
    assert wrong.status_code == unknown.status_code == 303
    assert wrong.content == unknown.content
    assert without_volatile(wrong.headers) == without_volatile(unknown.headers)


async def test_malformed_email_answers_like_a_wrong_password(make_tw: MakeTw) -> None:
    """Even a string that is no address gets the same 401 (no 422 that would differ)."""
    tw = await make_tw()
    async with client_for(tw, fresh_ip()) as a, client_for(tw, fresh_ip()) as b:
        email = await Accounts(a).register()
        wrong = await a.post("/auth/login", json={"email": email, "password": "Wr0ng!pass"})
        odd = await b.post(
            "/auth/login", json={"email": "not an address", "password": "Wr0ng!pass"}
        )
    assert wrong.content == odd.content


async def _timed(client: httpx.AsyncClient, email: str) -> float:
    start = time.perf_counter()
    r = await client.post(
        "/auth/login", json={"email": email, "password": "Wr0ng!pass-" + email[:4]}
    )
    elapsed = time.perf_counter() - start
    assert r.status_code == 401
    return elapsed


async def test_unknown_email_costs_the_same_time_as_a_wrong_password(make_tw: MakeTw) -> None:
    """Medians of 50 interleaved samples each, with the real (OWASP) argon2 cost.

    Prints the ratio; run ``pytest tests/abuse/test_enumeration.py -k time -s`` to see it.
    """
    tw = await make_tw(argon2=None, **GENEROUS_LIMITS)  # argon2id m=19 MiB, t=2, p=1
    assert tw.hasher.params.memory_kib == 19_456
    rng = random.Random(5)  # noqa: S311 - a fixed order to interleave samples, not a secret
    async with client_for(tw, fresh_ip()) as c:
        email = await Accounts(c).register(password=PASSWORD)
        for _ in range(3):  # warm up: connections, caches, the thread pool
            await _timed(c, email)
            await _timed(c, new_email())
        known: list[float] = []
        unknown: list[float] = []
        for _ in range(SAMPLES):
            pair = [(known, email), (unknown, new_email())]
            rng.shuffle(pair)
            for bucket, address in pair:
                bucket.append(await _timed(c, address))
                await tw.events.drain()  # background event writes: outside the timed part
    ratio = statistics.median(unknown) / statistics.median(known)
    print(
        f"\nenumeration timing: wrong password median {statistics.median(known) * 1000:.2f} ms, "
        f"unknown email median {statistics.median(unknown) * 1000:.2f} ms, ratio {ratio:.3f}"
    )
    assert 1 / TIMING_BOUND < ratio < TIMING_BOUND
