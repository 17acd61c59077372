"""Throttling of login, registration, refresh and password changes, through HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from abuse_support import (
    BEARER,
    GENEROUS_LIMITS,
    PASSWORD,
    Accounts,
    MakeTw,
    all_keys,
    client_for,
    count_hashing,
    fresh_ip,
    login,
    new_email,
    without_volatile,
)

from tokenward.clock import FrozenClock
from tokenward.errors import InvalidCredentials, RateLimited
from tokenward.ratelimit import Limit
from tokenward.runtime import Tokenward
from tokenward.stores.redis_client import connect_redis
from tokenward.stores.redis_ratelimit import RedisRateLimiter
from tokenward.throttle import Limits, Throttle, account_digest, address_digest

RATE_LIMITED = "urn:tokenward:problem:rate-limited"


def assert_429(r: httpx.Response, retry_after: int | None = None) -> int:
    assert r.status_code == 429, r.text
    assert r.json()["type"] == RATE_LIMITED
    value = r.headers["retry-after"]
    assert value.isdigit()
    assert int(value) >= 1
    assert r.json()["retry_after"] == int(value)
    if retry_after is not None:
        assert int(value) == retry_after
    return int(value)


async def registered(tw: Tokenward) -> str:
    async with client_for(tw, fresh_ip()) as c:
        return await Accounts(c).register()


async def test_eleventh_failure_from_one_address_gets_429_with_retry_after(
    make_tw: MakeTw,
) -> None:
    """docs/abuse.md: one account, one address: 429 after at most 10 failures in 15 minutes."""
    tw = await make_tw()
    email = await registered(tw)
    async with client_for(tw, fresh_ip()) as attacker:
        for _ in range(10):
            assert (await login(attacker, email, "wrong password 1234")).status_code == 401
        assert_429(await login(attacker, email, "wrong password 1234"), retry_after=900)
        # the lock holds even for the right password from that address
        assert_429(await login(attacker, email, PASSWORD))


async def test_correct_password_from_another_address_still_gets_in(make_tw: MakeTw) -> None:
    """A stranger's failures lock only their own (account, address) pair."""
    tw = await make_tw()
    email = await registered(tw)
    async with client_for(tw, fresh_ip()) as attacker, client_for(tw, fresh_ip()) as owner:
        for _ in range(15):
            await login(attacker, email, "not the password")
        assert_429(await login(attacker, email, "not the password"))
        r = await login(owner, email, PASSWORD)
        assert r.status_code == 200, r.text


async def test_throttled_attempts_run_no_argon2(make_tw: MakeTw) -> None:
    """Refused before the password is looked at: no hashing, no database work."""
    tw = await make_tw()
    email = await registered(tw)
    calls = count_hashing(tw)
    async with client_for(tw, fresh_ip()) as attacker:
        for _ in range(10):
            await login(attacker, email, "wrong password 1234")
        assert calls["verify"] == 10
        for _ in range(25):
            assert_429(await login(attacker, email, "wrong password 1234"))
        assert calls == {"verify": 10, "hash": 0}


async def test_concurrent_guesses_cannot_slip_past_the_count(make_tw: MakeTw) -> None:
    """Thirty guesses at once: the reservation is atomic, so exactly ten are judged."""
    tw = await make_tw()
    email = await registered(tw)
    calls = count_hashing(tw)
    async with client_for(tw, fresh_ip()) as attacker:
        answers = await asyncio.gather(
            *(login(attacker, email, f"guess number {i}") for i in range(30))
        )
    codes = sorted(r.status_code for r in answers)
    assert codes == [401] * 10 + [429] * 20
    assert calls["verify"] == 10


async def test_unknown_accounts_are_throttled_alike_and_identically(make_tw: MakeTw) -> None:
    """Throttling reveals nothing: an unknown email locks the same way, same answer."""
    tw = await make_tw()
    email = await registered(tw)
    async with client_for(tw, fresh_ip()) as a, client_for(tw, fresh_ip()) as b:
        for _ in range(10):
            known = await login(a, email, "wrong password 1234")
            unknown = await login(b, new_email(), "wrong password 1234")
            assert known.status_code == unknown.status_code == 401
        nobody = "nobody-" + email
        for _ in range(10):
            await login(b, nobody, "wrong password 1234")
        known, unknown = await login(a, email, "x" * 12), await login(b, nobody, "x" * 12)
    assert_429(known)
    assert known.content == unknown.content
    assert without_volatile(known.headers) == without_volatile(unknown.headers)


async def test_lock_ends_then_back_off_grows_to_the_cap(make_tw: MakeTw) -> None:
    """Locks last 15, 30, 60, 60 minutes for a persistent guesser; never forever."""
    tw = await make_tw()
    clock = tw.clock
    assert isinstance(clock, FrozenClock)
    email = await registered(tw)
    waits = []
    async with client_for(tw, fresh_ip()) as attacker:
        for _ in range(4):
            for _ in range(10):
                assert (await login(attacker, email, "wrong password 1234")).status_code == 401
            wait = assert_429(await login(attacker, email, "wrong password 1234"))
            clock.advance(wait - 1)
            assert_429(await login(attacker, email, "wrong password 1234"), retry_after=1)
            clock.advance(1)
            waits.append(wait)
        assert waits == [900, 1800, 3600, 3600]
        # the owner, from that very address, gets in once the lock is over
        assert (await login(attacker, email, PASSWORD)).status_code == 200


async def test_a_good_login_clears_the_pair(make_tw: MakeTw) -> None:
    """Typos then success: the count starts over (a guesser who knows it needs no guesses)."""
    tw = await make_tw()
    email = await registered(tw)
    async with client_for(tw, fresh_ip()) as user:
        for _ in range(9):
            await login(user, email, "typo password 1234")
        assert (await login(user, email, PASSWORD)).status_code == 200
        for _ in range(10):
            assert (await login(user, email, "typo password 1234")).status_code == 401
        assert_429(await login(user, email, "typo password 1234"))


async def test_a_failed_clearing_does_not_refuse_the_right_password(
    make_tw: MakeTw, caplog: pytest.LogCaptureFixture
) -> None:
    """The throttle's success rides with the session's write. When part of it fails (the
    account's known-address record is corrupt, so remembering the address is refused), the
    login still answers 200 with a working session: the password was right. A warning
    says so; the rest of the clearing (the pair's record) was done all the same."""
    tw = await make_tw()
    email = await registered(tw)
    known = f"tw:{{rl:a:{account_digest(email)}}}:known"
    await tw.redis.set(known, "not a sorted set", ex=600)
    async with client_for(tw, fresh_ip()) as user:
        for _ in range(9):
            await login(user, email, "typo password 1234")
        with caplog.at_level("WARNING", logger="tokenward.throttle"):
            r = await login(user, email, PASSWORD)
        assert r.status_code == 200, r.text
        assert "throttle record failed" in caplog.text
        me = await user.get(
            "/auth/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}
        )
        assert me.status_code == 200, me.text
        assert await tw.redis.get(known) == "not a sorted set"
        for _ in range(10):  # the pair's count started over
            assert (await login(user, email, "typo password 1234")).status_code == 401
        assert_429(await login(user, email, "typo password 1234"))


async def test_per_address_limit_stops_credential_stuffing(make_tw: MakeTw) -> None:
    """One address trying many accounts is stopped; other addresses are not."""
    tw = await make_tw(login_ip_limit=5)
    stuffer_ip = fresh_ip()
    async with client_for(tw, stuffer_ip) as stuffer:
        for _ in range(5):
            assert (await login(stuffer, new_email(), "leaked password 99")).status_code == 401
        assert_429(await login(stuffer, new_email(), "leaked password 99"))
    email = await registered(tw)
    async with client_for(tw, fresh_ip()) as other:
        assert (await login(other, email, PASSWORD)).status_code == 200


async def test_a_stuffer_behind_the_owners_nat_does_not_lock_the_owner_out(
    make_tw: MakeTw,
) -> None:
    """The per-address limit waives accounts that logged in from that address before; the
    stuffer's own guesses at the account still meet the (account, address) limit."""
    tw = await make_tw(login_ip_limit=5)
    email = await registered(tw)
    nat = fresh_ip()
    async with client_for(tw, nat) as shared:
        assert (await login(shared, email, PASSWORD)).status_code == 200
        for _ in range(5):
            await login(shared, new_email(), "leaked password 99")
        assert_429(await login(shared, new_email(), "leaked password 99"))
        assert (await login(shared, email, PASSWORD)).status_code == 200
        for _ in range(10):
            assert (await login(shared, email, "leaked password 99")).status_code == 401
        assert_429(await login(shared, email, PASSWORD))


async def test_account_wide_limit_spares_the_owners_known_addresses(make_tw: MakeTw) -> None:
    """A botnet spread over addresses trips the account limit; the owner's usual address
    still gets in, and the lock never lasts more than one window."""
    tw = await make_tw(login_account_limit=6)
    clock = tw.clock
    assert isinstance(clock, FrozenClock)
    email = await registered(tw)
    home = fresh_ip()
    async with client_for(tw, home) as owner:
        assert (await login(owner, email, PASSWORD)).status_code == 200
    for _ in range(3):
        async with client_for(tw, fresh_ip()) as bot:
            for _ in range(2):
                assert (await login(bot, email, "guessing 12345678")).status_code == 401
    async with client_for(tw, fresh_ip()) as bot, client_for(tw, fresh_ip()) as travel:
        assert_429(await login(bot, email, "guessing 12345678"), retry_after=900)
        assert_429(await login(travel, email, PASSWORD))  # new address: held back too
        async with client_for(tw, home) as owner:
            assert (await login(owner, email, PASSWORD)).status_code == 200
        clock.advance(900)
        assert (await login(travel, email, PASSWORD)).status_code == 200


async def test_forwarded_for_is_believed_only_from_trusted_proxies(make_tw: MakeTw) -> None:
    """Behind a trusted proxy each client has its bucket; elsewhere the header is ignored."""
    tw = await make_tw(trusted_proxies="10.0.0.0/8")
    email = await registered(tw)
    attacker, owner = fresh_ip(), fresh_ip()
    async with client_for(tw, "10.1.2.3") as proxy:
        for _ in range(10):
            await login(proxy, email, "wrong password 1234", **{"X-Forwarded-For": attacker})
        assert_429(await login(proxy, email, PASSWORD, **{"X-Forwarded-For": attacker}))
        assert (
            await login(proxy, email, PASSWORD, **{"X-Forwarded-For": owner})
        ).status_code == 200
    async with client_for(tw, fresh_ip()) as direct:
        for i in range(10):
            spoof = {"X-Forwarded-For": f"192.0.2.{i + 1}"}  # a new "address" every time
            await login(direct, email, "wrong password 1234", **spoof)
        assert_429(await login(direct, email, PASSWORD, **{"X-Forwarded-For": "192.0.2.99"}))


async def test_form_login_when_throttled_redirects_with_the_reason(make_tw: MakeTw) -> None:
    """A browser form post is throttled too, and told why."""
    tw = await make_tw()
    email = await registered(tw)
    async with client_for(tw, fresh_ip()) as browser:
        form = {"email": email, "password": "wrong password 1234"}
        for _ in range(10):
            await browser.post("/auth/login", data=form)
        r = await browser.post("/auth/login", data=form)
    assert r.status_code == 303
    assert r.headers["location"].endswith("error=rate-limited")


async def test_registration_is_limited_per_address(make_tw: MakeTw) -> None:
    """Registrations (and so 409 probes) are limited; policy refusals do not count."""
    tw = await make_tw(register_ip_limit=3)
    calls = count_hashing(tw)
    async with client_for(tw, fresh_ip()) as c:
        for _ in range(5):
            r = await c.post("/auth/register", json={"email": new_email(), "password": "short"})
            assert r.status_code == 422
        taken = await Accounts(c).register()
        assert (
            await c.post("/auth/register", json={"email": taken, "password": PASSWORD})
        ).status_code == 409
        await Accounts(c).register()
        r = await c.post("/auth/register", json={"email": new_email(), "password": PASSWORD})
        assert_429(r, retry_after=3600)
        assert calls["hash"] == 3
    async with client_for(tw, fresh_ip()) as elsewhere:
        await Accounts(elsewhere).register()


async def test_refused_refreshes_are_limited_per_address(make_tw: MakeTw) -> None:
    """Garbage refresh tokens from one address get 429; good refreshes never count."""
    tw = await make_tw(refresh_ip_limit=5)
    email = await registered(tw)
    async with client_for(tw, fresh_ip()) as c:
        tokens = await Accounts(c).login_bearer(email)
        refresh = tokens["refresh_token"]
        for _ in range(12):
            r = await c.post("/auth/refresh", json={"refresh_token": refresh}, headers=BEARER)
            assert r.status_code == 200, r.text
            refresh = r.json()["refresh_token"]
            tw.clock.advance(11)  # type: ignore[attr-defined]  # past the grace and session limits
        for i in range(5):
            bad = {"refresh_token": f"garbage-{i}"}
            assert (await c.post("/auth/refresh", json=bad, headers=BEARER)).status_code == 401
        assert_429(await c.post("/auth/refresh", json={"refresh_token": refresh}, headers=BEARER))
    async with client_for(tw, fresh_ip()) as other:
        r = await other.post("/auth/refresh", json={"refresh_token": refresh}, headers=BEARER)
        assert r.status_code == 200


async def test_guessing_the_current_password_meets_the_login_limits(make_tw: MakeTw) -> None:
    """A stolen session cannot brute-force the current password to take the account over."""
    tw = await make_tw()
    email = await registered(tw)
    async with client_for(tw, fresh_ip()) as thief:
        tokens = await Accounts(thief).login_bearer(email)
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        for i in range(10):
            body = {"current_password": f"guess {i} abcdefgh", "new_password": "n3w-p4ss-phrase!"}
            r = await thief.post("/auth/password", json=body, headers=auth)
            assert r.status_code == 403, r.text
        body = {"current_password": PASSWORD, "new_password": "n3w-p4ss-phrase!"}
        assert_429(await thief.post("/auth/password", json=body, headers=auth))


async def test_throttle_keys_have_ttls_digests_and_one_slot_per_account(
    make_tw: MakeTw, redis: aioredis.Redis
) -> None:
    """Every throttle key expires, names no email or address, and an account's keys share a
    hash tag (one Redis Cluster slot for the atomic script)."""
    tw = await make_tw()
    local = "throttle-key-probe-" + new_email().split("@")[0]
    email = f"{local}@example.com"
    ip = fresh_ip()
    async with client_for(tw, ip) as c:
        await Accounts(c).register(email)
        for _ in range(11):
            await login(c, email, "wrong password 1234")
        assert (await login(c, new_email(), "x" * 12)).status_code == 401
    keys = await all_keys(redis, "tw:{rl:*")
    assert keys
    for key in keys:
        assert local not in key
        assert ip not in key
        assert await redis.ttl(key) > 0, key
        assert key.startswith(("tw:{rl:a:", "tw:{rl:ip:"))
        assert "}" in key


@pytest.mark.parametrize(
    ("setting", "value"),
    [("login_pair_limit", 3), ("login_window", 60), ("login_max_block", 120)],
)
async def test_limits_are_configurable(make_tw: MakeTw, setting: str, value: int) -> None:
    """TOKENWARD_LOGIN_* settings change what the throttle does."""
    overrides: dict[str, Any] = {setting: value}
    tw = await make_tw(**overrides)
    pair = tw.throttle.limits.login_pair
    assert getattr(pair, {"login_pair_limit": "limit", "login_window": "window",
                          "login_max_block": "max_block"}[setting]) >= value  # fmt: skip
    email = await registered(tw)
    async with client_for(tw, fresh_ip()) as c:
        for _ in range(pair.limit):
            await login(c, email, "wrong password 1234")
        assert_429(await login(c, email, "wrong password 1234"), retry_after=pair.window)


def test_generous_limits_name_real_settings() -> None:
    """The helper other suites use to stay clear of throttling names real settings."""
    from tokenward.settings import Settings

    assert set(GENEROUS_LIMITS) <= set(Settings.model_fields)


async def test_a_refused_address_leaves_the_accounts_it_names_untouched(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """The address and the account are judged in one round trip, unless this process saw
    the address crowded. Either way an address refused (and not known to the account)
    counts nothing against the account: process B, which has not seen the address that
    process A filled, reserves the account with the address, finds the address refused
    and releases the account; its next attempt judges the address alone."""
    limits = Limits(login_ip=Limit("login-ip", 3, 900, 3600))
    client = connect_redis(redis_url, timeout=2.0)
    a = Throttle(RedisRateLimiter(client), limits)
    b = Throttle(RedisRateLimiter(client), limits)
    ip, now = fresh_ip(), 1_000
    try:
        for _ in range(3):
            with pytest.raises(InvalidCredentials):
                async with a.login(Accounts.new_email(), ip, now=now):
                    raise InvalidCredentials("invalid email or password")
        for victim in (Accounts.new_email(), Accounts.new_email()):
            with pytest.raises(RateLimited):
                async with b.login(victim, ip, now=now):
                    pass
            scope = f"tw:{{rl:a:{account_digest(victim)}}}"
            for key in (f"{scope}:all", f"{scope}:ip:{address_digest(ip)}"):
                assert await redis.zcard(f"{key}:z") == 0
                assert not await redis.exists(f"{key}:l")
        # The second victim's attempt went the careful way: B now knows the address.
        assert b._is_crowded(f"tw:{{rl:ip:{address_digest(ip)}}}:login", now)
    finally:
        await client.aclose()
